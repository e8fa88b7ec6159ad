"""apply_plan on tiny BERT and LLaMA: shapes, what trains, what stays equal at init, seeding, errors."""

from __future__ import annotations

import pytest
import torch

from autopeft.errors import PlanError
from autopeft.peft import apply_plan, auxiliary_loss, count_parameters, head_parameters
from autopeft.peft.modules import AdaptedLinear
from autopeft.plan import ModuleSpec, PeftPlan



def _base_ids(model) -> set[int]:
    return {id(p) for p in model.parameters()}


def test_forward_shape(tiny, make_model, plan_name):
    model = make_model()
    ids = tiny.ids()
    before = tiny.logits(model, ids)
    apply_plan(model, tiny.plan(plan_name), seed=0)
    after = tiny.logits(model, ids)
    assert after.shape == before.shape
    assert torch.isfinite(after).all()


def test_gradients_reach_exactly_new_modules_and_head(tiny, make_model, plan_name):
    model = make_model()
    base = _base_ids(model)
    head = {id(p) for p in head_parameters(model)}
    apply_plan(model, tiny.plan(plan_name), seed=0)
    model.train()
    new = {id(p) for p in model.parameters()} - base
    assert new, "the plan added no parameters"
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # move zero-init tensors off zero so every new tensor gets a non-zero gradient
        for name, p in model.named_parameters():
            if id(p) in new:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
            if id(p) in new and name.endswith("down.bias"):
                p.abs_()  # keep the adapters' ReLU units alive: LLaMA's hidden states are tiny at init
    loss = tiny.logits(model, tiny.ids()).float().pow(2).mean()
    aux = auxiliary_loss(model)  # with top_k = 1 the router learns from this loss only (its gate is always 1)
    (loss if aux is None else loss + aux).backward()

    is_cls = type(model).__name__.endswith("ForSequenceClassification")
    for name, p in model.named_parameters():
        expected_trainable = id(p) in new or (is_cls and id(p) in head)
        assert p.requires_grad == expected_trainable, name
        if expected_trainable:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reached {name}"
        else:
            assert p.grad is None, f"frozen {name} got a gradient"


def test_empty_plan_changes_nothing_and_trains_only_the_head(tiny, make_model):
    model = make_model()
    ids = tiny.ids()
    before = tiny.logits(model, ids)
    head = head_parameters(model)
    apply_plan(model, PeftPlan(tiny.NUM_LAYERS), seed=0)
    assert torch.equal(tiny.logits(model, ids), before)
    trainable, total = count_parameters(model)
    is_cls = type(model).__name__.endswith("ForSequenceClassification")
    assert trainable == (sum(p.numel() for p in head) if is_cls else 0)
    assert not any(isinstance(m, AdaptedLinear) for m in model.modules())


@pytest.mark.parametrize("plan_name", ["lora", "lora_experts", "ia3", "serial_adapter", "parallel_adapter"])
def test_zero_init_methods_leave_outputs_unchanged(tiny, make_model, plan_name):
    model = make_model()
    ids = tiny.ids()
    before = tiny.logits(model, ids)
    apply_plan(model, tiny.plan(plan_name), seed=0)
    assert torch.equal(tiny.logits(model, ids), before)


def test_mixed_plan_without_prefix_leaves_outputs_unchanged(tiny, make_model):
    model = make_model()
    ids = tiny.ids()
    before = tiny.logits(model, ids)
    no_prefix = tiny.plan("mixed")
    no_prefix = PeftPlan(no_prefix.num_layers, tuple(tuple(m for m in layer if m.method != "prefix")
                                                     for layer in no_prefix.layers))
    apply_plan(model, no_prefix, seed=0)
    assert torch.equal(tiny.logits(model, ids), before)


def test_prefix_changes_outputs(tiny, make_model):
    model = make_model()
    ids = tiny.ids()
    before = tiny.logits(model, ids)
    apply_plan(model, tiny.plan("prefix"), seed=0)
    assert not torch.allclose(tiny.logits(model, ids), before, atol=1e-6)


