"""``merge_plan``: after training, fold every mergeable module into the frozen model.

* LoRA (all variants), Hydra, (IA)3 and SSF fold into their linear's weight and bias
  (:meth:`AdaptedLinear.merge_`); a linear left with no module becomes a plain ``nn.Linear`` again.
* Prefix tuning's reparametrisation MLP is replaced by the keys and values it produces.
* Adapters, Compacter and LoRA experts stay as modules (they are not linear in the input).

The outputs do not change (up to float rounding; tested to 1e-5 in float32). The merged model is for inference
and export: its plan's modules are gone, so its state no longer loads a trained adapter state.
"""

from __future__ import annotations

from torch import nn

from autopeft.peft.modules import AdaptedLinear
from autopeft.peft.modules.prefix import PrefixMLP
from autopeft.peft.prefix_attention import PREFIX_ATTR


def merge_plan(model: nn.Module) -> int:
    """Merge in place; returns the number of modules merged away."""
    merged = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, AdaptedLinear) and module.merge_():
            merged += 1
            if module.is_empty:
                _replace(model, name, module.base_layer)
        prefix = getattr(module, PREFIX_ATTR, None)
        if isinstance(prefix, PrefixMLP):
            setattr(module, PREFIX_ATTR, prefix.merged())
            merged += 1
    return merged


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


__all__ = ["merge_plan"]
