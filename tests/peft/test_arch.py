"""The architecture registry: sites, shapes (GQA), layer access, unsupported models, every registered family."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, GPTNeoXConfig, T5Config

from autopeft.errors import UnsupportedModelError
from autopeft.peft import (
    ARCHS,
    apply_plan,
    count_parameters,
    get_arch,
    head_parameters,
    plan_parameter_count,
    supported_model_types,
)
from autopeft.plan import METHOD_SITES, ModuleSpec, PeftPlan


def test_get_arch_from_model_or_config(tiny, kind):
    model = tiny.build(kind)
    assert get_arch(model) is get_arch(model.config) is get_arch(tiny.config(kind))


def test_sites_per_family(tiny):
    assert get_arch(tiny.config("bert_cls")).sites(tiny.config("bert_cls")) == ("q", "k", "v", "o", "up", "down")
    llama = tiny.config("llama_lm")
    assert get_arch(llama).sites(llama) == ("q", "k", "v", "o", "gate", "up", "down")


def test_site_shapes_handle_gqa(tiny):
    config = tiny.config("llama_lm")
    arch = get_arch(config)
    shapes = {s: arch.site_shape(config, s) for s in arch.sites(config)}
    assert shapes == {"q": (32, 32), "k": (32, 16), "v": (32, 16), "o": (32, 32),
                      "gate": (32, 64), "up": (32, 64), "down": (64, 32)}
    assert (arch.num_kv_heads(config), arch.head_dim(config)) == (2, 8)


def test_every_site_resolves_to_a_linear_of_the_computed_shape(tiny, kind):
    model = tiny.build(kind)
    arch = get_arch(model)
    layers = arch.layers(model)
    assert len(layers) == arch.num_layers(model.config) == tiny.NUM_LAYERS
    for layer in layers:
        for site in arch.sites(model.config):
            linear = arch.get_linear(layer, site)
            assert isinstance(linear, nn.Linear)
            assert (linear.in_features, linear.out_features) == arch.site_shape(model.config, site)
        assert hasattr(arch.attention(layer), "is_causal")


def test_set_linear_replaces_the_module(tiny):
    model = tiny.build("bert_cls")
    arch = get_arch(model)
    layer = arch.layers(model)[1]
    new = nn.Linear(32, 32)
    arch.set_linear(layer, "o", new)
    assert layer.attention.output.dense is new and arch.get_linear(layer, "o") is new


@pytest.mark.parametrize("config", [T5Config(d_model=32, d_ff=64, num_layers=2, num_heads=4, vocab_size=100),
                                    GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                  intermediate_size=64, vocab_size=100)],
                         ids=["t5", "gpt_neox"])
def test_unsupported_model_lists_supported_types(tiny, config):
    with pytest.raises(UnsupportedModelError) as err:
        get_arch(config)
    message = str(err.value)
    assert repr(config.model_type) in message
    for model_type in ("bert", "roberta", "llama", "mistral", "qwen2"):
        assert model_type in message
    model = AutoModelForCausalLM.from_config(config) if config.model_type == "gpt_neox" else None
    if model is not None:
        with pytest.raises(UnsupportedModelError, match="supported model types"):
            apply_plan(model, tiny.plan("lora"))


def test_required_model_types_are_registered():
    assert {"bert", "roberta", "llama", "mistral", "qwen2"} <= set(supported_model_types()) == set(ARCHS)


SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100)
EXTRA = {"num_key_value_heads": 2, "pad_token_id": 0}
FAMILY_KW = {
    "bert": {}, "roberta": {}, "xlm-roberta": {}, "electra": {"embedding_size": 16},
    "llama": EXTRA, "mistral": {**EXTRA, "sliding_window": 4}, "qwen2": EXTRA, "qwen3": {**EXTRA, "head_dim": 16},
}


@pytest.mark.parametrize("model_type", sorted(FAMILY_KW))
def test_every_registered_family_takes_a_full_plan(model_type):
    assert set(FAMILY_KW) == set(ARCHS)
    config = AutoConfig.for_model(model_type, **SMALL, **FAMILY_KW[model_type])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_config(config).eval()
    arch = get_arch(model)
    sites = arch.sites(config)
    modules = [ModuleSpec("lora", s, 2) for s in sites]
    modules += [ModuleSpec("ia3", s) for s in METHOD_SITES["ia3"]]
    modules += [ModuleSpec("lora_experts", sites[0], 2, num_experts=2, top_k=1),
                ModuleSpec("serial_adapter", "ffn", 4), ModuleSpec("parallel_adapter", "attn", 4),
                ModuleSpec("prefix", "attn", 2)]
    plan = PeftPlan.from_modules(2, {0: modules, 1: modules})
    ids = torch.randint(1, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    apply_plan(model, plan, seed=0)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert out.shape == (2, config.num_labels) and torch.isfinite(out).all()
    head = sum(p.numel() for p in head_parameters(model))
    assert count_parameters(model)[0] - head == plan_parameter_count(plan, config)
