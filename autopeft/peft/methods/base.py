"""The torch-free half of every PEFT method unit: what a method is, where it sits, what its knobs mean,
how many parameters it adds, and the YAML block that searches it.

A method unit is two small files: ``autopeft/peft/methods/<name>.py`` (this half: a :class:`Method`
subclass, importable without torch, read by the plan, the search-space schema and parameter counting) and
``autopeft/peft/modules/<name>.py`` (the layer, its ``inject`` and its merge rule). The one registry,
:data:`autopeft.peft.methods.REGISTRY`, lists the units; nothing else keeps a list of methods.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from types import ModuleType
from typing import Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from autopeft.errors import PlanError

LINEAR_SITES: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")
BLOCK_SITES: tuple[str, ...] = ("attn", "ffn")
#: block site -> linear whose input is the sub-layer input (parallel adapters read it)
ENTRY_LINEAR = {"attn": "q", "ffn": "up"}
#: block site -> linear whose output is the sub-layer output before residual/LayerNorm (adapters add there)
EXIT_LINEAR = {"attn": "o", "ffn": "down"}


# --------------------------------------------------------------------------- YAML blocks
# ``log2_hidden`` resolves, once the model is known, to 0 plus hidden/2^k for k = 0, 1, ... (the
# AutoPEFT paper's grid: for hidden 768 that is 0, 1, 3, 6, 12, ..., 384, 768).
Sizes = Union[Literal["log2_hidden"], list[int]]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_sizes(v: Sizes) -> Sizes:
    if isinstance(v, list):
        if not v:
            raise ValueError("give at least one size, e.g. [0, 8]")
        if any(s < 0 for s in v):
            raise ValueError(f"sizes must be >= 0, got {v}")
        if len(set(v)) != len(v):
            raise ValueError(f"sizes has duplicates: {v}")
    return v


def check_sites(method: "Method", sites: list[str]) -> list[str]:
    bad = [s for s in sites if s not in method.sites]
    if bad:
        raise ValueError(f"{method.name} cannot sit on {bad[0]!r}; allowed sites: {', '.join(method.sites)}")
    if not sites:
        raise ValueError(f"give at least one site from: {', '.join(method.sites)}")
    if len(set(sites)) != len(sites):
        raise ValueError(f"sites has duplicates: {sites}")
    return sites


def check_variants(method: "Method", v: str | list[str]) -> str | list[str]:
    """``variant``: one name (fixed) or a list of names (searched)."""
    names = [v] if isinstance(v, str) else v
    bad = [n for n in names if n not in method.variants]
    if bad:
        raise ValueError(f"{method.name} has no variant {bad[0]!r}; variants: {', '.join(method.variants)}")
    if not names or len(set(names)) != len(names):
        raise ValueError(f"give distinct variants from: {', '.join(method.variants)}")
    return v


class SizedSpace(Strict):
    sizes: Sizes = Field(description="Size choices; 0 turns the module off. A list, or 'log2_hidden'.")

    _sizes = field_validator("sizes")(classmethod(lambda cls, v: check_sizes(v)))


# --------------------------------------------------------------------------- the method descriptor
class Method(ABC):
    """One PEFT method: its sites, knobs, parameter count and YAML block. Subclasses fill the class attributes.

    ``kind`` tells the search-space codec how the method is searched: ``sized`` (a size, 0 = off),
    ``switch`` (on/off; no size) or ``experts`` (rank, per-layer expert count and top-k).
    """

    name: ClassVar[str]
    sites: ClassVar[tuple[str, ...]]
    kind: ClassVar[Literal["sized", "switch", "experts"]] = "sized"
    size_means: ClassVar[str] = ""  # empty: no size knob (size must be 0)
    label: ClassVar[str]  # summary label; may use {size}, {top_k}, {variant}
    variants: ClassVar[tuple[str, ...]] = ()  # first is the default, stored as variant=None
    takes_alpha: ClassVar[bool] = False
    takes_experts: ClassVar[bool] = False
    merges: ClassVar[str] = ""  # how merge_plan folds it away after training; "" = it stays a module
    peft_type: ClassVar[str] = ""  # the Hugging Face peft type that expresses it, "" = none
    paper: ClassVar[str]
    layer_module: ClassVar[str]  # torch half: inject(ctx, spec) and the layer
    space_model: ClassVar[type[Strict]]

    # ------------------------------------------------------------ plan checks
    def check(self, spec: Any, where: str) -> None:
        """Method-specific checks of one module spec; raise :class:`PlanError` naming the field."""
        if self.size_means and spec.size < 1:
            raise PlanError(f"size: {where}: size {spec.size} must be >= 1 (leave the module out to turn it off)")
        if not self.size_means and spec.size != 0:
            raise PlanError(f"size: {where}: {self.name} has no size knob; use size 0, not {spec.size}")
        if self.takes_experts:
            if spec.num_experts < 1:
                raise PlanError(f"num_experts: {where}: {spec.num_experts} must be >= 1")
            if not 1 <= spec.top_k <= spec.num_experts:
                raise PlanError(f"top_k: {where}: top_k {spec.top_k} must lie in 1..num_experts ({spec.num_experts})")
        elif spec.num_experts or spec.top_k:
            raise PlanError(f"num_experts/top_k: {where}: only lora_experts takes experts; set both to 0")
        if spec.alpha is not None and not self.takes_alpha:
            raise PlanError(f"alpha: {where}: {self.name} takes no alpha; leave it out")
        if spec.alpha is not None and spec.alpha <= 0:
            raise PlanError(f"alpha: {where}: alpha {spec.alpha} must be > 0")
        if spec.variant is not None and spec.variant not in self.variants:
            allowed = ", ".join(self.variants) if self.variants else "none"
            raise PlanError(f"variant: {where}: {self.name} has no variant {spec.variant!r}; variants: {allowed}")

    def check_model(self, spec: Any, arch: Any, config: Any) -> str | None:
        """A reason ``spec`` cannot go into a model of this shape, or ``None``."""
        return None

    def linears(self, site: str) -> tuple[str, ...]:
        """Linear sites a module on ``site`` touches (they must exist in the architecture)."""
        return (site,)

    # ------------------------------------------------------------ numbers
    def scaling(self, spec: Any) -> float:
        """Output scale of low-rank branches: ``alpha / r`` (``alpha`` defaults to ``2 r``)."""
        if not self.takes_alpha:
            return 1.0
        alpha = 2.0 * spec.size if spec.alpha is None else spec.alpha
        return alpha / spec.size

    @abstractmethod
    def count(self, spec: Any, arch: Any, config: Any) -> int:
        """Parameters one module adds on its own."""

    def shared_count(self, specs: list[Any], arch: Any, config: Any) -> int:
        """Parameters shared by all modules of this method in a plan (counted once); 0 for most methods."""
        return 0

    def summary_label(self, spec: Any) -> str:
        label = self.label.format(size=spec.size, top_k=spec.top_k)
        return f"{label} {spec.variant}" if spec.variant else label

    # ------------------------------------------------------------ torch half
    def impl(self) -> ModuleType:
        return importlib.import_module(self.layer_module)

    def __repr__(self) -> str:
        return f"<method {self.name}>"
