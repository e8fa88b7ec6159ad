"""PEFT modules and their injection into Hugging Face transformers.

``apply_plan(model, plan)`` freezes a model and adds the modules a :class:`~autopeft.plan.PeftPlan` asks for;
``plan_parameter_count(plan, config)`` gives the exact count they add without building a model.
"""

from autopeft.peft.arch import ARCHS, ArchSpec, get_arch, register_arch, supported_model_types
from autopeft.peft.inject import apply_plan, head_parameters
from autopeft.peft.losses import auxiliary_loss
from autopeft.peft.params import count_parameters, plan_parameter_count
from autopeft.peft.state import adapter_state_dict, load_adapter_state_dict

__all__ = [
    "ARCHS",
    "ArchSpec",
    "adapter_state_dict",
    "apply_plan",
    "auxiliary_loss",
    "count_parameters",
    "get_arch",
    "head_parameters",
    "load_adapter_state_dict",
    "plan_parameter_count",
    "register_arch",
    "supported_model_types",
]
