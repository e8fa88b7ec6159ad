"""Hydra: a parallel and a sequential low-rank branch on one frozen linear.

    y = W (x + s B_s A_s x) + b + s B_p A_p x

Kim et al. 2023, "Hydra: Multi-head Low-rank Adaptation for Parameter Efficient Fine-tuning",
https://arxiv.org/abs/2309.06922. The parallel branch is LoRA; the sequential one adapts the input the frozen
weight sees. Both A are kaiming-uniform, both B zero. Merge: W' = W + s B_p A_p + s W B_s A_s.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from autopeft.peft.modules._init import linear_init_


class Hydra(nn.Module):
    def __init__(self, in_features: int, out_features: int, rank: int, scaling: float,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.rank, self.scaling = rank, scaling
        self.par_A = nn.Parameter(torch.empty(rank, in_features))  # (r, in)
        self.par_B = nn.Parameter(torch.zeros(out_features, rank))  # (out, r)
        self.seq_A = nn.Parameter(torch.empty(rank, in_features))  # (r, in)
        self.seq_B = nn.Parameter(torch.zeros(in_features, rank))  # (in, r)
        linear_init_(self.par_A, None, generator)
        linear_init_(self.seq_A, None, generator)

    def sequential(self, x: torch.Tensor) -> torch.Tensor:
        """``x + s B_s A_s x`` (..., in): the input the frozen weight sees."""
        return x + F.linear(F.linear(x, self.seq_A), self.seq_B) * self.scaling

    def parallel(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.par_A), self.par_B) * self.scaling  # (..., out)

    def sequential_matrix(self) -> torch.Tensor:
        """(in, in): I + s B_s A_s."""
        eye = torch.eye(self.seq_B.shape[0], dtype=self.seq_B.dtype, device=self.seq_B.device)
        return eye + (self.seq_B @ self.seq_A) * self.scaling

    def parallel_delta(self) -> torch.Tensor:
        return (self.par_B @ self.par_A) * self.scaling  # (out, in)

    def extra_repr(self) -> str:
        return f"in={self.par_A.shape[1]}, out={self.par_B.shape[0]}, r={self.rank}, scaling={self.scaling:g}"


def inject(ctx, spec) -> None:
    lin = ctx.linear(spec.site)
    lin.hydra = ctx.place(Hydra(lin.in_features, lin.out_features, spec.size, spec.scaling, ctx.generator), lin)
