"""The Triton LoRA kernels against the plain-torch reference: on a CUDA GPU when there is one, otherwise on CPU
tensors under Triton's interpreter (``TRITON_INTERPRET=1``, set by tests/conftest.py before triton is first
imported; small shapes). Skipped when triton (the ``gpu`` extra) is not installed."""

from __future__ import annotations

import importlib
import os

import pytest
import torch
from kernel_cases import BF16_TOL, F32_TOL, make_case, rel_err, run, upcast

from autopeft.kernels import reference

triton = pytest.importorskip("triton", reason="triton is not installed (the 'gpu' extra); the Triton kernels are untested here")

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


@pytest.fixture(scope="module")
def triton_lora():
    if not CUDA and not triton.knobs.runtime.interpret:
        pytest.skip("no CUDA GPU, and triton was imported without TRITON_INTERPRET=1 (tests/conftest.py sets it)")
    return importlib.import_module("autopeft.kernels.triton_lora")


# random shapes that do not divide the 64 x 64 x 32 tiles; ranks 1-64, with and without bias
CASES = [((5,), 17, 9, 1, True), ((2, 7), 40, 24, 8, False), ((3, 11), 33, 70, 33, True), ((2, 16), 96, 80, 64, False)]


@pytest.mark.parametrize(("lead", "d_in", "d_out", "rank", "bias"), CASES)
def test_triton_equals_reference_float32(triton_lora, lead, d_in, d_out, rank, bias):
    case = make_case(lead, d_in, d_out, rank, bias, seed=rank, device=DEVICE)
    for got, want in zip(run(triton_lora.TritonLoRA.apply, *case), run(reference.lora_linear, *case), strict=True):
        assert got.shape == want.shape
        assert rel_err(got, want) <= F32_TOL


@pytest.mark.parametrize(("lead", "d_in", "d_out", "rank", "bias"), CASES[1:3])
def test_triton_bfloat16_within_tolerance(triton_lora, lead, d_in, d_out, rank, bias):
    case = make_case(lead, d_in, d_out, rank, bias, seed=rank, dtype=torch.bfloat16, device=DEVICE)
    got = run(triton_lora.TritonLoRA.apply, *case)
    want = run(reference.lora_linear, *upcast(*case[:5]), case[5])
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.bfloat16
        assert rel_err(g, w) <= BF16_TOL


def test_triton_strided_operands(triton_lora):
    """The kernels read any strides: a transposed (non-contiguous) weight and input give the same result."""
    x, w, b, a, bb, s = make_case((6,), 24, 20, 4, True, seed=5, device=DEVICE)
    wt = w.t().contiguous().t()  # same values, column-major
    assert not wt.is_contiguous()
    torch.testing.assert_close(triton_lora.fused(x.detach(), wt, x.detach() @ a.detach().t(), bb.detach(), s, b),
                               reference.lora_linear(x, w, b, a, bb, s).detach(), rtol=F32_TOL, atol=F32_TOL)


@pytest.mark.skipif(not CUDA, reason="the dispatcher picks Triton for CUDA tensors only")
def test_dispatcher_uses_triton_on_cuda_when_asked(monkeypatch):
    from autopeft.kernels import TRITON_ENV, lora_linear, triton_available

    assert triton_available()
    x, w, b, a, bb, s = make_case((2, 5), 64, 64, 8, True, seed=6, device="cuda")
    # by default CUDA runs the plain ops (measured faster than these kernels on the proxy-sized models)
    monkeypatch.delenv(TRITON_ENV, raising=False)
    assert lora_linear(x, w, b, a, bb, s).grad_fn.name() not in ("TritonLoRABackward", "FusedLoRABackward")
    monkeypatch.setenv(TRITON_ENV, "1")
    assert lora_linear(x, w, b, a, bb, s).grad_fn.name() == "TritonLoRABackward"
    assert os.environ.get("TRITON_INTERPRET") != "1"


def test_triton_is_asked_for_by_the_environment_and_only_on_cuda(monkeypatch):
    from autopeft.kernels import TRITON_ENV, lora_linear, triton_requested

    monkeypatch.delenv(TRITON_ENV, raising=False)
    assert not triton_requested()
    for value, want in (("1", True), ("0", False), ("yes", False)):
        monkeypatch.setenv(TRITON_ENV, value)
        assert triton_requested() is want
    monkeypatch.setenv(TRITON_ENV, "1")  # CPU tensors keep the fused BLAS node whatever the setting
    x, w, b, a, bb, s = make_case((2, 5), 16, 12, 4, True, seed=6)
    assert lora_linear(x, w, b, a, bb, s).grad_fn.name() == "FusedLoRABackward"
