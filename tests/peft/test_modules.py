"""Each PEFT module against its formula, and the documented order inside AdaptedLinear."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from autopeft.peft import apply_plan, head_parameters
from autopeft.peft.modules import (
    PARALLEL_SCALE,
    AdaptedLinear,
    IA3Scale,
    LoRA,
    LoRAExperts,
    ParallelAdapter,
    SerialAdapter,
)


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randomise_(module: nn.Module, seed: int = 1) -> nn.Module:
    g = _g(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module


def test_lora_formula_and_init():
    lora = LoRA(6, 5, rank=3, scaling=2.0, generator=_g())
    assert lora.lora_A.shape == (3, 6) and lora.lora_B.shape == (5, 3)
    assert torch.equal(lora.lora_B, torch.zeros(5, 3))
    assert lora.lora_A.abs().max() <= 1 / math.sqrt(6)  # kaiming-uniform(a=sqrt(5)) bound
    expected = torch.empty(3, 6)
    nn.init.kaiming_uniform_(expected, a=math.sqrt(5), generator=_g())  # what peft does for lora_A
    assert torch.equal(lora.lora_A, expected)
    _randomise_(lora)
    x = torch.randn(2, 4, 6)
    torch.testing.assert_close(lora(x), 2.0 * x @ lora.lora_A.T @ lora.lora_B.T)


def test_ia3_starts_at_one_and_scales():
    ia3 = IA3Scale(4)
    assert torch.equal(ia3.scale, torch.ones(4))
    with torch.no_grad():
        ia3.scale.copy_(torch.tensor([1.0, 2.0, 0.0, -1.0]))
    assert torch.equal(ia3(torch.ones(2, 4)), torch.tensor([[1.0, 2.0, 0.0, -1.0]] * 2))


def test_serial_adapter_is_identity_at_init_then_residual_bottleneck():
    adapter = SerialAdapter(6, 3, generator=_g())
    h = torch.randn(2, 5, 6)
    assert torch.equal(adapter(h), h)
    _randomise_(adapter)
    d, u = adapter.down, adapter.up
    torch.testing.assert_close(adapter(h), h + u(torch.relu(d(h))))


def test_parallel_adapter_branch_is_scaled_bottleneck():
    adapter = ParallelAdapter(6, 3, 4, generator=_g())
    x = torch.randn(2, 5, 6)
    assert torch.equal(adapter(x), torch.zeros(2, 5, 4))
    _randomise_(adapter)
    assert adapter.scale == PARALLEL_SCALE == 4.0
    torch.testing.assert_close(adapter(x), 4.0 * adapter.up(torch.relu(adapter.down(x))))


def test_parallel_stash_is_consumed_and_exit_without_entry_fails():
    adapter = ParallelAdapter(6, 3, 6, generator=_g())
    exit_ = AdaptedLinear(nn.Linear(6, 6))
    exit_.parallel = adapter
    with pytest.raises(RuntimeError, match="entry linear"):
        exit_(torch.randn(1, 6))


def test_no_activation_is_kept_after_a_forward(tiny, kind):
    model = apply_plan(tiny.build(kind), tiny.plan("parallel_adapter"), seed=0)
    tiny.logits(model, tiny.ids())
    adapters = [m for m in model.modules() if isinstance(m, ParallelAdapter)]
    assert len(adapters) == 2 * tiny.NUM_LAYERS and all(a.stash.x is None for a in adapters)


def test_adapted_linear_with_nothing_is_the_base_linear():
    base = nn.Linear(6, 4)
    x = torch.randn(3, 6)
    assert torch.equal(AdaptedLinear(base)(x), base(x))


def test_adapted_linear_order():
    """y = W (x * l_in) + b + lora(x) + experts(x); y *= l_out; y += serial(y); y += parallel(x_entry)."""
    g = _g()
    base = nn.Linear(6, 4)
    lin = AdaptedLinear(base)
    lin.ia3_in, lin.ia3_out = IA3Scale(6), IA3Scale(4)
    lin.lora = LoRA(6, 4, 2, scaling=1.5, generator=g)
    lin.experts = LoRAExperts(6, 4, 2, num_experts=3, top_k=2, scaling=0.5, generator=g)
    lin.serial = SerialAdapter(4, 3, generator=g)
    entry = AdaptedLinear(nn.Linear(5, 6))
    lin.parallel = ParallelAdapter(5, 3, 4, generator=g)
    entry.stashes.append(lin.parallel.stash)
    for seed, m in enumerate((lin.ia3_in, lin.ia3_out, lin.lora, lin.experts, lin.serial, lin.parallel)):
        _randomise_(m, seed=seed)

    x_entry = torch.randn(2, 3, 5)
    x = entry(x_entry)  # fills the stash
    y = lin(x)
    ref = base(x * lin.ia3_in.scale) + lin.lora(x) + lin.experts(x)
    ref = ref * lin.ia3_out.scale
    ref = ref + lin.serial.up(torch.relu(lin.serial.down(ref)))
    ref = ref + PARALLEL_SCALE * lin.parallel.up(torch.relu(lin.parallel.down(x_entry)))
    torch.testing.assert_close(y, ref)
    assert lin.parallel.stash.x is None


def test_base_weights_are_kept_frozen_and_shared(tiny, kind):
    model = tiny.build(kind)
    before = {id(p): p for p in model.parameters()}
    head = {id(p) for p in head_parameters(model)}
    apply_plan(model, tiny.plan("mixed"), seed=0)
    after = {id(p) for p in model.parameters()}
    assert set(before) <= after  # the wrappers hold the very same base tensors, nothing was copied
    is_cls = kind.endswith("_cls")
    assert all(p.requires_grad == (is_cls and i in head) for i, p in before.items())
    for m in model.modules():
        if isinstance(m, AdaptedLinear):
            assert id(m.base_layer.weight) in before and not m.base_layer.weight.requires_grad


def test_new_modules_follow_the_base_dtype(tiny):
    model = tiny.build("llama_lm").to(torch.bfloat16)
    apply_plan(model, tiny.plan("mixed"), seed=0)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    out = tiny.logits(model, tiny.ids())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
