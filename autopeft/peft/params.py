"""Parameter counts: the exact analytic count of a plan from config dims, and the live count of a model."""

from __future__ import annotations

from typing import Any

from torch import nn

from autopeft.peft.arch import ArchSpec, get_arch
from autopeft.peft.methods import REGISTRY, get_method
from autopeft.peft.placement import check_plan
from autopeft.plan import ModuleSpec, PeftPlan


def module_parameter_count(spec: ModuleSpec, arch: ArchSpec, config: Any) -> int:
    """Parameters one module adds on its own (shared parameters excluded; see :func:`plan_parameter_count`)."""
    return get_method(spec.method).count(spec, arch, config)


def plan_parameter_count(plan: PeftPlan, config: Any) -> int:
    """Exact number of parameters ``plan`` adds to a model with ``config`` (task head excluded), without a model.

    Per-module counts plus, once per plan, what a method shares between its modules (Compacter's rules).
    """
    arch = get_arch(config)
    check_plan(plan, arch, config)
    own = sum(module_parameter_count(spec, arch, config) for _, spec in plan.modules())
    shared = sum(
        method.shared_count([s for _, s in plan.modules() if s.method == name], arch, config)
        for name, method in REGISTRY.items()
    )
    return own + shared


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts; shared (tied) tensors count once."""
    params = list(model.parameters())  # deduplicated by identity
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


__all__ = ["count_parameters", "module_parameter_count", "plan_parameter_count"]
