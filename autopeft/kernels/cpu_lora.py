"""Fused LoRA linear on BLAS calls (the CPU path; the ops are plain torch, so it also runs on any device).

Per block of rows i (tokens), so that the block's (rows, out) and (rows, in) tiles are still in cache when the
low-rank product touches them again:

    forward:   h_i = x_i Aᵀ                         (rows, r)     h is saved, with x, for the backward
               y_i = b + x_i Wᵀ                     (rows, out)   one addmm
               y_i += s h_i Bᵀ                      addmm_ into y_i while it is cached
    backward:  dh_i = s dy_i B                      (rows, r)
               dB  += s dy_iᵀ h_i                   (out, r)      dy_i read once for dh, dB and dx
               dx_i = dy_i W,  dx_i += dh_i A       (rows, in)    mm, then addmm_ into dx_i while it is cached
               dA   = dhᵀ x                         (r, in)       after the blocks

Neither ``W + s B A`` nor a second copy of x or y is ever built. Compared with autograd over
:func:`autopeft.kernels.reference.lora_linear` this saves the scaled copy of ``B(Ax)`` and the add in the forward,
the scaled copy of ``dy`` and the (N, in) add of the two input gradients in the backward, and the low-rank products
find their big operand in cache instead of streaming it from memory again. The frozen weight and bias get no
gradient: the caller (:func:`autopeft.kernels.lora_linear`) only sends frozen ones here.
"""

from __future__ import annotations

import torch

#: elements of the widest (rows, features) tile per block: 2**20 float32 = 4 MiB, which stays in a shared L3 cache
#: (a 32 MiB one on the 2-core EPYC these figures were taken on; smaller blocks lose more in BLAS efficiency and
#: Python calls than they gain, see docs/benchmarks.md)
TILE_ELEMENTS = 2**20
MIN_ROWS = 256


def block_rows(n: int, d_in: int, d_out: int) -> int:
    """Rows per block for ``n`` tokens of a (d_in -> d_out) linear."""
    return min(n, max(MIN_ROWS, TILE_ELEMENTS // max(d_in, d_out)))


class FusedLoRA(torch.autograd.Function):
    """``FusedLoRA.apply(x, weight, bias, lora_A, lora_B, scaling)``: ``x`` (..., in) -> (..., out)."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, lora_B, scaling):
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        (n, d_in), d_out = x2.shape, weight.shape[0]
        h = x2.new_empty(n, lora_A.shape[0])  # (N, r)
        y = x2.new_empty(n, d_out)  # (N, out)
        a_t, w_t, b_t = lora_A.t(), weight.t(), lora_B.t()
        rows = block_rows(n, d_in, d_out)
        for i in range(0, n, rows):
            x_i, h_i, y_i = x2[i : i + rows], h[i : i + rows], y[i : i + rows]
            torch.mm(x_i, a_t, out=h_i)
            torch.mm(x_i, w_t, out=y_i) if bias is None else torch.addmm(bias, x_i, w_t, out=y_i)
            y_i.addmm_(h_i, b_t, alpha=scaling)  # y_i += s h_i Bᵀ
        ctx.save_for_backward(x2, h, weight, lora_A, lora_B)
        ctx.scaling, ctx.lead, ctx.rows = scaling, lead, rows
        return y.view(*lead, -1)  # (..., out)

    @staticmethod
    def backward(ctx, grad_y):
        x2, h, weight, lora_A, lora_B = ctx.saved_tensors
        s, rows = ctx.scaling, ctx.rows
        g = grad_y.reshape(-1, grad_y.shape[-1])  # (N, out)
        need_x, need_a, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[3], ctx.needs_input_grad[4]
        dh = torch.empty_like(h)  # (N, r)
        dx = torch.empty_like(x2) if need_x else None  # (N, in)
        d_b = torch.zeros_like(lora_B) if need_b else None  # (out, r)
        for i in range(0, g.shape[0], rows):
            g_i, dh_i = g[i : i + rows], dh[i : i + rows]
            torch.mm(g_i, lora_B, out=dh_i).mul_(s)
            if need_b:
                d_b.addmm_(g_i.t(), h[i : i + rows], alpha=s)
            if need_x:
                dx_i = dx[i : i + rows]
                torch.mm(g_i, weight, out=dx_i).addmm_(dh_i, lora_A)  # dy_i W + dh_i A
        d_a = dh.t() @ x2 if need_a else None  # (r, in)
        return (dx.view(*ctx.lead, -1) if need_x else None), None, None, d_a, d_b, None
