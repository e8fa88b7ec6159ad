"""Fused LoRA linear on BLAS calls (the CPU path; the ops are plain torch, so it also runs on any device).

The low-rank activations are kept transposed, rank-major (r, N), so that every skinny product streams its big
operand once as a wide, short GEMM:

    forward:   hᵀ = A xᵀ                            (r, N)     hᵀ is saved, with x, for the backward
               y  = b + x Wᵀ                        (N, out)   one addmm
               y += s h Bᵀ                          addmm_ into y (no scaled copy, no second (N, out) tensor)
    backward:  gᵀ = Bᵀ dyᵀ                          (r, N)     g = dy B, unscaled
               dBᵀ = hᵀ dy                          (r, out)   then dB = s dBᵀᵀ, a tiny transpose
               dx = dy W,  dx += s g A              (N, in)    mm, then addmm_ into dx
               dA = s gᵀ x                          (r, in)

Why rank-major: MKL runs the token-major forms of these products (x Aᵀ as (N, r), dyᵀ h as (out, r)) several times
below memory speed (on the 2-core EPYC of docs/benchmarks.md: dyᵀ h 2.3 ms against 0.37 ms for hᵀ dy on 4096 x 384
tokens, x Aᵀ 4.4 ms against 2.9 ms for A xᵀ at in = 1536), while the (r, N) forms run at the speed of one pass over
the big operand. The scale s rides the GEMMs' alpha or the (r, ·) results, never an (N, ·) tensor.

Neither ``W + s B A`` nor a second copy of x or y is ever built. The frozen weight and bias get no gradient: the
caller (:func:`autopeft.kernels.lora_linear`) only sends frozen ones here.
"""

from __future__ import annotations

import torch


class FusedLoRA(torch.autograd.Function):
    """``FusedLoRA.apply(x, weight, bias, lora_A, lora_B, scaling)``: ``x`` (..., in) -> (..., out)."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, lora_B, scaling):
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        h_t = torch.mm(lora_A, x2.t())  # (r, N)
        y = torch.mm(x2, weight.t()) if bias is None else torch.addmm(bias, x2, weight.t())  # (N, out)
        y.addmm_(h_t.t(), lora_B.t(), alpha=scaling)  # y += s h Bᵀ
        ctx.save_for_backward(x2, h_t, weight, lora_A, lora_B)
        ctx.scaling, ctx.lead = scaling, lead
        return y.view(*lead, -1)  # (..., out)

    @staticmethod
    def backward(ctx, grad_y):
        x2, h_t, weight, lora_A, lora_B = ctx.saved_tensors
        s = ctx.scaling
        dy = grad_y.reshape(-1, grad_y.shape[-1])  # (N, out)
        need_x, need_a, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[3], ctx.needs_input_grad[4]
        g_t = torch.mm(lora_B.t(), dy.t()) if need_x or need_a else None  # (r, N) = (dy B)ᵀ, unscaled
        d_b = torch.mm(h_t, dy).t().mul(s).contiguous() if need_b else None  # (out, r) = s dyᵀ h
        dx = None
        if need_x:
            dx = torch.mm(dy, weight).addmm_(g_t.t(), lora_A, alpha=s).view(*ctx.lead, -1)  # (..., in)
        d_a = torch.mm(g_t, x2).mul_(s) if need_a else None  # (r, in) = s gᵀ x
        return dx, None, None, d_a, d_b, None
