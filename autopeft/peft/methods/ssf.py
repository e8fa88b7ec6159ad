"""SSF: scale and shift the output features of a frozen linear.

    y = gamma * (W x + b) + beta                                  Lian et al. 2022, arXiv:2210.08823
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from autopeft.peft.methods.base import LINEAR_SITES, Method, Strict, check_sites


class SsfSpace(Strict):
    sites: list[str] = Field(default_factory=lambda: ["q", "k", "v", "o", "up", "down"], description="Linear sites.")
    optional: bool = Field(True, description="Search SSF on/off; false places it wherever a layer is on.")

    _sites = field_validator("sites")(classmethod(lambda cls, v: check_sites(METHOD, v)))


class Ssf(Method):
    name = "ssf"
    sites = LINEAR_SITES
    kind = "switch"
    label = "ssf"
    merges = "W' = diag(gamma) W, b' = gamma * b + beta"
    paper = "Lian et al. 2022, Scaling & Shifting Your Features (NeurIPS)"
    layer_module = "autopeft.peft.modules.ssf"
    space_model = SsfSpace

    def count(self, spec: Any, arch: Any, config: Any) -> int:
        return 2 * arch.site_shape(config, spec.site)[1]  # gamma and beta per output feature


METHOD = Ssf()
