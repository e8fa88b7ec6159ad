"""The fused LoRA linear (BLAS path, and the dispatcher in front of it) against its plain-torch reference.

    y = x Wᵀ + b + s (x Aᵀ) Bᵀ      gradients to x, A and B; W and b frozen

Tolerances and the random cases are in ``tests/kernel_cases.py`` (shared with the Triton tests).
"""

from __future__ import annotations

import pytest
import torch
from kernel_cases import BF16_TOL, DEVICES, F32_TOL, make_case, rel_err, run, upcast
from torch import nn

from autopeft.kernels import FusedLoRA, fused_kernels, lora_linear, reference
from autopeft.peft.modules import AdaptedLinear, DoRA, IA3Scale, LoRA

# random shapes, ranks 1-64, with and without bias (seeded: the same cases every run)
CASES = [((5,), 17, 9, 1, True), ((2, 7), 32, 48, 4, False), ((3, 11), 40, 24, 8, True), ((1, 33), 64, 64, 16, False),
         ((4, 9), 50, 70, 33, True), ((2, 16), 96, 80, 64, False), ((2, 16), 96, 80, 64, True)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("lead", "d_in", "d_out", "rank", "bias"), CASES)
def test_fused_equals_reference_float32(lead, d_in, d_out, rank, bias, device):
    case = make_case(lead, d_in, d_out, rank, bias, seed=rank, device=device)
    for got, want in zip(run(FusedLoRA.apply, *case), run(reference.lora_linear, *case), strict=True):
        assert got.shape == want.shape
        assert rel_err(got, want) <= F32_TOL


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("lead", "d_in", "d_out", "rank", "bias"), CASES[1::2])
def test_fused_bfloat16_within_tolerance(lead, d_in, d_out, rank, bias, device):
    case = make_case(lead, d_in, d_out, rank, bias, seed=rank, dtype=torch.bfloat16, device=device)
    got = run(FusedLoRA.apply, *case)
    want = run(reference.lora_linear, *upcast(*case[:5]), case[5])
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.bfloat16
        assert rel_err(g, w) <= BF16_TOL


def test_fused_gradcheck_float64():
    x, w, b, a, bb, s = make_case((2, 3), 6, 5, 2, True, seed=0, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x, a, bb: FusedLoRA.apply(x, w, b, a, bb, s), (x, a, bb))


def test_input_without_grad_gives_only_parameter_gradients():
    x, w, b, a, bb, s = make_case((3, 4), 12, 10, 3, True, seed=1)
    x.requires_grad_(False)
    got, want = run(FusedLoRA.apply, x, w, b, a, bb, s), run(reference.lora_linear, x, w, b, a, bb, s)
    assert len(got) == 3  # y, dA, dB
    for g, r in zip(got, want, strict=True):
        assert rel_err(g, r) <= F32_TOL


def test_saves_only_x_and_x_a_for_backward():
    """Activations kept for the backward: x (N, in) and (x Aᵀ)ᵀ (r, N); besides them only the (frozen and adapter)
    weights themselves -- no (N, out) tensor and no W + s B A."""
    x, w, b, a, bb, s = make_case((4, 6), 20, 30, 5, True, seed=2)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        FusedLoRA.apply(x, w, b, a, bb, s)
    activations = sorted(tuple(t.shape) for t in saved if not any(t.data_ptr() == p.data_ptr() for p in (w, a, bb)))
    assert activations == [(5, 24), (24, 20)]
    assert saved[0].data_ptr() == x.data_ptr()  # x itself, not a copy


def test_dispatcher_falls_back_to_the_reference_when_the_fused_path_does_not_apply():
    x, w, b, a, bb, s = make_case((2, 5), 8, 6, 2, True, seed=3)
    assert lora_linear(x, w, b, a, bb, s).grad_fn.name() == "FusedLoRABackward"
    with fused_kernels(False):
        assert lora_linear(x, w, b, a, bb, s).grad_fn.name() != "FusedLoRABackward"
    assert lora_linear(x, w, b, a, bb, s).grad_fn.name() == "FusedLoRABackward"  # setting restored
    # a trainable base weight gets its gradient (the fused path gives none)
    w.requires_grad_(True)
    dw = torch.autograd.grad(lora_linear(x, w, b, a, bb, s).sum(), w)[0]
    torch.testing.assert_close(dw, torch.autograd.grad(reference.lora_linear(x, w, b, a, bb, s).sum(), w)[0])
    w.requires_grad_(False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lora_linear(x, w, b, a, bb, s).grad_fn.name() != "FusedLoRABackward"


def _adapted(module_cls, seed=4):
    torch.manual_seed(seed)
    base = nn.Linear(12, 10).requires_grad_(False)
    lin = AdaptedLinear(base)
    lin.lora = LoRA(12, 10, 3, 2.0) if module_cls is LoRA else DoRA(base, 3, 2.0)
    with torch.no_grad():
        lin.lora.lora_B.normal_()
    return lin


def test_adapted_linear_fuses_plain_lora_only_when_nothing_changes_its_input():
    x = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(5), requires_grad=True)
    lin = _adapted(LoRA)
    y = lin(x)
    assert y.grad_fn.name() == "FusedLoRABackward"
    with fused_kernels(False):
        assert rel_err(y, lin(x)) <= F32_TOL
    assert _adapted(DoRA)(x).grad_fn.name() != "FusedLoRABackward"
    lin.ia3_in = IA3Scale(12)  # W sees a rescaled input, the LoRA branch the raw one: not one fused product
    assert lin(x).grad_fn.name() != "FusedLoRABackward"
