"""LoRA (and rsLoRA, which differs only in its scale): a trainable low-rank update next to a frozen linear.

    y = W x + b + s * B (A x),   s = alpha / r (rsLoRA: alpha / sqrt(r); the scale comes from the plan)

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", https://arxiv.org/abs/2106.09685.
A is kaiming-uniform (a = sqrt(5), as in HF peft), B is zero, so the update starts at exactly 0. No dropout.
DoRA's magnitude/direction split lives in :mod:`autopeft.peft.modules.dora`.

When nothing else transforms the linear's input, :class:`AdaptedLinear` runs the whole site as one fused kernel
(:meth:`LoRA.fused_linear`, :func:`autopeft.kernels.lora_linear`); variants whose output is not this sum set
``fusable = False`` and go through :meth:`LoRA.combine`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from autopeft.kernels import lora_linear
from autopeft.peft.modules._init import linear_init_


class LoRA(nn.Module):
    """The low-rank branch: :meth:`combine` adds ``scaling * B(A x)`` to the frozen linear's output."""

    fusable = True  # the site's output is W x + b + s B A x, which :meth:`fused_linear` computes in one kernel

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

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling  # (out, in)

    def combine(self, y: torch.Tensor, x: torch.Tensor, base: nn.Linear) -> torch.Tensor:
        """``y`` = the frozen linear's output (bias included), ``x`` = the linear's unscaled input."""
        return y + self(x)

    def fused_linear(self, x: torch.Tensor, base: nn.Linear) -> torch.Tensor:
        """``W x + b + s B A x`` in one kernel (equal to ``combine(base(x), x, base)``); ``x`` (..., in)."""
        return lora_linear(x, base.weight, base.bias, self.lora_A, self.lora_B, self.scaling)

    def merge_weight(self, weight: torch.Tensor, base: nn.Linear) -> torch.Tensor:
        """The (out, in) weight that computes ``combine`` when ``weight`` is the frozen linear's effective weight."""
        return weight + self.delta_weight()

    def extra_repr(self) -> str:
        return f"in={self.lora_A.shape[1]}, out={self.lora_B.shape[0]}, r={self.rank}, scaling={self.scaling:g}"


def inject(ctx, spec) -> None:
    lin = ctx.linear(spec.site)
    if spec.variant == "dora":
        from autopeft.peft.modules.dora import DoRA

        module: LoRA = DoRA(lin.base_layer, spec.size, spec.scaling, ctx.generator)
    else:
        module = LoRA(lin.in_features, lin.out_features, spec.size, spec.scaling, ctx.generator)
    lin.lora = ctx.place(module, lin)
