"""IA3: a learned per-feature scale on a frozen linear's output (k, v) or input (FFN down).

    k' = l_k * (W_k x),   v' = l_v * (W_v x),   down(l_ff * a)

Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning"
(T-Few), https://arxiv.org/abs/2205.05638. The vector starts at ones, so the model starts unchanged. As in HF
peft, the feed-forward vector scales the *input* of the down projection (the FFN's intermediate activation).
Merge: the scale folds into the frozen weight (see AdaptedLinear.merge_).
"""

from __future__ import annotations

import torch
from torch import nn


class IA3Scale(nn.Module):
    """Elementwise ``x * l`` over the last dimension."""

    def __init__(self, features: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale  # (..., features)

    def extra_repr(self) -> str:
        return f"features={self.scale.numel()}"


def inject(ctx, spec) -> None:
    lin = ctx.linear(spec.site)
    if spec.site == "down":
        lin.ia3_in = ctx.place(IA3Scale(lin.in_features), lin)
    else:
        lin.ia3_out = ctx.place(IA3Scale(lin.out_features), lin)
