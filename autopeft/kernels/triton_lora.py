"""Fused LoRA linear as Triton kernels (the GPU path; imported lazily, ``triton`` is the ``gpu`` extra).

Two kernels, both stride-generic so that transposed views need no copies:

    _low_rank:  out (M, R) = alpha · X (M, K) @ Matᵀ,   Mat (R, K), R small (the rank, padded to a tile)
    _fused:     Y (M, N)   = X (M, K) @ Wᵀ + s · H (M, R) @ Bᵀ [+ bias],   W (N, K), B (N, R)

The fused kernel adds the low-rank product and the bias in its epilogue, so ``y`` is written once. Autograd
(:class:`TritonLoRA`) uses them for both passes, with x (N, in), h = x Aᵀ (N, r) saved:

    forward:   h  = _low_rank(x, A)                    y  = _fused(x, W, h, B, s, b)
    backward:  dh = _low_rank(dy, Bᵀ, alpha=s)         dx = _fused(dy, Wᵀ, dh, Aᵀ, 1)     (dy W + dh A)
               dAᵀ = _low_rank(xᵀ, dhᵀ)                dB = _low_rank(dyᵀ, hᵀ, alpha=s)

Accumulation is float32; float32 inputs use IEEE products (no TF32) so they match the plain-torch reference, bf16
and fp16 inputs use the tensor cores. ``TRITON_INTERPRET=1`` runs the same kernels on CPU tensors (tests).
The reductions over tokens (dA, dB) run one program per output row block over all tokens (no split-K).

Triton's interpreter multiplies the raw bit patterns of bfloat16 operands in ``tl.dot`` (it stores bfloat16 as
uint16; triton-lang/triton#11584, "not supported yet"), so when ``TRITON_INTERPRET=1`` bfloat16 tiles are widened to
float32 before each dot. That changes no result: a product of two bfloat16 numbers is exact in float32, and the
GPU's bfloat16 dot accumulates in float32 as well; only the summation order can differ.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

BLOCK_M, BLOCK_N, BLOCK_K = 64, 64, 32


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, WIDEN: tl.constexpr):
    """a @ b with a float32 result; ``WIDEN`` casts the operands to float32 first (interpreter, bfloat16)."""
    if WIDEN:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=PRECISION, out_dtype=tl.float32)


@triton.jit
def _low_rank(x_ptr, m_ptr, out_ptr, M, K, R,
              s_xm, s_xk, s_mr, s_mk, s_om, s_or, alpha,
              PRECISION: tl.constexpr, WIDEN: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr, BR: tl.constexpr):
    """out (M, R) = alpha · x (M, K) @ mat (R, K)ᵀ; one program per BM rows, R <= BR."""
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rr = tl.arange(0, BR)
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BR), dtype=tl.float32)
    for k0 in range(0, K, BK):
        kk = k0 + rk
        xb = tl.load(x_ptr + rm[:, None] * s_xm + kk[None, :] * s_xk,
                     mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)  # (BM, BK)
        mb = tl.load(m_ptr + kk[:, None] * s_mk + rr[None, :] * s_mr,
                     mask=(kk[:, None] < K) & (rr[None, :] < R), other=0.0)  # (BK, BR) = matᵀ tile
        acc += _dot(xb, mb, PRECISION, WIDEN)
    acc = acc * alpha
    tl.store(out_ptr + rm[:, None] * s_om + rr[None, :] * s_or, acc.to(out_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & (rr[None, :] < R))


@triton.jit
def _fused(x_ptr, w_ptr, h_ptr, b_ptr, bias_ptr, y_ptr, M, N, K, R,
           s_xm, s_xk, s_wn, s_wk, s_hm, s_hr, s_bn, s_br, s_ym, s_yn, scale,
           HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, WIDEN: tl.constexpr,
           BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BR: tl.constexpr):
    """y (M, N) = x (M, K) @ w (N, K)ᵀ + scale · h (M, R) @ b (N, R)ᵀ [+ bias (N,)]; one program per (BM, BN) tile."""
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    rr = tl.arange(0, BR)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        kk = k0 + rk
        xb = tl.load(x_ptr + rm[:, None] * s_xm + kk[None, :] * s_xk,
                     mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)  # (BM, BK)
        wb = tl.load(w_ptr + kk[:, None] * s_wk + rn[None, :] * s_wn,
                     mask=(kk[:, None] < K) & (rn[None, :] < N), other=0.0)  # (BK, BN) = wᵀ tile
        acc += _dot(xb, wb, PRECISION, WIDEN)
    # epilogue: the low-rank term (K = R, one small dot) and the bias, before the single store of y
    hb = tl.load(h_ptr + rm[:, None] * s_hm + rr[None, :] * s_hr,
                 mask=(rm[:, None] < M) & (rr[None, :] < R), other=0.0)  # (BM, BR)
    bb = tl.load(b_ptr + rr[:, None] * s_br + rn[None, :] * s_bn,
                 mask=(rr[:, None] < R) & (rn[None, :] < N), other=0.0)  # (BR, BN) = bᵀ tile
    acc += scale * _dot(hb, bb, PRECISION, WIDEN)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rm[:, None] * s_ym + rn[None, :] * s_yn, acc.to(y_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


def _rank_tile(r: int) -> int:
    return max(16, triton.next_power_of_2(r))  # tl.dot needs every dimension >= 16


def _precision(t: torch.Tensor) -> dict:
    """Kernel flags for ``t``'s dtype: IEEE float32 products (no TF32); bfloat16 widened under the interpreter."""
    widen = t.dtype != torch.float32 and os.environ.get("TRITON_INTERPRET") == "1"
    return {"PRECISION": "ieee" if t.dtype == torch.float32 or widen else "tf32", "WIDEN": widen}


