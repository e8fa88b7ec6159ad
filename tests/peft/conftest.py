"""Tiny BERT and LLaMA models built from configs (no downloads), and one small plan per PEFT method.

Tests reach the helpers through the ``tiny`` fixture (``tiny.build("bert_cls")``, ``tiny.plan("lora")``, ...),
so this file can move to ``tests/conftest.py`` unchanged.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
)

from autopeft.peft.methods import REGISTRY
from autopeft.plan import ModuleSpec, PeftPlan

NUM_LAYERS = 2
BERT_KW = dict(hidden_size=32, num_hidden_layers=NUM_LAYERS, num_attention_heads=4, intermediate_size=64,
               vocab_size=100)
LLAMA_KW = dict(hidden_size=32, num_hidden_layers=NUM_LAYERS, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=64, vocab_size=100, pad_token_id=0)

MODEL_CLASSES = {
    "bert_cls": (BertForSequenceClassification, BertConfig, BERT_KW),
    "llama_cls": (LlamaForSequenceClassification, LlamaConfig, LLAMA_KW),
    "llama_lm": (LlamaForCausalLM, LlamaConfig, LLAMA_KW),
}
KINDS = tuple(MODEL_CLASSES)


def build_model(kind: str, *, seed: int = 0, attn: str = "sdpa") -> torch.nn.Module:
    """A fresh tiny model of ``kind`` in eval mode; the same ``seed`` gives the same base weights."""
    cls, config_cls, kw = MODEL_CLASSES[kind]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = cls._from_config(config_cls(**kw), attn_implementation=attn)
    return model.eval()


def tiny_config(kind: str):
    _, config_cls, kw = MODEL_CLASSES[kind]
    return config_cls(**kw)


#: THE shared method test table: one row per method and variant (one representative placement, put on both
#: layers). Tests parametrised over ``plan_name`` run every generic check (forward shape, gradients, exact parameter
#: count, save/load, merge, seeding) on every row; a new method adds its row here.
METHOD_MODULES: dict[str, tuple[ModuleSpec, ...]] = {
    "lora": (ModuleSpec("lora", "q", 4), ModuleSpec("lora", "v", 4, alpha=8.0)),
    "lora_rslora": (ModuleSpec("lora", "q", 4, variant="rslora"), ModuleSpec("lora", "down", 2, variant="rslora")),
    "lora_dora": (ModuleSpec("lora", "v", 4, variant="dora"), ModuleSpec("lora", "up", 2, alpha=3.0, variant="dora")),
    "lora_experts": (ModuleSpec("lora_experts", "v", 2, num_experts=3, top_k=2),
                     ModuleSpec("lora_experts", "up", 2, num_experts=4, top_k=1)),
    "lora_experts_dynmole": (ModuleSpec("lora_experts", "q", 2, num_experts=4, top_k=1, variant="dynmole"),
                             ModuleSpec("lora_experts", "down", 2, num_experts=3, top_k=2, variant="dynmole")),
    "ia3": (ModuleSpec("ia3", "k"), ModuleSpec("ia3", "v"), ModuleSpec("ia3", "down")),
    "ssf": (ModuleSpec("ssf", "q"), ModuleSpec("ssf", "o"), ModuleSpec("ssf", "down")),
    "serial_adapter": (ModuleSpec("serial_adapter", "attn", 8), ModuleSpec("serial_adapter", "ffn", 8)),  # Houlsby
    "serial_adapter_pfeiffer": (ModuleSpec("serial_adapter", "ffn", 8),),
    "parallel_adapter": (ModuleSpec("parallel_adapter", "attn", 8), ModuleSpec("parallel_adapter", "ffn", 8)),
    "prefix": (ModuleSpec("prefix", "attn", 3),),
    "prefix_mlp": (ModuleSpec("prefix", "attn", 3, variant="mlp"),),
    "compacter": (ModuleSpec("compacter", "attn", 8), ModuleSpec("compacter", "ffn", 4)),
    "hydra": (ModuleSpec("hydra", "q", 4), ModuleSpec("hydra", "down", 2, alpha=6.0)),
}
_covered = {(m.method, m.variant) for row in METHOD_MODULES.values() for m in row}
_wanted = {(name, v) for name, m in REGISTRY.items() for v in (None, *m.variants[1:])}
assert _wanted <= _covered, f"add a row for every method and variant: missing {sorted(_wanted - _covered, key=str)}"

#: several methods stacked on the same linears
MIXED_MODULES = (
    ModuleSpec("lora", "v", 4, variant="dora"), ModuleSpec("ia3", "v"), ModuleSpec("hydra", "v", 2),
    ModuleSpec("ssf", "v"), ModuleSpec("lora_experts", "v", 2, num_experts=3, top_k=2),
    ModuleSpec("ia3", "down"), ModuleSpec("lora", "down", 2), ModuleSpec("ssf", "down"), ModuleSpec("hydra", "down", 2),
    ModuleSpec("serial_adapter", "ffn", 4), ModuleSpec("parallel_adapter", "ffn", 4), ModuleSpec("compacter", "ffn", 4),
    ModuleSpec("parallel_adapter", "attn", 4), ModuleSpec("lora", "q", 2), ModuleSpec("prefix", "attn", 2),
)

PLAN_NAMES = (*METHOD_MODULES, "mixed")


def make_plan(name: str, num_layers: int = NUM_LAYERS) -> PeftPlan:
    modules = MIXED_MODULES if name == "mixed" else METHOD_MODULES[name]
    return PeftPlan.from_modules(num_layers, {i: modules for i in range(num_layers)})


def input_ids(batch: int = 2, length: int = 7, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 100, (batch, length), generator=g)  # 0 is the pad id


def logits(model: torch.nn.Module, ids: torch.Tensor, **kwargs) -> torch.Tensor:
    return model(input_ids=ids, **kwargs).logits


class Tiny:
    """The helpers above, as one object handed to tests by the ``tiny`` fixture."""

    NUM_LAYERS = NUM_LAYERS
    KINDS = KINDS
    build = staticmethod(build_model)
    config = staticmethod(tiny_config)
    plan = staticmethod(make_plan)
    ids = staticmethod(input_ids)
    logits = staticmethod(logits)


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is faster, and on a busy 2-core box OpenMP spinning costs ~400x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny() -> type[Tiny]:
    return Tiny


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    return request.param


@pytest.fixture
def make_model(kind) -> Callable[..., torch.nn.Module]:
    """Factory of fresh ``kind`` models that share their base weights."""
    return lambda **kw: build_model(kind, **kw)


@pytest.fixture(params=PLAN_NAMES)
def plan_name(request) -> str:
    return request.param
