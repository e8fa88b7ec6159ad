"""Save and load only what training changed: the PEFT modules and the head."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from autopeft.errors import PlanError


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable tensor of ``model`` (PEFT modules and, if trained, the head), detached copies."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def load_adapter_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` into ``model``'s trainable tensors; names and shapes must match exactly.

    Raises :class:`PlanError` naming the missing, unexpected or mis-shaped entries.
    """
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(params) - set(state))
    unexpected = sorted(set(state) - set(params))
    shapes = [f"{n} {tuple(state[n].shape)} vs {tuple(params[n].shape)}" for n in sorted(set(params) & set(state))
              if tuple(state[n].shape) != tuple(params[n].shape)]
    if missing or unexpected or shapes:
        parts = []
        labelled = (("missing", missing), ("unexpected", unexpected), ("shape mismatch (state vs model)", shapes))
        for label, items in labelled:
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{label}: {', '.join(items[:5])}{more}")
        raise PlanError(
            "adapter state: does not match the model's trainable tensors; " + "; ".join(parts)
            + ". Apply the same plan (and the same train_head) to the same base model before loading"
        )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state[name])


__all__ = ["adapter_state_dict", "load_adapter_state_dict"]
