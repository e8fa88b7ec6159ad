"""Readable plain-torch twins of the fused kernels: what every fused path must compute, forward and backward.

    lora_linear:   y = x Wᵀ + b + s (x Aᵀ) Bᵀ                         W (out, in), A (r, in), B (out, r)
    lora_experts:  y = s Σ_e g_e(x) (x A_eᵀ) B_eᵀ                       A (E, r, in), B (E, out, r), g (N, E)
    routed_lora_experts: the same with g = renormalised top-k of softmax(R x), R (E, in)
    bottleneck:    y = base + s (relu(x Dᵀ + b_D) Uᵀ + b_U)             serial adapter: base = x, s = 1
    scale_shift_linear: y = ((x ⊙ l_in) Wᵀ + b) ⊙ c + β                 IA3 (l_in, c) and SSF (c, β)

Autograd differentiates these; the tests compare the fused paths' outputs and gradients with them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lora_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_A: torch.Tensor,
                lora_B: torch.Tensor, scaling: float) -> torch.Tensor:
    """``x`` (..., in) -> (..., out): the frozen linear plus the scaled low-rank branch."""
    return F.linear(x, weight, bias) + scaling * F.linear(F.linear(x, lora_A), lora_B)


def lora_experts(x: torch.Tensor, gates: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor,
                 scaling: float) -> torch.Tensor:
    """``x`` (N, in), dense gates (N, E) -> (N, out): every expert on every token as two matmuls, gated."""
    e, r, _ = lora_A.shape
    h = F.linear(x, lora_A.reshape(e * r, -1))  # (N, E*r): A_e x for every expert at once
    h = (h.view(-1, e, r) * gates.unsqueeze(-1)).reshape(-1, e * r)  # (N, E*r), g_e A_e x
    b = lora_B.permute(1, 0, 2).reshape(-1, e * r)  # (out, E*r): [B_0 | B_1 | ... ]
    return F.linear(h, b) * scaling  # (N, out) = s sum_e g_e B_e A_e x


def routed_lora_experts(x: torch.Tensor, router_weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor,
                        scaling: float, top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x`` (N, in) -> (y (N, out), probs (N, E), top_i (N, k)): top-k softmax routing, then :func:`lora_experts`.

    The softmax runs in float32 (float64 for float64 inputs), as :meth:`LoRAExperts.route` does.
    """
    logits = F.linear(x, router_weight)  # (N, E)
    probs = F.softmax(logits.to(torch.promote_types(x.dtype, torch.float32)), dim=-1)  # (N, E)
    top_p, top_i = probs.topk(top_k, dim=-1)  # (N, k)
    gates = torch.zeros_like(probs).scatter(-1, top_i, top_p / top_p.sum(-1, keepdim=True))  # (N, E)
    return lora_experts(x, gates.to(x.dtype), lora_A, lora_B, scaling), probs, top_i


def lora_experts_loop(x: torch.Tensor, gates: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor,
                      scaling: float) -> torch.Tensor:
    """``x`` (N, in), dense gates (N, E) with zeros off each token's chosen experts -> (N, out).

    One expert at a time over the tokens routed to it (gate > 0): gather, two matmuls, weighted scatter-add.
    """
    y = x.new_zeros(x.shape[0], lora_B.shape[1])  # (N, out)
    for e in range(lora_A.shape[0]):
        idx = gates[:, e].nonzero().squeeze(-1)  # (n_e,) tokens routed to expert e
        if idx.numel() == 0:
            continue
        h = F.linear(x[idx], lora_A[e])  # (n_e, r)
        y = y.index_add(0, idx, F.linear(h, lora_B[e]) * gates[idx, e, None].to(x.dtype))  # (N, out)
    return y * scaling


def bottleneck(x: torch.Tensor, base: torch.Tensor | None, down_w: torch.Tensor, down_b: torch.Tensor,
               up_w: torch.Tensor, up_b: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` (..., C) -> (..., out): the adapter branch scaled and added to ``base`` (``x`` itself when None)."""
    branch = F.linear(torch.relu(F.linear(x, down_w, down_b)), up_w, up_b)  # (..., out)
    return (x if base is None else base) + scale * branch


def scale_shift_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       in_scale: torch.Tensor | None, out_scale: torch.Tensor | None,
                       shift: torch.Tensor | None) -> torch.Tensor:
    """``x`` (..., in) -> (..., out): a linear between per-feature input and output scales and an output shift."""
    y = F.linear(x if in_scale is None else x * in_scale, weight, bias)  # (..., out)
    if out_scale is not None:
        y = y * out_scale
    return y if shift is None else y + shift
