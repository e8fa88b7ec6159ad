"""Random fused-kernel cases and tolerances shared by ``tests/kernels`` (CPU path and Triton path).

float32: within F32_TOL of the plain-torch reference, relative to the reference's largest magnitude.
bfloat16: within BF16_TOL of a float32 reference computed from the same bfloat16 values (bfloat16's unit roundoff
is 2^-8 ≈ 0.004 and every output is a sum of roundings; a wrong term or scale is off by O(1)).
"""

from __future__ import annotations

import torch

F32_TOL = 1e-5
BF16_TOL = 3e-2
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (b is the reference)."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def make_case(lead, d_in, d_out, rank, bias, seed, dtype=torch.float32, device="cpu"):
    """Random x (lead..., d_in), frozen W, b, trainable A, B (B non-zero so the branch shows)."""
    g = torch.Generator().manual_seed(seed)
    t = lambda *shape: torch.randn(*shape, generator=g).to(device=device, dtype=dtype)
    x = t(*lead, d_in).requires_grad_()
    w, b = t(d_out, d_in) / d_in**0.5, (t(d_out) if bias else None)
    a, bb = (t(rank, d_in) / d_in**0.5).requires_grad_(), t(d_out, rank).requires_grad_()
    return x, w, b, a, bb, 0.5 + rank**-0.5


def run(fn, x, w, b, a, bb, s, seed=99):
    """Output and gradients (x, A, B) of ``fn`` under a fixed random upstream gradient."""
    y = fn(x, w, b, a, bb, s)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(y)
    wanted = [t for t in (x, a, bb) if t.requires_grad]
    return (y, *torch.autograd.grad(y, wanted, dy))


def upcast(*ts):
    return [None if t is None else t.detach().float().requires_grad_(t.requires_grad) for t in ts]
