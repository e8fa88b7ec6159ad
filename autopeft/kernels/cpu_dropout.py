"""Dropout with a cheaper random mask (the CPU path of :func:`autopeft.kernels.dropout`).

torch's CPU dropout draws a float Bernoulli mask, ``bernoulli_(1 - p)``: one 32-bit draw of its generator per
element, turned into a float and compared. A proxy trial's dropout sites (BERT's attention weights and the two
hidden-state sites of every block) spent about 5 % of a trial there (docs/benchmarks.md, "Trials per hour").

Here a 16-bit uniform integer decides each element: one call fills ``ceil(n / 4)`` int64 values with 64 random
bits each (``random_(-2**63, None)``, the generator's full 64-bit range: no modulo, every bit uniform), and the
int16 view of them is compared with a threshold. An element is kept with probability ``1 - round(p * 65536) /
65536`` (p = 0.1: 0.100006 dropped), and kept elements are scaled by the inverse of that probability, so the
output's expectation is the input exactly. The mask is a bool tensor, saved for the backward (a quarter of
torch's float mask).

The mask comes from torch's default generator of the tensor's device, so ``torch.manual_seed`` makes it
reproducible; it is another stream than torch's own dropout, so a seeded trial's numbers differ from a run with
torch's dropout within seeded noise.
"""

from __future__ import annotations

import math

import torch

_LEVELS = 1 << 16  # a mask element is one int16


def keep_probability(p: float) -> float:
    """The probability an element is kept, ``p`` rounded to a multiple of 1/65536."""
    return 1.0 - round(p * _LEVELS) / _LEVELS


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """A bool tensor of ``shape``: True with probability :func:`keep_probability` (``p``), independently."""
    n = math.prod(shape)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)  # 64 random bits each
    threshold = round(p * _LEVELS) - _LEVELS // 2  # P(int16 >= threshold) = keep_probability(p)
    return bits.view(torch.int16)[:n].view(shape) >= threshold


class FusedDropout(torch.autograd.Function):
    """``FusedDropout.apply(x, p)``: ``x ⊙ mask / keep_probability(p)``, the same mask in the backward."""

    @staticmethod
    def forward(ctx, x, p):
        mask = keep_mask(x.shape, p, x.device)
        scale = 1.0 / keep_probability(p)
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return x.mul(mask).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad.mul(mask).mul_(ctx.scale), None
