"""The check that a plan fits a model's architecture (every linear a module needs exists, shapes suit it)."""

from __future__ import annotations

from typing import Any

from autopeft.errors import PlanError
from autopeft.peft.arch import ArchSpec
from autopeft.peft.methods import ENTRY_LINEAR, EXIT_LINEAR, get_method
from autopeft.plan import PeftPlan


def linears_used(method: str, site: str) -> tuple[str, ...]:
    """The linear sites a module of ``method`` on ``site`` touches (none for prefix)."""
    return get_method(method).linears(site)


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
        reason = get_method(spec.method).check_model(spec, arch, config)
        if reason:
            raise PlanError(f"layers[{i}]: {spec.method} on site {spec.site!r}: {reason}")


__all__ = ["ENTRY_LINEAR", "EXIT_LINEAR", "check_plan", "linears_used"]
