"""The fused LoRA-experts node against its plain-torch references (dense autograd, and a loop over experts).

    y = s Σ_e g_e (x A_eᵀ) B_eᵀ      gradients to x, the gates, A and B
"""

from __future__ import annotations

import pytest
import torch
from kernel_cases import BF16_TOL, DEVICES, F32_TOL, rel_err

from autopeft.kernels import FusedExperts, FusedRoutedExperts, fused_kernels, lora_experts, reference


def make_case(n, d_in, d_out, rank, experts, top_k, seed, dtype=torch.float32, device="cpu"):
    """x (N, in), sparse renormalised gates (N, E) with top_k non-zeros per row, A (E, r, in), B (E, out, r)."""
    g = torch.Generator().manual_seed(seed)
    t = lambda *shape: torch.randn(*shape, generator=g).to(device=device, dtype=dtype)
    p = torch.rand(n, experts, generator=g)
    top_p, top_i = p.topk(top_k, dim=-1)
    gates = torch.zeros_like(p).scatter(-1, top_i, top_p / top_p.sum(-1, keepdim=True))
    x = t(n, d_in).requires_grad_()
    a = (t(experts, rank, d_in) / d_in**0.5).requires_grad_()
    b = t(experts, d_out, rank).requires_grad_()
    return x, gates.to(device=device, dtype=dtype).requires_grad_(), a, b, 0.5 + rank**-0.5


def run(fn, x, gates, a, b, s, seed=7):
    y = fn(x, gates, a, b, s)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(y)
    return (y, *torch.autograd.grad(y, (x, gates, a, b), dy))


