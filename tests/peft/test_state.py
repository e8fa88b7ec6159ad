"""adapter_state_dict / load_adapter_state_dict: round trip into a fresh model, strictness."""

from __future__ import annotations

import pytest
import torch
from tiny_proxy import perturb_trainable

from autopeft.errors import PlanError
from autopeft.peft import adapter_state_dict, apply_plan, load_adapter_state_dict
from autopeft.plan import ModuleSpec, PeftPlan


def _trained(tiny, kind, plan_name, seed=0):
    """A model whose new tensors (and head) moved away from their init, as after training."""
    return perturb_trainable(apply_plan(tiny.build(kind), tiny.plan(plan_name), seed=seed))


def test_round_trip_into_a_fresh_model_gives_identical_outputs(tiny, kind, plan_name):
    source = _trained(tiny, kind, plan_name)
    state = adapter_state_dict(source)
    target = apply_plan(tiny.build(kind), tiny.plan(plan_name), seed=123)  # other init
    ids = tiny.ids()
    assert not torch.equal(tiny.logits(target, ids), tiny.logits(source, ids))
    load_adapter_state_dict(target, state)
    assert torch.equal(tiny.logits(target, ids), tiny.logits(source, ids))


def test_state_holds_only_trainable_tensors_as_copies(tiny):
    model = _trained(tiny, "bert_cls", "lora")
    state = adapter_state_dict(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(state) == trainable
    assert {"classifier.weight", "classifier.bias"} <= set(state)
    assert all(".lora." in n or n.startswith("classifier.") for n in state)
    assert len([n for n in state if ".lora." in n]) == 2 * 2 * tiny.NUM_LAYERS  # A and B on q and v, per layer
    name = next(n for n in state if ".lora." in n)
    state[name].add_(1.0)
    assert not torch.equal(dict(model.named_parameters())[name], state[name])
    assert all(not t.requires_grad for t in state.values())


def test_missing_and_unexpected_names_are_reported(tiny):
    model = apply_plan(tiny.build("llama_cls"), tiny.plan("lora"), seed=0)
    state = adapter_state_dict(model)
    dropped = sorted(state)[0]
    del state[dropped]
    state["model.layers.0.bogus"] = torch.zeros(1)
    with pytest.raises(PlanError) as err:
        load_adapter_state_dict(model, state)
    message = str(err.value)
    assert f"missing: {dropped}" in message and "unexpected: model.layers.0.bogus" in message
    assert "same plan" in message


def test_shape_mismatch_is_reported_and_nothing_is_loaded(tiny):
    small = apply_plan(tiny.build("bert_cls"), PeftPlan.from_modules(2, {0: [ModuleSpec("lora", "q", 2)]}), seed=0)
    big = apply_plan(tiny.build("bert_cls"), PeftPlan.from_modules(2, {0: [ModuleSpec("lora", "q", 4)]}), seed=0)
    before = adapter_state_dict(big)
    with pytest.raises(PlanError, match=r"shape mismatch.*lora_A \(2, 32\) vs \(4, 32\)"):
        load_adapter_state_dict(big, adapter_state_dict(small))
    after = adapter_state_dict(big)
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_head_choice_must_match(tiny):
    with_head = apply_plan(tiny.build("bert_cls"), tiny.plan("ia3"), seed=0)
    without = apply_plan(tiny.build("bert_cls"), tiny.plan("ia3"), train_head=False, seed=0)
    with pytest.raises(PlanError, match="unexpected: classifier"):
        load_adapter_state_dict(without, adapter_state_dict(with_head))