def test_bert_pooler_stays_frozen_and_classifier_trains(tiny):
    model = tiny.build("bert_cls")
    apply_plan(model, tiny.plan("lora"), seed=0)
    assert all(p.requires_grad for p in model.classifier.parameters())
    assert not any(p.requires_grad for p in model.bert.pooler.parameters())
    assert not any(p.requires_grad for p in model.bert.embeddings.parameters())


@pytest.mark.parametrize(("kind", "train_head", "head_trains"), [
    ("bert_cls", None, True), ("bert_cls", False, False),
    ("llama_cls", None, True), ("llama_lm", None, False), ("llama_lm", True, True),
])
def test_train_head_default_and_override(tiny, kind, train_head, head_trains):
    model = tiny.build(kind)
    apply_plan(model, tiny.plan("lora"), train_head=train_head, seed=0)
    head = head_parameters(model)
    assert head and all(p.requires_grad == head_trains for p in head)


def test_same_seed_same_modules_other_seed_other_modules(tiny, make_model):
    states = []
    for seed in (3, 3, 4):
        model = make_model()
        apply_plan(model, tiny.plan("mixed"), seed=seed)
        states.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
    assert states[0].keys() == states[1].keys() == states[2].keys()
    assert all(torch.equal(states[0][n], states[1][n]) for n in states[0])
    assert any(not torch.equal(states[0][n], states[2][n]) for n in states[0])


def test_seeded_apply_leaves_global_rng_alone(tiny):
    model = tiny.build("llama_lm")
    rng = torch.get_rng_state()
    apply_plan(model, tiny.plan("mixed"), seed=0)
    assert torch.equal(torch.get_rng_state(), rng)


def test_unseeded_apply_follows_global_seed(tiny):
    a, b = tiny.build("bert_cls"), tiny.build("bert_cls")
    torch.manual_seed(11)
    apply_plan(a, tiny.plan("lora"))
    torch.manual_seed(11)
    apply_plan(b, tiny.plan("lora"))
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_wrong_num_layers_raises_plan_error(tiny):
    model = tiny.build("bert_cls")
    with pytest.raises(PlanError, match=r"num_layers.*3 layers.*has 2.*num_layers=2"):
        apply_plan(model, tiny.plan("lora", num_layers=3))


def test_missing_site_raises_plan_error_naming_layer_site_and_fix(tiny):
    model = tiny.build("bert_cls")
    plan = PeftPlan.from_modules(tiny.NUM_LAYERS, {1: [ModuleSpec("lora", "gate", 4)]})
    with pytest.raises(PlanError, match=r"layers\[1\].*'gate'.*bert.*q, k, v, o, up, down"):
        apply_plan(model, plan)
    # nothing was changed by the failed call
    assert not any(isinstance(m, AdaptedLinear) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_gate_site_exists_on_llama(tiny):
    model = tiny.build("llama_lm")
    plan = PeftPlan.from_modules(tiny.NUM_LAYERS, {0: [ModuleSpec("lora", "gate", 4)]})
    apply_plan(model, plan, seed=0)
    assert isinstance(model.model.layers[0].mlp.gate_proj, AdaptedLinear)


def test_applying_twice_raises(tiny):
    model = tiny.build("llama_cls")
    apply_plan(model, tiny.plan("prefix"), seed=0)
    with pytest.raises(PlanError, match="already applied"):
        apply_plan(model, tiny.plan("lora"), seed=0)


def test_adapted_linear_still_looks_like_a_linear(tiny):
    model = tiny.build("llama_lm")
    base = model.model.layers[0].self_attn.v_proj
    apply_plan(model, tiny.plan("lora"), seed=0)
    wrapped = model.model.layers[0].self_attn.v_proj
    assert isinstance(wrapped, AdaptedLinear) and wrapped.base_layer is base
    assert wrapped.weight is base.weight and (wrapped.in_features, wrapped.out_features) == (32, 16)


def test_eval_under_no_grad_and_training_step_reduces_loss(tiny):
    model = tiny.build("bert_cls")
    apply_plan(model, tiny.plan("mixed"), seed=0)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    ids, labels = tiny.ids(batch=4), torch.tensor([0, 1, 0, 1])
    losses = []
    for _ in range(5):
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    with torch.no_grad():
        assert tiny.logits(model, ids).shape == (4, 2)
