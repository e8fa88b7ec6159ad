"""Serial (bottleneck) adapter after a sub-layer: Pfeiffer placement (after the FFN) or Houlsby (after
attention and after the FFN).

    h' = h + U(relu(D h)),   h = output of the sub-layer's exit linear (attention o, FFN down)
Houlsby et al. 2019, arXiv:1902.00751; Pfeiffer et al. 2021 (AdapterFusion), arXiv:2005.00247.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from autopeft.peft.methods.base import BLOCK_SITES, EXIT_LINEAR, Method, SizedSpace, check_sites

#: ``style`` -> the block sites it places an adapter on
STYLES: dict[str, tuple[str, ...]] = {"pfeiffer": ("ffn",), "houlsby": ("attn", "ffn")}


def bottleneck_count(d_in: int, r: int, d_out: int) -> int:
    return d_in * r + r + r * d_out + d_out  # D weight + bias, U weight + bias


class SerialAdapterSpace(SizedSpace):
    sites: list[str] | None = Field(None, description="attn and/or ffn [ffn]; or give style instead.")
    style: str | list[str] | None = Field(
        None, description="pfeiffer (after the FFN) or houlsby (after attention and FFN); a list searches both.")

    _sites = field_validator("sites")(classmethod(lambda cls, v: v if v is None else check_sites(METHOD, v)))

    @field_validator("style")
    @classmethod
    def _check_style(cls, v):
        names = [v] if isinstance(v, str) else v
        if names is not None:
            bad = [n for n in names if n not in STYLES]
            if bad or not names or len(set(names)) != len(names):
                raise ValueError(f"style must be distinct names from {', '.join(STYLES)}, got {v!r}")
        return v

    @model_validator(mode="after")
    def _one_of(self) -> "SerialAdapterSpace":
        if self.sites is not None and self.style is not None:
            raise ValueError("give sites or style, not both (style pfeiffer = sites [ffn], houlsby = [attn, ffn])")
        return self

    def styles(self) -> list[str] | None:
        """Style choices, or None when sites are given explicitly."""
        if self.style is None:
            return None
        return [self.style] if isinstance(self.style, str) else list(self.style)

    def fixed_sites(self) -> list[str]:
        return list(self.sites) if self.sites is not None else ["ffn"]


class SerialAdapter(Method):
    name = "serial_adapter"
    sites = BLOCK_SITES
    size_means = "bottleneck width"
    label = "serial {size}"
    paper = "Houlsby et al. 2019; Pfeiffer et al. 2021"
    layer_module = "autopeft.peft.modules.serial_adapter"
    space_model = SerialAdapterSpace

    def linears(self, site: str) -> tuple[str, ...]:
        return (EXIT_LINEAR[site],)

    def count(self, spec: Any, arch: Any, config: Any) -> int:
        d = arch.site_shape(config, EXIT_LINEAR[spec.site])[1]
        return bottleneck_count(d, spec.size, d)


METHOD = SerialAdapter()
