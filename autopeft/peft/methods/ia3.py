"""(IA)3: learned per-feature scales on k and v outputs and on the FFN down projection's input.

    k' = l_k * (W_k x),   v' = l_v * (W_v x),   down(l_ff * a)        Liu et al. 2022, arXiv:2205.05638
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from autopeft.peft.methods.base import Method, Strict, check_sites


class Ia3Space(Strict):
    sites: list[str] = Field(default_factory=lambda: ["k", "v", "down"], description="k, v and/or down.")
    optional: bool = Field(True, description="Search (IA)3 on/off; false places it wherever a layer is on.")

    _sites = field_validator("sites")(classmethod(lambda cls, v: check_sites(METHOD, v)))


class Ia3(Method):
    name = "ia3"
    sites = ("k", "v", "down")
    kind = "switch"
    label = "ia3"
    merges = "W' = diag(l) W, b' = l * b (k, v); W' = W diag(l) (down)"
    peft_type = "IA3"
    paper = "Liu et al. 2022, Few-Shot PEFT is Better and Cheaper than In-Context Learning (T-Few)"
    layer_module = "autopeft.peft.modules.ia3"
    space_model = Ia3Space

    def count(self, spec: Any, arch: Any, config: Any) -> int:
        d_in, d_out = arch.site_shape(config, spec.site)
        return d_in if spec.site == "down" else d_out  # one scale per feature


METHOD = Ia3()
