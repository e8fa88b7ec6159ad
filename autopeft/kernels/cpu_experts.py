"""All LoRA experts of a layer in one autograd node: two matmuls over every expert at once, gates folded in.

:class:`FusedExperts` takes the gates from the caller (any routing rule):

    h  = x A_catᵀ                      (N, E r)    A_cat = A viewed as (E r, in): expert e owns columns e r .. e r + r
    u  = h ⊙ (s g)                     (N, E r)    each expert's r columns times its gate (0 off the top-k) and s
    y  = u B_catᵀ                      (N, out)    B_cat (out, E r) = [B_0 | B_1 | ...]

    du = dy B_cat;  dg = Σ_r du ⊙ h (times s);  dh = du ⊙ (s g);  dx = dh A_cat;  dA = dhᵀ x;  dB_cat = dyᵀ u

Saved for the backward: x, h and the gates (N, E); u is rebuilt from them (N x E r is small). Folding s into the
gates removes the two (N, out) scaling passes of the autograd version; the gates' gradient flows back to the router.

:class:`FusedRoutedExperts` also does the top-k softmax routing, with the router's weight R (E, in) stacked under
A_cat so that the router costs one more block of rows in the same GEMMs instead of a GEMM of its own each way:

    [hᵀ; logitsᵀ] = [A_cat; R] xᵀ      (E r + E, N)   one pass over x for every expert and the router
    p = softmax(logits), top-k, g = renormalised top-k of p (0 elsewhere)
    y = (hᵀ ⊙ s gᵀ)ᵀ B_catᵀ           (N, out)
    backward: dhᵀ and dlogitsᵀ (through the renormalisation and the softmax, plus the gradient of p from the
              load-balancing loss) fill one (E r + E, N) buffer G;  dx = Gᵀ [A_cat; R],  [dA; dR] = G x

The activations are rank-major (E r, N) for the reason given in :mod:`.cpu_lora`. Computing every expert for every
token costs E / k times the routed flops, but for the ranks and expert counts of the search spaces that dense
product is faster on CPU than gathering tokens by expert (docs/benchmarks.md): the gathers and scatters move as
many bytes as the wasted products cost.
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
            d_b = (u.t() @ grad_y).view(e, r, -1).transpose(1, 2).contiguous()  # (E, out, r), from (E r, out)
        return dx, d_gates, d_a, d_b, None


class FusedRoutedExperts(torch.autograd.Function):
    """``FusedRoutedExperts.apply(x, router_weight, lora_A, lora_B, scaling, top_k)`` -> ``(y, probs, top_i)``.

    x (N, in), router weight R (E, in), A (E, r, in), B (E, out, r); y (N, out) = s Σ_e g_e B_e A_e x with g the
    renormalised top-k of probs = softmax(R x) (float32, (N, E)); top_i (N, k) the chosen experts (no gradient).
    ``probs`` is differentiable, so a loss on it (the load-balancing loss) reaches R through the same node.
    """

    @staticmethod
    def forward(ctx, x, router_weight, lora_A, lora_B, scaling, top_k):
        (e, r, d_in), d_out = lora_A.shape, lora_B.shape[1]
        w_cat = torch.cat([lora_A.reshape(e * r, d_in), router_weight])  # (E r + E, in)
        z_t = torch.mm(w_cat, x.t())  # (E r + E, N): [hᵀ; logitsᵀ]
        soft_dtype = torch.promote_types(x.dtype, torch.float32)  # float32 as the module's route (float64 stays)
        # softmax over the experts in the (E, N) layout: over a last dimension of E = 8 it runs 20x slower
        probs = torch.softmax(z_t[e * r :].to(soft_dtype), dim=0).t().contiguous()  # (N, E)
        top_p, top_i = probs.topk(top_k, dim=-1)  # (N, k)
        top_g = top_p / top_p.sum(-1, keepdim=True)  # renormalised over the chosen k
        sg_t = torch.zeros_like(probs).scatter_(-1, top_i, top_g * scaling).t().to(x.dtype)  # (E, N): s g, 0 off top-k
        u_t = (z_t[: e * r].view(e, r, -1) * sg_t.unsqueeze(1)).view(e * r, -1)  # (E r, N)
        b_cat = lora_B.permute(1, 0, 2).reshape(d_out, e * r)  # (out, E r)
        y = torch.mm(u_t.t(), b_cat.t())  # (N, out)
        ctx.save_for_backward(x, w_cat, b_cat, z_t, sg_t, probs, top_i, top_g)
        ctx.scaling, ctx.shape = scaling, (e, r, d_in)
        ctx.mark_non_differentiable(top_i)
        return y, probs, top_i

    @staticmethod
    def backward(ctx, grad_y, grad_probs, _):
        x, w_cat, b_cat, z_t, sg_t, probs, top_i, top_g = ctx.saved_tensors
        (e, r, d_in), s = ctx.shape, ctx.scaling
        h_t = z_t[: e * r].view(e, r, -1)  # (E, r, N)
        g_full = torch.empty_like(z_t)  # (E r + E, N): [dhᵀ; dlogitsᵀ]
        d_b = None
        if grad_y is not None:
            du_t = torch.mm(b_cat.t(), grad_y.t()).view(e, r, -1)  # (E, r, N) = (dy B_cat)ᵀ
            torch.mul(du_t, sg_t.unsqueeze(1), out=g_full[: e * r].view(e, r, -1))  # dhᵀ = duᵀ ⊙ s gᵀ
            d_gates = (du_t * h_t).sum(1).t().to(probs.dtype) * s  # (N, E)
            if ctx.needs_input_grad[3]:
                u_t = (h_t * sg_t.unsqueeze(1)).view(e * r, -1)  # (E r, N), as in the forward
                d_b = torch.mm(u_t, grad_y).view(e, r, -1).transpose(1, 2).contiguous()  # (E, out, r)
        else:
            g_full[: e * r].zero_()
            d_gates = torch.zeros_like(probs)
        # through g = top_p / Σ top_p (top_p = probs at top_i), then the softmax
        d_top_g = d_gates.gather(-1, top_i)  # (N, k)
        top_sum = probs.gather(-1, top_i).sum(-1, keepdim=True)  # (N, 1)
        d_top_p = (d_top_g - (d_top_g * top_g).sum(-1, keepdim=True)) / top_sum  # (N, k)
        d_probs = torch.zeros_like(probs) if grad_probs is None else grad_probs.to(probs.dtype, copy=True)
        d_probs.scatter_add_(-1, top_i, d_top_p)  # (N, E)
        d_logits = probs * (d_probs - (d_probs * probs).sum(-1, keepdim=True))  # (N, E), softmax backward
        g_full[e * r :].copy_(d_logits.t())
        dx = torch.mm(g_full.t(), w_cat) if ctx.needs_input_grad[0] else None  # (N, in) = dh A_cat + dlogits R
        d_w = torch.mm(g_full, x) if ctx.needs_input_grad[1] or ctx.needs_input_grad[2] else None  # (E r + E, in)
        d_a = d_w[: e * r].view(e, r, d_in) if ctx.needs_input_grad[2] else None
        d_router = d_w[e * r :] if ctx.needs_input_grad[1] else None
        return dx, d_router, d_a, d_b, None, None
