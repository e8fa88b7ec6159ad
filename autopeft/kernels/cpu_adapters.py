"""Fused bottleneck adapters and scale-shift linears on BLAS calls (plain torch ops, so any device runs them).

:class:`FusedBottleneck`, the serial and the parallel adapter as one autograd node (D (m, C), U (out, m)):

    y = base + s (relu(x Dᵀ + b_D) Uᵀ + b_U)        serial: base = x, s = 1;  parallel: base = the exit linear's
                                                     output, x = the sub-layer's input, s = 4
    forward:   aᵀ = relu(D xᵀ + b_D)                (m, N)   rank-major (see :mod:`.cpu_lora`); row m holds ones,
               y  = base + s [a | 1] [U | b_U]ᵀ      (N, out) so b_U rides the GEMM: one addmm, base as its input
    backward:  daᵀ = (s U)ᵀ dyᵀ ⊙ [aᵀ > 0]           (m, N)   relu's mask from the saved output
               [dUᵀ; db_Uᵀ] = s [aᵀ; 1] dy           (m + 1, out): weight and bias gradient in one GEMM
               dD = daᵀ x,  db_D = Σ_N daᵀ           (m, C)
               dx = da D (+ dy when base is x)       one addmm with dy as its input: no (N, C) add
    Saved: x and [aᵀ; 1] ((m + 1, N), small); no (N, m) pre-activation and no (N, out) branch output.

:class:`ScaleShiftLinear`, a frozen linear with IA3's and SSF's per-feature vectors (any of them may be absent):

    y = ((x ⊙ l_in) Wᵀ + b) ⊙ c + β                  l_in (in,): IA3 on down;  c (out,): IA3 on k, v times SSF's γ;
                                                      β (out,): SSF's shift
    forward:   y0 = b + x (W diag(l_in))ᵀ           the input scale folded into a copy of W (no (N, in) x ⊙ l_in)
               y  = β + y0 ⊙ c                       one addcmul (no (N, out) temporary besides y0, which dc needs)
    backward:  g = dy (diag(c) W)                   (N, in) the output scale folded into W again (no dy ⊙ c)
               dl_in = Σ_N x ⊙ g,  dx = g ⊙ l_in     in place;  dc = Σ_N dy ⊙ y0;  dβ = Σ_N dy

The frozen weights get no gradient (callers send only frozen ones). Weight-sized copies (W diag(l), [U | b_U]) are
per call; activations are never copied.
"""

from __future__ import annotations

import torch


def _col_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ_N a ⊙ b for two (N, F) tensors -> (F,); ``linalg.vecdot`` was a little faster than ``(a * b).sum(0)`` here
    (0.27 against 0.30 ms on 4096 x 384) and einsum twenty times slower."""
    return torch.linalg.vecdot(a, b, dim=0)


class FusedBottleneck(torch.autograd.Function):
    """``FusedBottleneck.apply(x, base, down_w, down_b, up_w, up_b, scale)``: x (..., C), base (..., out) or None
    (serial: base = x) -> (..., out) = base + scale · (relu(x Dᵀ + b_D) Uᵀ + b_U)."""

    @staticmethod
    def forward(ctx, x, base, down_w, down_b, up_w, up_b, scale):
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])  # (N, C)
        base2 = x2 if base is None else base.reshape(-1, base.shape[-1])  # (N, out)
        m = down_w.shape[0]
        a1_t = x2.new_empty(m + 1, x2.shape[0])  # (m + 1, N): [aᵀ; 1]
        torch.addmm(down_b.unsqueeze(1), down_w, x2.t(), out=a1_t[:m]).relu_()
        a1_t[m].fill_(1.0)
        u1 = torch.cat([up_w, up_b.unsqueeze(1)], dim=1)  # (out, m + 1): [U | b_U]
        y = torch.addmm(base2, a1_t.t(), u1.t(), alpha=scale)  # (N, out)
        ctx.save_for_backward(x2, a1_t, down_w, up_w)
        ctx.scale, ctx.lead, ctx.residual = scale, lead, base is None
        return y.view(*lead, -1)

    @staticmethod
    def backward(ctx, grad_y):
        x2, a1_t, down_w, up_w = ctx.saved_tensors
        s, m = ctx.scale, down_w.shape[0]
        dy = grad_y.reshape(-1, grad_y.shape[-1])  # (N, out)
        da_t = torch.mm(up_w.t() * s, dy.t()).mul_(a1_t[:m] > 0)  # (m, N): s Uᵀ dyᵀ, relu's mask applied
        du1_t = torch.mm(a1_t, dy).mul_(s)  # (m + 1, out): [dUᵀ; db_Uᵀ]
        d_up_w, d_up_b = du1_t[:m].t().contiguous(), du1_t[m].clone()
        d_down_w = torch.mm(da_t, x2)  # (m, C)
        d_down_b = da_t.sum(1)  # (m,)
        dx = dbase = None
        if ctx.needs_input_grad[0]:
            if ctx.residual:  # dx = dy + da D, the residual's gradient as the GEMM's input
                dx = torch.addmm(dy, da_t.t(), down_w).view(*ctx.lead, -1)
            else:
                dx = torch.mm(da_t.t(), down_w).view(*ctx.lead, -1)
        if ctx.needs_input_grad[1]:
            dbase = grad_y  # the branch is added to base
        return dx, dbase, d_down_w, d_down_b, d_up_w, d_up_b, None


class ScaleShiftLinear(torch.autograd.Function):
    """``ScaleShiftLinear.apply(x, weight, bias, in_scale, out_scale, shift)``: x (..., in) -> (..., out) =
    ((x ⊙ in_scale) Wᵀ + b) ⊙ out_scale + shift; each of bias, in_scale, out_scale, shift may be None."""

    @staticmethod
    def forward(ctx, x, weight, bias, in_scale, out_scale, shift):
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        w = weight if in_scale is None else weight * in_scale  # (out, in): W diag(l_in), a weight-sized copy
        y0 = torch.mm(x2, w.t()) if bias is None else torch.addmm(bias, x2, w.t())  # (N, out)
        if out_scale is None:
            y = y0 if shift is None else y0.add_(shift)
        elif shift is None:
            y = y0 * out_scale
        else:
            y = torch.addcmul(shift, y0, out_scale)
        keep_y0 = out_scale is not None and ctx.needs_input_grad[4]
        ctx.save_for_backward(x2 if ctx.needs_input_grad[3] else None, weight, in_scale, out_scale,
                              y0 if keep_y0 else None)
        ctx.lead = lead
        return y.view(*lead, -1)

    @staticmethod
    def backward(ctx, grad_y):
        x2, weight, in_scale, out_scale, y0 = ctx.saved_tensors
        dy = grad_y.reshape(-1, grad_y.shape[-1])  # (N, out)
        dx = d_in = d_out = d_shift = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[3]:
            w = weight if out_scale is None else weight * out_scale.unsqueeze(1)  # diag(c) W
            g = torch.mm(dy, w)  # (N, in) = (dy ⊙ c) W
            if ctx.needs_input_grad[3]:
                d_in = _col_dot(x2, g)  # (in,)
            if ctx.needs_input_grad[0]:
                dx = (g if in_scale is None else g.mul_(in_scale)).view(*ctx.lead, -1)
        if ctx.needs_input_grad[4]:
            d_out = _col_dot(dy, y0)  # (out,)
        if ctx.needs_input_grad[5]:
            d_shift = dy.sum(0)
        return dx, None, None, d_in, d_out, d_shift
