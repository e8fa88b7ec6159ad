"""Where each method's modules go in a block, and the check that a plan fits a model's architecture."""

from __future__ import annotations

from typing import Any

from autopeft.errors import PlanError
from autopeft.peft.arch import ArchSpec
from autopeft.plan import PeftPlan

#: block site -> linear whose input is the sub-layer input (parallel adapter reads it)
ENTRY_LINEAR = {"attn": "q", "ffn": "up"}
#: block site -> linear whose output is the sub-layer output before residual/LayerNorm (adapters add there)
EXIT_LINEAR = {"attn": "o", "ffn": "down"}


def linears_used(method: str, site: str) -> tuple[str, ...]:
    """The linear sites a module of ``method`` on ``site`` touches (none for prefix)."""
    if method == "prefix":
        return ()
    if method == "serial_adapter":
        return (EXIT_LINEAR[site],)
    if method == "parallel_adapter":
        return (ENTRY_LINEAR[site], EXIT_LINEAR[site])
    return (site,)


def check_plan(plan: PeftPlan, arch: ArchSpec, config: Any) -> None:
    """Raise :class:`PlanError` when ``plan`` does not fit a model with this ``config``."""
    model_type = getattr(config, "model_type", arch.family)
    n = arch.num_layers(config)
    if plan.num_layers != n:
        raise PlanError(
            f"num_layers: the plan is for {plan.num_layers} layers but the {model_type} model has {n}; "
            f"build the plan with num_layers={n}"
        )
    present = arch.sites(config)
    for i, spec in plan.modules():
        missing = [s for s in linears_used(spec.method, spec.site) if s not in present]
        if missing:
            raise PlanError(
                f"layers[{i}]: {spec.method} on site {spec.site!r} needs linear {missing[0]!r}, which {model_type} "
                f"blocks do not have; linear sites there: {', '.join(present)}. Drop the module or move it to one "
                "of those sites"
            )


__all__ = ["ENTRY_LINEAR", "EXIT_LINEAR", "check_plan", "linears_used"]
