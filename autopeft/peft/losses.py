"""Auxiliary training losses produced by PEFT modules during the forward pass."""

from __future__ import annotations

import torch
from torch import nn

from autopeft.peft.modules import LoRAExperts


def auxiliary_loss(model: nn.Module) -> torch.Tensor | None:
    """Sum of the load-balancing losses of every expert module from the last forward; ``None`` without experts.

    Add it to the task loss with a small weight (Switch Transformer uses 0.01).
    """
    losses = [m.aux_loss for m in model.modules() if isinstance(m, LoRAExperts) and m.aux_loss is not None]
    return torch.stack([loss.float() for loss in losses]).sum() if losses else None


__all__ = ["auxiliary_loss"]
