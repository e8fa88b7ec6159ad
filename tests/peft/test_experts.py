"""LoRA experts: batched routing equals a per-expert loop, top-k is respected, the load-balancing loss."""

from __future__ import annotations

import pytest
import torch

from autopeft.peft import apply_plan, auxiliary_loss
from autopeft.peft.modules import LoRAExperts
from autopeft.plan import ModuleSpec, PeftPlan


def _experts(num_experts=4, top_k=2, d_in=12, d_out=10, rank=3, seed=0) -> LoRAExperts:
    g = torch.Generator().manual_seed(seed)
    module = LoRAExperts(d_in, d_out, rank, num_experts, top_k, scaling=1.5, generator=g)
    with torch.no_grad():
        module.lora_B.normal_(generator=g)  # B starts at zero; make the branch visible
    return module


@pytest.mark.parametrize(("num_experts", "top_k"), [(1, 1), (4, 1), (4, 2), (5, 5)])
def test_batched_experts_equal_a_loop_over_experts(num_experts, top_k):
    module = _experts(num_experts, top_k)
    x = torch.randn(2, 6, 12, generator=torch.Generator().manual_seed(1))  # (B, T, C)
    gates, _, _ = module.route(x.reshape(-1, 12))
    ref = torch.zeros(12, 10)
    for e in range(num_experts):  # the readable reference: sum_e g_e B_e A_e x
        ref += gates[:, e:e + 1] * (x.reshape(-1, 12) @ module.lora_A[e].T @ module.lora_B[e].T)
    torch.testing.assert_close(module(x), (module.scaling * ref).view(2, 6, 10))


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_each_token_uses_exactly_top_k_experts(top_k):
    module = _experts(num_experts=5, top_k=top_k)
    x = torch.randn(40, 12, generator=torch.Generator().manual_seed(2))
    gates, probs, top_i = module.route(x)
    assert ((gates > 0).sum(-1) == top_k).all()
    torch.testing.assert_close(gates.sum(-1), torch.ones(40))
    chosen = torch.zeros_like(gates, dtype=torch.bool).scatter(-1, top_i, True)
    assert torch.equal(chosen, gates > 0)
    # the chosen experts are the k most probable ones, gates proportional to their probabilities
    kth = probs.topk(top_k, dim=-1).values[:, -1:]
    assert (probs[chosen].view(40, top_k) >= kth).all()
    torch.testing.assert_close(gates[chosen].view(40, top_k),
                               probs[chosen].view(40, top_k) / probs[chosen].view(40, top_k).sum(-1, keepdim=True))


def test_unselected_experts_do_not_affect_the_output():
    module = _experts(num_experts=4, top_k=1)
    x = torch.randn(1, 12, generator=torch.Generator().manual_seed(3))
    _, _, top_i = module.route(x)
    before = module(x)
    with torch.no_grad():
        for e in range(4):
            if e != top_i.item():
                module.lora_B[e].normal_()
    torch.testing.assert_close(module(x), before)


def test_load_balancing_loss_values():
    module = _experts(num_experts=4, top_k=2)
    uniform = torch.full((10, 4), 0.25)
    top_i = torch.tensor([[0, 1]] * 10)
    assert module.load_balancing_loss(uniform, top_i).item() == pytest.approx(1.0)  # E * sum_e f_e / E
    collapsed = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 10)
    module.top_k = 1
    assert module.load_balancing_loss(collapsed, torch.zeros(10, 1, dtype=torch.long)).item() == pytest.approx(4.0)
    # hand-computed: f = (3/4, 1/4), P = (0.6, 0.4) -> 2 * (0.75 * 0.6 + 0.25 * 0.4) = 1.1
    module.num_experts, module.top_k = 2, 1
    probs = torch.tensor([[0.9, 0.1], [0.7, 0.3], [0.6, 0.4], [0.2, 0.8]])
    top_i = probs.argmax(-1, keepdim=True)
    assert module.load_balancing_loss(probs, top_i).item() == pytest.approx(1.1)


def test_zero_router_gives_balanced_loss_of_one():
    module = _experts(num_experts=3, top_k=2)
    with torch.no_grad():
        module.router.weight.zero_()
    module(torch.randn(7, 12))
    assert module.aux_loss.item() == pytest.approx(1.0)


def test_auxiliary_loss_none_without_experts(tiny, kind):
    model = apply_plan(tiny.build(kind), tiny.plan("lora"), seed=0)
    tiny.logits(model, tiny.ids())
    assert auxiliary_loss(model) is None


def test_auxiliary_loss_present_positive_and_differentiable(tiny, kind):
    model = apply_plan(tiny.build(kind), tiny.plan("lora_experts"), seed=0)
    assert auxiliary_loss(model) is None  # no forward yet
    tiny.logits(model, tiny.ids())
    aux = auxiliary_loss(model)
    experts = [m for m in model.modules() if isinstance(m, LoRAExperts)]
    assert len(experts) == 2 * tiny.NUM_LAYERS
    assert aux.ndim == 0 and aux.item() > 0 and aux.requires_grad
    torch.testing.assert_close(aux, sum(m.aux_loss for m in experts))
    aux.backward()
    for name, p in model.named_parameters():
        if name.endswith("router.weight"):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        elif not p.requires_grad:
            assert p.grad is None, name


def test_auxiliary_loss_follows_the_last_forward(tiny):
    model = apply_plan(tiny.build("llama_lm"), PeftPlan.from_modules(
        tiny.NUM_LAYERS, {1: [ModuleSpec("lora_experts", "q", 2, num_experts=4, top_k=1)]}), seed=0)
    tiny.logits(model, tiny.ids(seed=1))
    first = auxiliary_loss(model).item()
    tiny.logits(model, tiny.ids(batch=3, length=5, seed=2))
    second = auxiliary_loss(model).item()
    tiny.logits(model, tiny.ids(seed=1))
    assert auxiliary_loss(model).item() == pytest.approx(first)
    assert second != pytest.approx(first)


def test_tokens_in_a_model_use_exactly_top_k_experts(tiny, kind):
    model = apply_plan(tiny.build(kind), tiny.plan("lora_experts"), seed=0)
    seen = []

    def record(mod, args, out):
        x = args[0]
        seen.append((mod, mod.route(x.reshape(-1, x.shape[-1]))[0]))

    for m in model.modules():
        if isinstance(m, LoRAExperts):
            m.register_forward_hook(record)
    tiny.logits(model, tiny.ids())
    assert len(seen) == 2 * tiny.NUM_LAYERS
    for mod, gates in seen:
        assert gates.shape == (2 * 7, mod.num_experts)
        assert ((gates > 0).sum(-1) == mod.top_k).all()
