"""Parameter counts: analytic (config only) == actual (trainable minus head) == hand-computed."""

from __future__ import annotations

import pytest
from transformers import T5Config

from autopeft.errors import PlanError, UnsupportedModelError
from autopeft.peft import apply_plan, count_parameters, head_parameters, plan_parameter_count
from autopeft.plan import ModuleSpec as M
from autopeft.plan import PeftPlan


def _added(model) -> int:
    """Trainable parameters minus the head's."""
    trainable, _ = count_parameters(model)
    return trainable - sum(p.numel() for p in head_parameters(model) if p.requires_grad)


def test_analytic_count_equals_actual_for_every_method(tiny, kind, plan_name):
    plan = tiny.plan(plan_name)
    model = tiny.build(kind)
    _, total_before = count_parameters(model)
    analytic = plan_parameter_count(plan, tiny.config(kind))  # no model involved
    apply_plan(model, plan, seed=0)
    _, total_after = count_parameters(model)
    assert analytic == _added(model) == total_after - total_before
    assert analytic > 0


# Tiny configs: hidden d = 32, intermediate 64, 4 heads of head_dim 8; LLaMA has 2 key/value heads (k, v out = 16).
HAND_COUNTS = [
    ("bert_cls", M("lora", "q", 4), 4 * 32 + 32 * 4),  # A (4, 32) + B (32, 4) = 256
    ("bert_cls", M("lora", "down", 2), 2 * 64 + 32 * 2),  # A (2, 64) + B (32, 2)
    ("llama_lm", M("lora", "k", 4), 4 * 32 + 16 * 4),  # GQA: k_proj is 32 -> 16
    ("llama_lm", M("lora", "gate", 4), 4 * 32 + 64 * 4),
    ("llama_lm", M("lora_experts", "v", 2, num_experts=3, top_k=2), 3 * (2 * 32 + 16 * 2) + 32 * 3),  # + router
    ("bert_cls", M("lora_experts", "o", 1, num_experts=2, top_k=1), 2 * (32 + 32) + 32 * 2),
    ("bert_cls", M("ia3", "v"), 32),
    ("llama_lm", M("ia3", "k"), 16),  # output of k_proj
    ("llama_lm", M("ia3", "down"), 64),  # input of down_proj
    ("bert_cls", M("serial_adapter", "attn", 8), 32 * 8 + 8 + 8 * 32 + 32),  # 552
    ("llama_cls", M("parallel_adapter", "ffn", 8), 32 * 8 + 8 + 8 * 32 + 32),
    ("bert_cls", M("prefix", "attn", 5), 2 * 5 * 32),  # keys + values, 4 heads * 8 = 32 wide
    ("llama_lm", M("prefix", "attn", 5), 2 * 5 * 2 * 8),  # GQA: only 2 key/value heads
]


@pytest.mark.parametrize(("kind", "spec", "per_layer"), HAND_COUNTS, ids=lambda v: getattr(v, "method", None))
@pytest.mark.parametrize("layers", [(0,), (0, 1)])
def test_hand_computed_counts(tiny, kind, spec, per_layer, layers):
    plan = PeftPlan.from_modules(tiny.NUM_LAYERS, {i: [spec] for i in layers})
    assert plan_parameter_count(plan, tiny.config(kind)) == per_layer * len(layers)
    model = apply_plan(tiny.build(kind), plan, seed=0)
    assert _added(model) == per_layer * len(layers)


def test_head_sizes_are_what_we_expect(tiny):
    bert = apply_plan(tiny.build("bert_cls"), PeftPlan(tiny.NUM_LAYERS))
    assert count_parameters(bert)[0] == 32 * 2 + 2  # classifier Linear(32, 2)
    llama = apply_plan(tiny.build("llama_cls"), PeftPlan(tiny.NUM_LAYERS))
    assert count_parameters(llama)[0] == 32 * 2  # score Linear(32, 2, bias=False)


def test_count_parameters_of_a_plain_model(tiny):
    model = tiny.build("bert_cls")
    total = sum(p.numel() for p in model.parameters())
    assert count_parameters(model) == (total, total)
    model.requires_grad_(False)
    assert count_parameters(model) == (0, total)


def test_count_parameters_counts_tied_weights_once(tiny):
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                         intermediate_size=64, vocab_size=100, tie_word_embeddings=True))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    unique = {id(p): p.numel() for p in model.parameters()}
    assert count_parameters(model)[1] == sum(unique.values())


def test_plan_parameter_count_checks_the_plan(tiny):
    with pytest.raises(PlanError, match="num_layers"):
        plan_parameter_count(tiny.plan("lora", num_layers=5), tiny.config("bert_cls"))
    with pytest.raises(PlanError, match="gate"):
        plan_parameter_count(PeftPlan.from_modules(2, {0: [M("lora", "gate", 2)]}), tiny.config("bert_cls"))
    with pytest.raises(UnsupportedModelError, match="t5"):
        plan_parameter_count(tiny.plan("lora"), T5Config(d_model=32, num_layers=2))


def test_empty_plan_adds_nothing(tiny, kind):
    assert plan_parameter_count(PeftPlan(tiny.NUM_LAYERS), tiny.config(kind)) == 0
