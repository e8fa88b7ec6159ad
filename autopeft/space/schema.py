"""The search-space YAML schema (pydantic models; unknown keys are rejected).

A space file looks like::

    name: autopeft
    placement: shared            # shared | per_module | all
    modules:
      serial_adapter: {sizes: log2_hidden, sites: [ffn]}
      prefix: {sizes: [0, 1, 2, 4, 8, 16]}
      lora: {sizes: [0, 4, 8], sites: [q, k, v, o], choose_sites: true}
      ia3: {sites: [k, v, down]}
      lora_experts: {sizes: [4], experts: [0, 2, 4, 8], top_k: [1, 2], sites: [q, v]}
    objectives: [score, trainable_pct]
    budget: {max_trainable_pct: 1.0}

See docs/search_spaces.md for every field.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from autopeft.plan import METHOD_SITES

#: Objectives a space may name, and the direction the optimizer pushes each.
OBJECTIVES: dict[str, str] = {
    "score": "maximize",  # held-out task metric (accuracy / macro-F1)
    "trainable_pct": "minimize",  # trainable parameters, % of the base model
    "step_time": "minimize",  # mean training-step seconds
    "peak_memory": "minimize",  # peak memory in MiB during training
}

# ``log2_hidden`` resolves, once the model is known, to 0 plus hidden/2^k for k = 0, 1, ... (the
# AutoPEFT paper's grid: for hidden 768 that is 0, 1, 3, 6, 12, ..., 384, 768).
Sizes = Union[Literal["log2_hidden"], list[int]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _SizedModule(_Strict):
    sizes: Sizes = Field(description="Size choices; 0 turns the module off. A list, or 'log2_hidden'.")

    @field_validator("sizes")
    @classmethod
    def _check_sizes(cls, v: Sizes) -> Sizes:
        if isinstance(v, list):
            if not v:
                raise ValueError("give at least one size, e.g. [0, 8]")
            if any(s < 0 for s in v):
                raise ValueError(f"sizes must be >= 0, got {v}")
            if len(set(v)) != len(v):
                raise ValueError(f"sizes has duplicates: {v}")
        return v


def _check_sites(method: str, sites: list[str]) -> list[str]:
    allowed = METHOD_SITES[method]
    bad = [s for s in sites if s not in allowed]
    if bad:
        raise ValueError(f"{method} cannot sit on {bad[0]!r}; allowed sites: {', '.join(allowed)}")
    if not sites:
        raise ValueError(f"give at least one site from: {', '.join(allowed)}")
    if len(set(sites)) != len(sites):
        raise ValueError(f"sites has duplicates: {sites}")
    return sites


class LoraSpace(_SizedModule):
    sites: list[str] = Field(default_factory=lambda: ["q", "v"], description="Linear sites to adapt.")
    choose_sites: bool = Field(False, description="Search each site on/off instead of adapting all listed.")
    alpha: float | None = Field(None, gt=0, description="LoRA alpha; default 2 x rank.")

    _sites = field_validator("sites")(classmethod(lambda cls, v: _check_sites("lora", v)))


class AdapterSpace(_SizedModule):
    sites: list[str] = Field(default_factory=lambda: ["ffn"], description="attn and/or ffn.")

    _sites = field_validator("sites")(classmethod(lambda cls, v: _check_sites("serial_adapter", v)))


class PrefixSpace(_SizedModule):
    sites: list[str] = Field(default_factory=lambda: ["attn"], description="Always attn.")

    _sites = field_validator("sites")(classmethod(lambda cls, v: _check_sites("prefix", v)))


class Ia3Space(_Strict):
    sites: list[str] = Field(default_factory=lambda: ["k", "v", "down"], description="k, v and/or down.")
    optional: bool = Field(True, description="Search (IA)3 on/off; false places it wherever a layer is on.")

    _sites = field_validator("sites")(classmethod(lambda cls, v: _check_sites("ia3", v)))


class ExpertsSpace(_SizedModule):
    experts: list[int] = Field(description="Expert-count choices per layer; 0 = no experts in that layer.")
    top_k: list[int] = Field(default_factory=lambda: [1], description="Top-k choices (clipped to the count).")
    per_layer: bool = Field(True, description="Choose the expert count per layer (MoLA) or once for all.")
    sites: list[str] = Field(default_factory=lambda: ["q", "v"], description="Linear sites with experts.")
    alpha: float | None = Field(None, gt=0, description="LoRA alpha of each expert; default 2 x rank.")

    _sites = field_validator("sites")(classmethod(lambda cls, v: _check_sites("lora_experts", v)))

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


class ModulesSpace(_Strict):
    lora: LoraSpace | None = None
    serial_adapter: AdapterSpace | None = None
    parallel_adapter: AdapterSpace | None = None
    prefix: PrefixSpace | None = None
    ia3: Ia3Space | None = None
    lora_experts: ExpertsSpace | None = None

    @model_validator(mode="after")
    def _check_any(self) -> "ModulesSpace":
        if not any(getattr(self, name) is not None for name in METHOD_SITES):
            raise ValueError(f"declare at least one module type: {', '.join(METHOD_SITES)}")
        return self


class Budget(_Strict):
    max_trainable_pct: float = Field(gt=0, le=100, description="Upper bound on trainable parameters (%).")


class SpaceSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Short name, used in study names.")
    description: str = ""
    placement: Literal["shared", "per_module", "all"] = Field(
        "shared",
        description="shared: one on/off per layer for all modules (AutoPEFT); per_module: one per layer and "
        "module type; all: modules go in every layer.",
    )
    modules: ModulesSpace
    objectives: list[str] = Field(default_factory=lambda: ["score", "trainable_pct"])
    budget: Budget | None = None

    @field_validator("objectives")
    @classmethod
    def _check_objectives(cls, v: list[str]) -> list[str]:
        bad = [o for o in v if o not in OBJECTIVES]
        if bad:
            raise ValueError(f"unknown objective {bad[0]!r}; choose from {', '.join(OBJECTIVES)}")
        if "score" not in v or len(v) < 2 or len(set(v)) != len(v):
            raise ValueError(f"list 'score' and at least one distinct cost objective, got {v}")
        return v
