"""Fused LoRA linear on BLAS calls (the CPU path; the ops are plain torch, so it also runs on any device).

    forward:   h = x Aᵀ                         (N, r)      saved, with x, for the backward
               y = b + x Wᵀ                     (N, out)    one addmm
               y += s h Bᵀ                      in place: addmm_ into y, no (N, out) temporary
    backward:  dh = s dy B                      (N, r)
               dx = dy W + dh A                 one mm, then addmm_ into dx, no (N, in) temporary
               dA = dhᵀ x                       (r, in)
               dB = s dyᵀ h                     (out, r)

Neither ``W + s B A`` nor a second copy of x or y is ever built. The frozen weight and bias get no gradient: the
caller (:func:`autopeft.kernels.lora_linear`) only sends frozen ones here. Compared with autograd over
:func:`autopeft.kernels.reference.lora_linear` this saves the scaled copy of ``B(Ax)`` and the add in the forward,
the scaled copy of ``dy`` and the (N, in) add of the two input gradients in the backward.
"""

from __future__ import annotations

import torch


class FusedLoRA(torch.autograd.Function):
    """``FusedLoRA.apply(x, weight, bias, lora_A, lora_B, scaling)``: ``x`` (..., in) -> (..., out)."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, lora_B, scaling):
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        h = x2 @ lora_A.t()  # (N, r)
        y = x2 @ weight.t() if bias is None else torch.addmm(bias, x2, weight.t())  # (N, out)
        y.addmm_(h, lora_B.t(), alpha=scaling)  # y += s h Bᵀ
        ctx.save_for_backward(x2, h, weight, lora_A, lora_B)
        ctx.scaling, ctx.lead = scaling, lead
        return y.view(*lead, -1)  # (..., out)

    @staticmethod
    def backward(ctx, grad_y):
        x2, h, weight, lora_A, lora_B = ctx.saved_tensors
        s = ctx.scaling
        g = grad_y.reshape(-1, grad_y.shape[-1])  # (N, out)
        dh = (g @ lora_B).mul_(s)  # (N, r)
        dx = d_a = d_b = None
        if ctx.needs_input_grad[0]:
            dx = (g @ weight).addmm_(dh, lora_A).view(*ctx.lead, -1)  # (..., in) = dy W + dh A
        if ctx.needs_input_grad[3]:
            d_a = dh.t() @ x2  # (r, in)
        if ctx.needs_input_grad[4]:
            d_b = (g.t() @ h).mul_(s)  # (out, r)
        return dx, None, None, d_a, d_b, None
