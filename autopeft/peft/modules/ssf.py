"""SSF: a learned scale and shift of a frozen linear's output features.

    y = gamma * (W x + b) + beta

Lian et al. 2022, "Scaling & Shifting Your Features: A New Baseline for Efficient Model Tuning",
https://arxiv.org/abs/2210.08823. gamma starts at ones and beta at zeros (identity). The paper initialises
gamma ~ N(1, 0.02) and beta ~ N(0, 0.02); starting at the identity keeps every method's "the model starts
unchanged" property. Merge: W' = diag(gamma) W, b' = gamma * b + beta.
"""

from __future__ import annotations

import torch
from torch import nn


class SSF(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(features))
        self.shift = nn.Parameter(torch.zeros(features))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.scale + self.shift  # (..., features)

    def extra_repr(self) -> str:
        return f"features={self.scale.numel()}"


def inject(ctx, spec) -> None:
    lin = ctx.linear(spec.site)
    lin.ssf = ctx.place(SSF(lin.out_features), lin)
