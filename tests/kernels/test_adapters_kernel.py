"""The fused bottleneck adapter and the fused scale-shift linear against their plain-torch references.

    bottleneck:          y = base + s (relu(x Dᵀ + b_D) Uᵀ + b_U)   (serial: base = x, s = 1; parallel: s = 4)
    scale_shift_linear:  y = ((x ⊙ l_in) Wᵀ + b) ⊙ c + β            (IA3: l_in or c; SSF: c and β); W, b frozen
"""

from __future__ import annotations

import itertools

import pytest
import torch
from kernel_cases import BF16_TOL, DEVICES, F32_TOL, rel_err
from torch import nn

from autopeft.kernels import FusedBottleneck, ScaleShiftLinear, fused_kernels, reference
from autopeft.peft.modules import SSF, AdaptedLinear, IA3Scale, ParallelAdapter, SerialAdapter


def _rand(g, *shape, dtype=torch.float32, device="cpu", grad=True, scale=1.0):
    return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype).requires_grad_(grad)


def grads(fn, inputs, seed=3):
    """Output and the gradients of every input that requires one, under a fixed random upstream gradient."""
    y = fn(*inputs)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(y)
    wanted = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    return (y, *torch.autograd.grad(y, wanted, dy))


def bottleneck_case(lead, c, m, out, serial, seed, dtype=torch.float32, device="cpu"):
    """x (lead..., C), base (lead..., out) or None, D (m, C), b_D, U (out, m), b_U (U non-zero: the branch shows)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape, **kw: _rand(g, *shape, dtype=dtype, device=device, **kw)
    x = r(*lead, c)
    base = None if serial else r(*lead, out)
    return x, base, r(m, c, scale=c**-0.5), r(m), r(out, m, scale=m**-0.5), r(out), 1.0 if serial else 4.0


# (lead, C, bottleneck size m, out, serial): sizes 1-64, serial (out = C) and parallel (out may differ)
BOTTLENECK_CASES = [((5,), 12, 1, 12, True), ((2, 7), 32, 8, 32, True), ((3, 11), 40, 64, 40, True),
                    ((4, 6), 24, 16, 40, False), ((9,), 48, 3, 20, False), ((2, 16), 64, 64, 64, False)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("lead", "c", "m", "out", "serial"), BOTTLENECK_CASES)
def test_bottleneck_equals_reference_float32(lead, c, m, out, serial, device):
    case = bottleneck_case(lead, c, m, out, serial, seed=m + c, device=device)
    got, want = grads(FusedBottleneck.apply, case), grads(reference.bottleneck, case)
    assert len(got) == (6 if serial else 7)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        assert rel_err(g, w) <= F32_TOL


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("serial", [True, False])
def test_bottleneck_bfloat16_within_tolerance(serial, device):
    case = bottleneck_case((3, 10), 32, 8, 32, serial, seed=5, dtype=torch.bfloat16, device=device)
    up = [t if not isinstance(t, torch.Tensor) else t.detach().float().requires_grad_() for t in case]
    for g, w in zip(grads(FusedBottleneck.apply, case), grads(reference.bottleneck, up), strict=True):
        assert g.dtype == torch.bfloat16
        assert rel_err(g, w) <= BF16_TOL


@pytest.mark.parametrize("serial", [True, False])
def test_bottleneck_gradcheck_float64(serial):
    case = bottleneck_case((2, 3), 6, 3, 6 if serial else 5, serial, seed=1, dtype=torch.float64)
    tensors = [t for t in case if isinstance(t, torch.Tensor)]
    fn = (lambda x, *w: FusedBottleneck.apply(x, None, *w, case[-1])) if serial else \
         (lambda x, base, *w: FusedBottleneck.apply(x, base, *w, case[-1]))
    assert torch.autograd.gradcheck(fn, tensors)


def test_bottleneck_saves_only_x_and_the_activation():
    """Kept for the backward: x (N, C) and [relu(D xᵀ + b); 1] (m + 1, N), besides the weights -- no (N, m)
    pre-activation and no (N, out) branch output."""
    x, base, dw, db, uw, ub, s = bottleneck_case((4, 6), 20, 5, 30, False, seed=2)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        FusedBottleneck.apply(x, base, dw, db, uw, ub, s)
    weights = {dw.data_ptr(), uw.data_ptr()}
    assert sorted(tuple(t.shape) for t in saved if t.data_ptr() not in weights) == [(6, 24), (24, 20)]


def scale_shift_case(lead, d_in, d_out, bias, vectors, seed, dtype=torch.float32, device="cpu"):
    """x, frozen W and b, and the chosen trainable vectors among (in_scale, out_scale, shift) (others None)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape, **kw: _rand(g, *shape, dtype=dtype, device=device, **kw)
    x = r(*lead, d_in)
    w, b = r(d_out, d_in, grad=False, scale=d_in**-0.5), (r(d_out, grad=False) if bias else None)
    in_scale, out_scale, shift = (r(n) if on else None for n, on in zip((d_in, d_out, d_out), vectors, strict=True))
    return x, w, b, in_scale, out_scale, shift


