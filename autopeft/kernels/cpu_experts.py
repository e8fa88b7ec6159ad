"""All LoRA experts of a layer in one autograd node: two matmuls over every expert at once, gates folded in.

    h  = x A_catᵀ                      (N, E r)    A_cat = A viewed as (E r, in): expert e owns columns e r .. e r + r
    u  = h ⊙ (s g)                     (N, E r)    each expert's r columns times its gate (0 off the top-k) and s
    y  = u B_catᵀ                      (N, out)    B_cat (out, E r) = [B_0 | B_1 | ...]

    du = dy B_cat;  dg = Σ_r du ⊙ h (times s);  dh = du ⊙ (s g);  dx = dh A_cat;  dA = dhᵀ x;  dB_cat = dyᵀ u

Saved for the backward: x, h and the gates (N, E); u is rebuilt from them (N x E r is small). Folding s into the
gates removes the two (N, out) scaling passes of the autograd version; the gates' gradient flows back to the router.
Computing every expert for every token costs E / k times the routed flops, but for the ranks and expert counts of
the search spaces that dense product is faster on CPU than gathering tokens by expert (docs/benchmarks.md).
"""

from __future__ import annotations

import torch


class FusedExperts(torch.autograd.Function):
    """``FusedExperts.apply(x, gates, lora_A, lora_B, scaling)``: x (N, in), gates (N, E), A (E, r, in),
    B (E, out, r) -> (N, out) = s Σ_e g_e B_e A_e x."""

    @staticmethod
    def forward(ctx, x, gates, lora_A, lora_B, scaling):
        (e, r, d_in), d_out = lora_A.shape, lora_B.shape[1]
        a_cat = lora_A.reshape(e * r, d_in)  # (E r, in), a view
        b_cat = lora_B.permute(1, 0, 2).reshape(d_out, e * r)  # (out, E r)
        h = x @ a_cat.t()  # (N, E r)
        u = (h.view(-1, e, r) * (gates * scaling).unsqueeze(-1)).view(-1, e * r)  # (N, E r)
        ctx.save_for_backward(x, gates, h, lora_A, b_cat)
        ctx.scaling = scaling
        return u @ b_cat.t()  # (N, out)

    @staticmethod
    def backward(ctx, grad_y):
        x, gates, h, lora_A, b_cat = ctx.saved_tensors
        e, r, d_in = lora_A.shape
        sg = (gates * ctx.scaling).unsqueeze(-1)  # (N, E, 1)
        du = (grad_y @ b_cat).view(-1, e, r)  # (N, E, r)
        d_gates = (du * h.view(-1, e, r)).sum(-1) * ctx.scaling if ctx.needs_input_grad[1] else None  # (N, E)
        dh = (du * sg).view(-1, e * r)  # (N, E r)
        dx = dh @ lora_A.reshape(e * r, d_in) if ctx.needs_input_grad[0] else None  # (N, in)
        d_a = (dh.t() @ x).view(e, r, d_in) if ctx.needs_input_grad[2] else None  # (E, r, in)
        d_b = None
        if ctx.needs_input_grad[3]:
            u = (h.view(-1, e, r) * sg).view(-1, e * r)  # (N, E r), as in the forward
            d_b = (grad_y.t() @ u).view(-1, e, r).permute(1, 0, 2).contiguous()  # (E, out, r)
        return dx, d_gates, d_a, d_b, None
