"""Seeded initialisers shared by the PEFT modules (every one takes an explicit ``torch.Generator``)."""

from __future__ import annotations

import math

import torch
from torch import nn


def linear_init_(weight: torch.Tensor, bias: torch.Tensor | None, generator: torch.Generator | None) -> None:
    """``nn.Linear``'s default init: kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    Works on a stack of matrices too (``(E, out, in)``): the bound uses the last dim as fan_in, so each
    matrix gets exactly what a lone ``nn.Linear(in, out)`` would.
    """
    fan_in = weight.shape[-1]
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    with torch.no_grad():
        if weight.dim() == 2:
            # the very call peft makes for lora_A, so equal generators give equal weights
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
        else:
            weight.uniform_(-bound, bound, generator=generator)
        if bias is not None:
            bias.uniform_(-bound, bound, generator=generator)
