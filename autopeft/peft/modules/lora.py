"""LoRA: a trainable low-rank update next to a frozen linear.

    y = W x + b + (alpha / r) * B (A x)

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", https://arxiv.org/abs/2106.09685.
A is kaiming-uniform (a = sqrt(5), as in HF peft), B is zero, so the update starts at exactly 0. No dropout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from autopeft.peft.modules._init import linear_init_


class LoRA(nn.Module):
    """The low-rank branch only: returns ``scaling * B(A x)``; :class:`AdaptedLinear` adds it to ``W x + b``."""

    def __init__(self, in_features: int, out_features: int, rank: int, scaling: float,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.rank, self.scaling = rank, scaling
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))  # same layout as peft's lora_A.weight
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        linear_init_(self.lora_A, None, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(x, self.lora_A)  # (..., r)
        return F.linear(h, self.lora_B) * self.scaling  # (..., out)

    def extra_repr(self) -> str:
        return f"in={self.lora_A.shape[1]}, out={self.lora_B.shape[0]}, r={self.rank}, scaling={self.scaling:g}"