# every non-empty subset of (in_scale, out_scale, shift), with and without bias, random shapes
VECTOR_SETS = [v for v in itertools.product([False, True], repeat=3) if any(v)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("vectors", VECTOR_SETS, ids=lambda v: "+".join(n for n, on in zip(("in", "out", "shift"), v) if on))
def test_scale_shift_linear_equals_reference_float32(vectors, bias, device):
    case = scale_shift_case((3, 7), 24, 40, bias, vectors, seed=sum(vectors) + bias, device=device)
    got, want = grads(ScaleShiftLinear.apply, case), grads(reference.scale_shift_linear, case)
    assert len(got) == 2 + sum(vectors)  # y, dx and one gradient per vector
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        assert rel_err(g, w) <= F32_TOL


@pytest.mark.parametrize("device", DEVICES)
def test_scale_shift_linear_bfloat16_within_tolerance(device):
    case = scale_shift_case((4, 5), 32, 16, True, (True, True, True), seed=7, dtype=torch.bfloat16, device=device)
    up = [None if t is None else t.detach().float().requires_grad_(t.requires_grad) for t in case]
    for g, w in zip(grads(ScaleShiftLinear.apply, case), grads(reference.scale_shift_linear, up), strict=True):
        assert g.dtype == torch.bfloat16
        assert rel_err(g, w) <= BF16_TOL


def test_scale_shift_linear_gradcheck_float64():
    x, w, b, l_in, c, beta = scale_shift_case((2, 3), 5, 4, True, (True, True, True), seed=0, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *t: ScaleShiftLinear.apply(t[0], w, b, *t[1:]), (x, l_in, c, beta))


def test_scale_shift_linear_input_without_grad():
    x, w, b, l_in, c, beta = scale_shift_case((6,), 8, 5, True, (True, True, False), seed=4)
    x.requires_grad_(False)
    got = grads(ScaleShiftLinear.apply, (x, w, b, l_in, c, beta))
    want = grads(reference.scale_shift_linear, (x, w, b, l_in, c, beta))
    assert len(got) == 3  # y, d l_in, d c
    for g, r in zip(got, want, strict=True):
        assert rel_err(g, r) <= F32_TOL


def _site(seed=8, d_in=12, d_out=10):
    torch.manual_seed(seed)
    return AdaptedLinear(nn.Linear(d_in, d_out).requires_grad_(False))


def _perturb(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)  # away from the identity start
    return module


def _fused_vs_unfused(lin, x, fused_name):
    y = lin(x)
    assert fused_name in _graph_names(y.grad_fn)
    trained = [x, *(p for p in lin.parameters() if p.requires_grad)]
    got = torch.autograd.grad(y.pow(2).sum(), trained, allow_unused=True)
    with fused_kernels(False):
        y_ref = lin(x)
        assert fused_name not in _graph_names(y_ref.grad_fn)
        want = torch.autograd.grad(y_ref.pow(2).sum(), trained, allow_unused=True)
    assert rel_err(y, y_ref) <= F32_TOL
    for g, w in zip(got, want, strict=True):
        assert (g is None) == (w is None)
        if g is not None:
            assert rel_err(g, w) <= F32_TOL


def _graph_names(fn, depth=4):
    if fn is None or depth == 0:
        return set()
    return {fn.name()} | set().union(*(_graph_names(f, depth - 1) for f, _ in fn.next_functions))


@pytest.mark.parametrize("slots", [("ia3_out",), ("ia3_in",), ("ssf",), ("ia3_out", "ssf"), ("ia3_in", "ssf")])
def test_adapted_linear_runs_ia3_and_ssf_in_one_kernel(slots):
    lin = _site()
    for slot in slots:
        features = lin.in_features if slot == "ia3_in" else lin.out_features
        setattr(lin, slot, _perturb(SSF(features) if slot == "ssf" else IA3Scale(features), seed=len(slot)))
    x = torch.randn(3, 4, 12, generator=torch.Generator().manual_seed(9), requires_grad=True)
    _fused_vs_unfused(lin, x, "ScaleShiftLinearBackward")


def test_adapted_linear_runs_serial_and_parallel_adapters_in_one_kernel():
    x = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(10), requires_grad=True)
    serial = _site()
    serial.serial = _perturb(SerialAdapter(10, 4, torch.Generator().manual_seed(11)), seed=12)
    _fused_vs_unfused(serial, x, "FusedBottleneckBackward")
    exit_ = _site()
    exit_.parallel = _perturb(ParallelAdapter(12, 4, 10, torch.Generator().manual_seed(13)), seed=14)
    with fused_kernels(True):
        exit_.parallel.stash.x = x
        y = exit_(x)
    assert "FusedBottleneckBackward" in _graph_names(y.grad_fn)
    with fused_kernels(False):
        exit_.parallel.stash.x = x
        y_ref = exit_(x)
    assert rel_err(y, y_ref) <= F32_TOL


@pytest.mark.skipif("cuda" not in DEVICES, reason="the CUDA dispatch needs a CUDA device")
def test_cuda_runs_adapters_and_scale_shift_as_plain_ops():
    """On CUDA the plain ops measured faster than these nodes (docs/benchmarks.md, GPU check): the dispatcher
    skips them there, with the same result."""
    from autopeft.kernels import bottleneck, scale_shift_linear

    case = bottleneck_case((2, 7), 32, 8, 32, True, seed=40, device="cuda")
    assert "FusedBottleneckBackward" not in _graph_names(bottleneck(*case).grad_fn)
    g = torch.Generator().manual_seed(41)
    x, w, b, scale = (_rand(g, *shape, device="cuda", grad=grad) for shape, grad in
                      (((3, 16), True), ((8, 16), False), ((8,), False), ((8,), True)))
    y = scale_shift_linear(x, w, b, None, scale, None)
    assert "ScaleShiftLinearBackward" not in _graph_names(y.grad_fn)
    assert rel_err(y, reference.scale_shift_linear(x, w, b, None, scale, None)) <= F32_TOL
