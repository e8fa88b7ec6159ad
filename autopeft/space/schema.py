"""The search-space YAML schema (pydantic models; unknown keys are rejected).

A space file looks like::

    name: autopeft
    placement: shared            # shared | per_module | all
    modules:
      serial_adapter: {sizes: log2_hidden, sites: [ffn]}
      prefix: {sizes: [0, 1, 2, 4, 8, 16]}
      lora: {sizes: [0, 4, 8], sites: [q, k, v, o], choose_sites: true, variant: [lora, dora]}
      ia3: {sites: [k, v, down]}
      lora_experts: {sizes: [4], experts: [0, 2, 4, 8], top_k: [1, 2], sites: [q, v], routing: topk}

Each module's block is defined by its method unit (``autopeft/peft/methods/<name>.py``, ``space_model``).
    objectives: [score, trainable_pct]
    budget: {max_trainable_pct: 1.0}

See docs/search_spaces.md for every field.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, create_model, field_validator, model_validator

from autopeft.peft.methods import REGISTRY
from autopeft.peft.methods.base import Sizes, Strict

__all__ = ["OBJECTIVES", "ModulesSpace", "Sizes", "SpaceSpec"]

#: Objectives a space may name, and the direction the optimizer pushes each.
OBJECTIVES: dict[str, str] = {
    "score": "maximize",  # held-out task metric (accuracy / macro-F1)
    "trainable_pct": "minimize",  # trainable parameters, % of the base model
    "step_time": "minimize",  # mean training-step seconds
    "peak_memory": "minimize",  # peak memory in MiB during training
}

class _Strict(Strict):
    pass


def _check_any(self):
    if not any(getattr(self, name) is not None for name in REGISTRY):
        raise ValueError(f"declare at least one module type: {', '.join(REGISTRY)}")
    return self


#: one optional YAML block per registered method; each method unit defines its own block (``space_model``).
ModulesSpace = create_model(
    "ModulesSpace",
    __base__=_Strict,
    __validators__={"_check_any": model_validator(mode="after")(_check_any)},
    **{name: (Optional[method.space_model], None) for name, method in REGISTRY.items()},
)


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