# (tokens, in, out, rank, experts, top_k): ranks 1-64, 1 to 8 experts
CASES = [(7, 12, 10, 1, 1, 1), (20, 16, 24, 4, 4, 2), (33, 40, 24, 8, 8, 2), (16, 24, 40, 64, 3, 3), (25, 32, 32, 16, 8, 1)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ref", [reference.lora_experts, reference.lora_experts_loop], ids=["dense", "loop"])
@pytest.mark.parametrize(("n", "d_in", "d_out", "rank", "experts", "top_k"), CASES)
def test_fused_experts_equal_references_float32(n, d_in, d_out, rank, experts, top_k, ref, device):
    case = make_case(n, d_in, d_out, rank, experts, top_k, seed=rank + experts, device=device)
    got, want = run(FusedExperts.apply, *case), run(ref, *case)
    for name, g, w in zip(("y", "dx", "dgates", "dA", "dB"), got, want, strict=True):
        assert g.shape == w.shape, name
        if ref is reference.lora_experts_loop and name == "dgates":
            # the loop reads gates only where they are > 0: elsewhere its gradient is 0, the dense one's is not
            chosen = case[1].detach() > 0
            g, w = g[chosen], w[chosen]
        assert rel_err(g, w) <= F32_TOL, name


@pytest.mark.parametrize("device", DEVICES)
def test_fused_experts_bfloat16_within_tolerance(device):
    case = make_case(33, 40, 24, 8, 8, 2, seed=3, dtype=torch.bfloat16, device=device)
    got = run(FusedExperts.apply, *case)
    up = [t.detach().float().requires_grad_() for t in case[:4]]
    want = run(reference.lora_experts, *up, case[4])
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.bfloat16
        assert rel_err(g, w) <= BF16_TOL


def test_fused_experts_gradcheck_float64():
    x, gates, a, b, s = make_case(6, 5, 4, 2, 3, 2, seed=0, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *t: FusedExperts.apply(*t, s), (x, gates, a, b))


def test_dispatcher_and_module_use_the_fused_node():
    from autopeft.peft.modules import LoRAExperts

    x, gates, a, b, s = make_case(9, 12, 10, 3, 4, 2, seed=1)
    assert lora_experts(x, gates, a, b, s).grad_fn.name() == "FusedExpertsBackward"
    with fused_kernels(False):
        assert lora_experts(x, gates, a, b, s).grad_fn.name() != "FusedExpertsBackward"
    module = LoRAExperts(12, 10, 3, 4, 2, s, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        module.lora_B.normal_(generator=torch.Generator().manual_seed(3))
    y = module(x.view(3, 3, 12))
    with fused_kernels(False):
        torch.testing.assert_close(y, module(x.view(3, 3, 12)), rtol=F32_TOL, atol=1e-6)
    # the router learns through the gates of the fused node (and through the load-balancing loss)
    router_grad = torch.autograd.grad(y.pow(2).sum(), module.router.weight)[0]
    assert router_grad.abs().sum() > 0


def make_routed_case(n, d_in, d_out, rank, experts, seed, dtype=torch.float32, device="cpu"):
    """x (N, in), router weight R (E, in), A (E, r, in), B (E, out, r), all trainable."""
    g = torch.Generator().manual_seed(seed)
    t = lambda *shape: torch.randn(*shape, generator=g).to(device=device, dtype=dtype).requires_grad_()
    with torch.no_grad():
        x, router, a, b = t(n, d_in), t(experts, d_in), t(experts, rank, d_in), t(experts, d_out, rank)
        a /= d_in**0.5
    return x, router, a, b, 0.5 + rank**-0.5


def run_routed(fn, x, router, a, b, s, top_k, seed=11, probs_grad=True):
    """Outputs and the gradients of <y, dy> + <probs, dp> (dp: as from a loss on the router's probabilities)."""
    y, probs, top_i = fn(x, router, a, b, s, top_k)
    g = torch.Generator().manual_seed(seed)
    dy = torch.randn(y.shape, generator=g).to(y)
    outputs, grads = [y], [dy]
    if probs_grad:
        outputs.append(probs)
        grads.append(torch.randn(probs.shape, generator=g).to(probs))
    return (y, probs, top_i, *torch.autograd.grad(outputs, (x, router, a, b), grads))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("probs_grad", [True, False], ids=["with routing loss", "output only"])
@pytest.mark.parametrize(("n", "d_in", "d_out", "rank", "experts", "top_k"), CASES)
def test_routed_experts_equal_reference_float32(n, d_in, d_out, rank, experts, top_k, probs_grad, device):
    case = make_routed_case(n, d_in, d_out, rank, experts, seed=rank + experts, device=device)
    got = run_routed(FusedRoutedExperts.apply, *case, top_k, probs_grad=probs_grad)
    want = run_routed(reference.routed_lora_experts, *case, top_k, probs_grad=probs_grad)
    assert torch.equal(got[2], want[2])  # the same experts chosen
    for name, g, w in zip(("y", "probs", "top_i", "dx", "drouter", "dA", "dB"), got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype, name
        if name == "drouter" and top_k == 1 and not probs_grad:  # a renormalised top-1 gate is always 1:
            assert g.abs().max() <= 1e-5 and w.abs().max() <= 1e-5  # no gradient, up to the reference's rounding
        elif name != "top_i":
            assert rel_err(g, w) <= F32_TOL, name


@pytest.mark.parametrize("device", DEVICES)
def test_routed_experts_bfloat16_within_tolerance(device):
    case = make_routed_case(33, 40, 24, 8, 8, seed=4, dtype=torch.bfloat16, device=device)
    got = run_routed(FusedRoutedExperts.apply, *case, 2)
    up = [t.detach().float().requires_grad_() for t in case[:4]]
    want = run_routed(reference.routed_lora_experts, *up, case[4], 2)
    chosen_same = (got[2].sort(-1).values == want[2].sort(-1).values).all(-1)  # bf16 logits may flip near-ties
    assert chosen_same.float().mean() > 0.9
    rows = chosen_same.nonzero().squeeze(-1)
    assert rel_err(got[0][rows], want[0][rows]) <= BF16_TOL
    assert rel_err(got[1], want[1]) <= BF16_TOL
    for g in got[3:]:
        assert g.dtype == torch.bfloat16 and torch.isfinite(g).all()


def test_routed_experts_gradcheck_float64():
    x, router, a, b, s = make_routed_case(6, 5, 4, 2, 3, seed=0, dtype=torch.float64)
    fn = lambda *t: FusedRoutedExperts.apply(*t, s, 2)[:2]  # y and probs; top_i has no gradient
    assert torch.autograd.gradcheck(fn, (x, router, a, b))


def test_module_routes_inside_the_fused_node_and_dynmole_outside():
    from autopeft.peft.modules import DynMoLEExperts, LoRAExperts

    x = torch.randn(3, 5, 12, generator=torch.Generator().manual_seed(5))
    for cls, fused_name in ((LoRAExperts, "FusedRoutedExpertsBackward"), (DynMoLEExperts, "FusedExpertsBackward")):
        module = cls(12, 10, 3, 4, 2, 1.5, generator=torch.Generator().manual_seed(6))
        with torch.no_grad():
            module.lora_B.normal_(generator=torch.Generator().manual_seed(7))
        y = module(x)
        assert y.grad_fn.next_functions[0][0].name() == fused_name
        loss = y.pow(2).sum() + module.aux_loss
        got = torch.autograd.grad(loss, list(module.parameters()))
        with fused_kernels(False):
            y_ref = module(x)
            want = torch.autograd.grad(y_ref.pow(2).sum() + module.aux_loss, list(module.parameters()))
        torch.testing.assert_close(y, y_ref, rtol=F32_TOL, atol=1e-6)
        for g, w in zip(got, want, strict=True):
            assert rel_err(g, w) <= F32_TOL
