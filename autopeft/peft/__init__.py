"""PEFT modules and their injection into Hugging Face transformers.

``apply_plan(model, plan)`` freezes a model and adds the modules a :class:`~autopeft.plan.PeftPlan` asks for;
``plan_parameter_count(plan, config)`` gives the exact count they add without building a model;
``merge_plan(model)`` folds mergeable modules into the base weights after training.

The names below load on first use (PEP 562), so ``autopeft.peft.methods`` (the torch-free method registry that
:mod:`autopeft.plan` reads) can be imported without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ARCHS": "autopeft.peft.arch",
    "ArchSpec": "autopeft.peft.arch",
    "get_arch": "autopeft.peft.arch",
    "register_arch": "autopeft.peft.arch",
    "supported_model_types": "autopeft.peft.arch",
    "apply_plan": "autopeft.peft.inject",
    "head_parameters": "autopeft.peft.inject",
    "auxiliary_loss": "autopeft.peft.losses",
    "merge_plan": "autopeft.peft.merge",
    "count_parameters": "autopeft.peft.params",
    "plan_parameter_count": "autopeft.peft.params",
    "adapter_state_dict": "autopeft.peft.state",
    "load_adapter_state_dict": "autopeft.peft.state",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'autopeft.peft' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = sorted(_EXPORTS)
