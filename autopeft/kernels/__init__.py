"""Fused kernels for the PEFT layers, each next to its plain-torch twin in :mod:`autopeft.kernels.reference`.

    lora_linear(x, W, b, A, B, s) = x Wᵀ + b + s (x Aᵀ) Bᵀ

runs as one autograd node of fused BLAS calls on CPU (:mod:`.cpu_lora`). On CUDA it runs the plain ops (cuBLAS
through autograd) unless ``AUTOPEFT_TRITON=1`` asks for the Triton kernels (:mod:`.triton_lora`): on an H200 in
bf16 the Triton kernels were 1.22-1.36x slower than the plain ops over a whole step of the proxy-sized models
(docs/benchmarks.md, "GPU check").

    lora_experts(x, g, A, B, s) = s Σ_e g_e (x A_eᵀ) B_eᵀ

runs every expert of a layer as one autograd node of two matmuls (:mod:`.cpu_experts`, torch ops on any device);
``routed_lora_experts`` adds the top-k softmax router to that node (the router's weight rides the experts' GEMMs).
``bottleneck`` (serial and parallel adapters) and ``scale_shift_linear`` (IA3 and SSF on a frozen linear) are one
autograd node each (:mod:`.cpu_adapters`) on CPU; on CUDA they too run the plain ops, which measured faster there.
All fall back to the reference (autograd over plain ops) where the fused paths do not apply: a base weight or bias
that trains, mixed dtypes, or autocast. ``dropout`` draws its mask from 16-bit integers on CPU
(:mod:`.cpu_dropout`), a third of the cost of torch's float Bernoulli mask; :class:`Dropout` is an ``nn.Dropout``
that calls it. ``fused_kernels(False)`` turns the fused paths off (benchmarks compare both; a fused path suspected
of a bug can be ruled out). User guide: docs/kernels.md.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

import torch
from torch import nn

from autopeft.kernels import reference
from autopeft.kernels.cpu_adapters import FusedBottleneck, ScaleShiftLinear
from autopeft.kernels.cpu_dropout import FusedDropout
from autopeft.kernels.cpu_experts import FusedExperts, FusedRoutedExperts
from autopeft.kernels.cpu_lora import FusedLoRA

_enabled = True


@contextlib.contextmanager
def fused_kernels(enabled: bool) -> Iterator[None]:
    """Within the block, use (``True``) or bypass (``False``) the fused paths; restores the previous setting."""
    global _enabled
    before, _enabled = _enabled, enabled
    try:
        yield
    finally:
        _enabled = before


@functools.cache
def triton_available() -> bool:
    """Whether the Triton path can be imported (the ``gpu`` extra)."""
    try:
        import autopeft.kernels.triton_lora  # noqa: F401
    except ImportError:
        return False
    return True


TRITON_ENV = "AUTOPEFT_TRITON"


def triton_requested() -> bool:
    """Whether LoRA on CUDA should run the Triton kernels (``AUTOPEFT_TRITON=1``; off by default, see above)."""
    return os.environ.get(TRITON_ENV, "") == "1"


def _fusable(x: torch.Tensor, *others: torch.Tensor | None) -> bool:
    same_dtype = all(t.dtype == x.dtype for t in others if t is not None)
    return _enabled and same_dtype and not torch.is_autocast_enabled(x.device.type)


def lora_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_A: torch.Tensor,
                lora_B: torch.Tensor, scaling: float) -> torch.Tensor:
    """``x Wᵀ + b + s (x Aᵀ) Bᵀ``: x (..., in), W (out, in), b (out,) or None, A (r, in), B (out, r) -> (..., out).

    Gradients flow to x, A and B only; a trainable W or b sends the call to the reference path.
    """
    frozen = not weight.requires_grad and (bias is None or not bias.requires_grad)
    if not (frozen and _fusable(x, weight, bias, lora_A, lora_B)):
        return reference.lora_linear(x, weight, bias, lora_A, lora_B, scaling)
    if x.is_cuda:
        if not (triton_requested() and triton_available()):
            return reference.lora_linear(x, weight, bias, lora_A, lora_B, scaling)
        from autopeft.kernels.triton_lora import TritonLoRA

        return TritonLoRA.apply(x, weight, bias, lora_A, lora_B, scaling)
    return FusedLoRA.apply(x, weight, bias, lora_A, lora_B, scaling)


def lora_experts(x: torch.Tensor, gates: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor,
                 scaling: float) -> torch.Tensor:
    """``s Σ_e g_e (x A_eᵀ) B_eᵀ``: x (N, in), gates (N, E), A (E, r, in), B (E, out, r) -> (N, out).

    Gradients flow to x, the gates (hence the router), A and B.
    """
    if not _fusable(x, gates, lora_A, lora_B):
        return reference.lora_experts(x, gates, lora_A, lora_B, scaling)
    return FusedExperts.apply(x, gates, lora_A, lora_B, scaling)


def routed_lora_experts(x: torch.Tensor, router_weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor,
                        scaling: float, top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k softmax routing plus ``lora_experts``: x (N, in), R (E, in) -> (y (N, out), probs (N, E), top_i (N, k)).

    Gradients flow to x, R, A and B, from y and from any loss on probs (the load-balancing loss).
    """
    if not _fusable(x, router_weight, lora_A, lora_B):
        return reference.routed_lora_experts(x, router_weight, lora_A, lora_B, scaling, top_k)
    return FusedRoutedExperts.apply(x, router_weight, lora_A, lora_B, scaling, top_k)


