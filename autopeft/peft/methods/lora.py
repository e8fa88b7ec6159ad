"""LoRA and its variants rsLoRA and DoRA: a low-rank update beside a frozen linear.

    lora:   y = W x + b + (alpha / r) B A x                      Hu et al. 2021, arXiv:2106.09685
    rslora: y = W x + b + (alpha / sqrt(r)) B A x                 Kalajdzievski 2023, arXiv:2312.03732
    dora:   y = m / ||W + s B A||_row * (W x + s B A x) + b       Liu et al. 2024, arXiv:2402.09353
            (the norm is treated as a constant in the backward pass, as the DoRA paper's section 4.3 and peft do)
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field, field_validator

from autopeft.peft.methods.base import LINEAR_SITES, Method, SizedSpace, check_sites, check_variants


class LoraSpace(SizedSpace):
    sites: list[str] = Field(default_factory=lambda: ["q", "v"], description="Linear sites to adapt.")
    choose_sites: bool = Field(False, description="Search each site on/off instead of adapting all listed.")
    alpha: float | None = Field(None, gt=0, description="LoRA alpha; default 2 x rank.")
    variant: str | list[str] = Field("lora", description="lora, rslora or dora; a list searches among them.")

    _sites = field_validator("sites")(classmethod(lambda cls, v: check_sites(METHOD, v)))
    _variant = field_validator("variant")(classmethod(lambda cls, v: check_variants(METHOD, v)))


class Lora(Method):
    name = "lora"
    sites = LINEAR_SITES
    size_means = "rank r"
    label = "lora r{size}"
    variants = ("lora", "rslora", "dora")
    takes_alpha = True
    merges = "W' = W + s B A (DoRA: W' = m / ||W + s B A||_row * (W + s B A))"
    peft_type = "LORA"
    paper = "Hu et al. 2021 (LoRA); Kalajdzievski 2023 (rsLoRA); Liu et al. 2024 (DoRA)"
    layer_module = "autopeft.peft.modules.lora"
    space_model = LoraSpace

    def scaling(self, spec: Any) -> float:
        alpha = 2.0 * spec.size if spec.alpha is None else spec.alpha
        return alpha / math.sqrt(spec.size) if spec.variant == "rslora" else alpha / spec.size

    def count(self, spec: Any, arch: Any, config: Any) -> int:
        d_in, d_out = arch.site_shape(config, spec.site)
        magnitude = d_out if spec.variant == "dora" else 0  # one magnitude per output feature
        return spec.size * (d_in + d_out) + magnitude  # A (r, d_in) + B (d_out, r)


METHOD = Lora()
