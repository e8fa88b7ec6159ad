"""Hydra: a parallel and a sequential low-rank branch on one frozen linear.

    y = W (x + s B_s A_s x) + b + s B_p A_p x,   s = alpha / r
Kim et al. 2023, "Hydra: Multi-head Low-rank Adaptation for Parameter Efficient Fine-tuning", arXiv:2309.06922.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from autopeft.peft.methods.base import LINEAR_SITES, Method, SizedSpace, check_sites


class HydraSpace(SizedSpace):
    sites: list[str] = Field(default_factory=lambda: ["q", "v"], description="Linear sites to adapt.")
    choose_sites: bool = Field(False, description="Search each site on/off instead of adapting all listed.")
    alpha: float | None = Field(None, gt=0, description="Alpha of both branches; default 2 x rank.")

    _sites = field_validator("sites")(classmethod(lambda cls, v: check_sites(METHOD, v)))


class Hydra(Method):
    name = "hydra"
    sites = LINEAR_SITES
    size_means = "rank r of each branch"
    label = "hydra r{size}"
    takes_alpha = True
    merges = "W' = W + s B_p A_p + s W B_s A_s"
    paper = "Kim et al. 2023, Hydra"
    layer_module = "autopeft.peft.modules.hydra"
    space_model = HydraSpace

    def count(self, spec: Any, arch: Any, config: Any) -> int:
        d_in, d_out = arch.site_shape(config, spec.site)
        return spec.size * (d_in + d_out) + 2 * spec.size * d_in  # parallel A, B + sequential A (r, in), B (in, r)


METHOD = Hydra()
