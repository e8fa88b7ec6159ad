"""LoRA experts: E LoRA pairs per linear and a token router (MoLA: per-layer expert counts; DynMoLE routing).

    y = W x + b + (alpha / r) * sum_e g_e(x) B_e A_e x

Routing ``topk`` (MoLA, Gao et al. 2024, arXiv:2402.08562): the k most probable experts, renormalised.
Routing ``dynmole`` (Li et al. 2025, arXiv:2504.00661): top-p with at least k experts, every expert when the
router's Tsallis entropy is high, plus an entropy auxiliary loss (see autopeft/peft/modules/dynmole.py).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from autopeft.peft.methods.base import LINEAR_SITES, Method, SizedSpace, check_sites, check_variants


class ExpertsSpace(SizedSpace):
    experts: list[int] = Field(description="Expert-count choices per layer; 0 = no experts in that layer.")
    top_k: list[int] = Field(default_factory=lambda: [1], description="Top-k choices (clipped to the count).")
    per_layer: bool = Field(True, description="Choose the expert count per layer (MoLA) or once for all.")
    sites: list[str] = Field(default_factory=lambda: ["q", "v"], description="Linear sites with experts.")
    alpha: float | None = Field(None, gt=0, description="LoRA alpha of each expert; default 2 x rank.")
    routing: str | list[str] = Field("topk", description="topk (MoLA) or dynmole; a list searches among them.")

    _sites = field_validator("sites")(classmethod(lambda cls, v: check_sites(METHOD, v)))
    _routing = field_validator("routing")(classmethod(lambda cls, v: check_variants(METHOD, v)))

    @field_validator("experts", "top_k")
    @classmethod
    def _check_counts(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("give at least one choice")
        if any(c < 0 for c in v) or len(set(v)) != len(v):
            raise ValueError(f"choices must be distinct and >= 0, got {v}")
        return v

    @model_validator(mode="after")
    def _check_experts(self) -> "ExpertsSpace":
        if isinstance(self.sizes, list) and 0 in self.sizes:
            raise ValueError("sizes: expert rank cannot be 0; turn experts off with an expert count of 0")
        if min(self.top_k) < 1:
            raise ValueError(f"top_k: choices must be >= 1, got {self.top_k}")
        if max(self.experts) < 1:
            raise ValueError(f"experts: at least one choice must be >= 1, got {self.experts}")
        return self


class LoraExperts(Method):
    name = "lora_experts"
    sites = LINEAR_SITES
    kind = "experts"
    size_means = "rank of each expert"
    label = "experts r{size} top{top_k}"
    variants = ("topk", "dynmole")
    takes_alpha = True
    takes_experts = True
    paper = "Gao et al. 2024 (MoLA); Li et al. 2025 (DynMoLE)"
    layer_module = "autopeft.peft.modules.lora_experts"
    space_model = ExpertsSpace

    def count(self, spec: Any, arch: Any, config: Any) -> int:
        d_in, d_out = arch.site_shape(config, spec.site)
        return spec.num_experts * spec.size * (d_in + d_out) + d_in * spec.num_experts  # E LoRA pairs + router


METHOD = LoraExperts()