def low_rank(x: torch.Tensor, mat: torch.Tensor, alpha: float = 1.0, out: torch.Tensor | None = None) -> torch.Tensor:
    """``alpha · x @ matᵀ``: x (M, K), mat (R, K) -> (M, R); any strides (pass transposed views)."""
    (m, k), (r, _) = x.shape, mat.shape
    if out is None:
        out = torch.empty(m, r, device=x.device, dtype=x.dtype)
    _low_rank[(triton.cdiv(m, BLOCK_M),)](
        x, mat, out, m, k, r, x.stride(0), x.stride(1), mat.stride(0), mat.stride(1), out.stride(0), out.stride(1),
        float(alpha), **_precision(x), BM=BLOCK_M, BK=BLOCK_K, BR=_rank_tile(r))
    return out


def fused(x: torch.Tensor, w: torch.Tensor, h: torch.Tensor, b: torch.Tensor, scale: float,
          bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ wᵀ + scale · h @ bᵀ (+ bias)``: x (M, K), w (N, K), h (M, R), b (N, R) -> (M, N); any strides."""
    (m, k), (n, _), r = x.shape, w.shape, h.shape[1]
    y = torch.empty(m, n, device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(m, BLOCK_M), triton.cdiv(n, BLOCK_N))
    _fused[grid](
        x, w, h, b, bias if bias is not None else y, y, m, n, k, r,
        x.stride(0), x.stride(1), w.stride(0), w.stride(1), h.stride(0), h.stride(1), b.stride(0), b.stride(1),
        y.stride(0), y.stride(1), float(scale),
        HAS_BIAS=bias is not None, **_precision(x), BM=BLOCK_M, BN=BLOCK_N, BK=BLOCK_K, BR=_rank_tile(r))
    return y


class TritonLoRA(torch.autograd.Function):
    """``TritonLoRA.apply(x, weight, bias, lora_A, lora_B, scaling)``: ``x`` (..., in) -> (..., out)."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, lora_B, scaling):
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        h = low_rank(x2, lora_A)  # (N, r) = x Aᵀ
        y = fused(x2, weight, h, lora_B, scaling, bias)  # (N, out) = x Wᵀ + s h Bᵀ + b
        ctx.save_for_backward(x2, h, weight, lora_A, lora_B)
        ctx.scaling, ctx.lead = scaling, lead
        return y.view(*lead, -1)  # (..., out)

    @staticmethod
    def backward(ctx, grad_y):
        x2, h, weight, lora_A, lora_B = ctx.saved_tensors
        s = ctx.scaling
        g = grad_y.reshape(-1, grad_y.shape[-1])  # (N, out)
        dh = low_rank(g, lora_B.t(), alpha=s)  # (N, r) = s dy B
        dx = d_a = d_b = None
        if ctx.needs_input_grad[0]:
            dx = fused(g, weight.t(), dh, lora_A.t(), 1.0).view(*ctx.lead, -1)  # (..., in) = dy W + dh A
        if ctx.needs_input_grad[3]:
            d_a = torch.empty_like(lora_A)  # (r, in), filled through its transpose
            low_rank(x2.t(), dh.t(), out=d_a.t())  # dAᵀ (in, r) = xᵀ dh
        if ctx.needs_input_grad[4]:
            d_b = low_rank(g.t(), h.t(), alpha=s, out=torch.empty_like(lora_B))  # (out, r) = s dyᵀ h
        return dx, None, None, d_a, d_b, None