def bottleneck(x: torch.Tensor, base: torch.Tensor | None, down_w: torch.Tensor, down_b: torch.Tensor,
               up_w: torch.Tensor, up_b: torch.Tensor, scale: float) -> torch.Tensor:
    """``base + s (relu(x Dᵀ + b_D) Uᵀ + b_U)``: x (..., C), base (..., out) or None for ``x`` (a serial adapter),
    D (m, C), U (out, m) -> (..., out). Gradients flow to x, base and the four adapter tensors."""
    if x.is_cuda or not _fusable(x, base, down_w, down_b, up_w, up_b):  # plain ops measured faster on CUDA
        return reference.bottleneck(x, base, down_w, down_b, up_w, up_b, scale)
    return FusedBottleneck.apply(x, base, down_w, down_b, up_w, up_b, scale)


def scale_shift_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       in_scale: torch.Tensor | None, out_scale: torch.Tensor | None,
                       shift: torch.Tensor | None) -> torch.Tensor:
    """``((x ⊙ l_in) Wᵀ + b) ⊙ c + β``: x (..., in), W (out, in), l_in (in,), c and β (out,), each vector optional.

    Gradients flow to x and the vectors; a trainable W or b sends the call to the reference path.
    """
    frozen = not weight.requires_grad and (bias is None or not bias.requires_grad)
    if x.is_cuda or not (frozen and _fusable(x, weight, bias, in_scale, out_scale, shift)):  # as bottleneck()
        return reference.scale_shift_linear(x, weight, bias, in_scale, out_scale, shift)
    return ScaleShiftLinear.apply(x, weight, bias, in_scale, out_scale, shift)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)``; on CPU with ``0 < p < 1`` the mask of :mod:`.cpu_dropout` (another random
    stream than torch's, ``p`` rounded to a multiple of 1/65536). CUDA keeps torch's fused dropout kernel."""
    if not (training and 0.0 < p < 1.0 and _enabled and x.device.type == "cpu" and x.is_floating_point()):
        return torch.nn.functional.dropout(x, p, training)
    return FusedDropout.apply(x, p)


class Dropout(nn.Dropout):
    """``nn.Dropout`` through :func:`dropout` (``inplace`` is not honoured: the fused path writes a new tensor)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


__all__ = ["Dropout", "FusedBottleneck", "FusedDropout", "FusedExperts", "FusedLoRA", "FusedRoutedExperts",
           "ScaleShiftLinear", "bottleneck", "dropout", "fused_kernels", "lora_experts", "lora_linear", "reference",
           "routed_lora_experts", "scale_shift_linear", "triton_available", "triton_requested"]
