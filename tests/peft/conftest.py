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

from autopeft.plan import METHODS, ModuleSpec, PeftPlan

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


#: one representative placement per method, on both layers (several sites where the method allows)
METHOD_MODULES: dict[str, tuple[ModuleSpec, ...]] = {
    "lora": (ModuleSpec("lora", "q", 4), ModuleSpec("lora", "v", 4, alpha=8.0)),
    "lora_experts": (ModuleSpec("lora_experts", "v", 2, num_experts=3, top_k=2),
                     ModuleSpec("lora_experts", "up", 2, num_experts=4, top_k=1)),
    "ia3": (ModuleSpec("ia3", "k"), ModuleSpec("ia3", "v"), ModuleSpec("ia3", "down")),
    "serial_adapter": (ModuleSpec("serial_adapter", "attn", 8), ModuleSpec("serial_adapter", "ffn", 8)),
    "parallel_adapter": (ModuleSpec("parallel_adapter", "attn", 8), ModuleSpec("parallel_adapter", "ffn", 8)),
    "prefix": (ModuleSpec("prefix", "attn", 3),),
}
assert set(METHOD_MODULES) == set(METHODS), "add a placement for every method"

#: several methods stacked on the same linears
MIXED_MODULES = (
    ModuleSpec("lora", "v", 4), ModuleSpec("ia3", "v"), ModuleSpec("lora_experts", "v", 2, num_experts=3, top_k=2),
    ModuleSpec("ia3", "down"), ModuleSpec("lora", "down", 2),
    ModuleSpec("serial_adapter", "ffn", 4), ModuleSpec("parallel_adapter", "ffn", 4),
    ModuleSpec("parallel_adapter", "attn", 4), ModuleSpec("lora", "q", 2), ModuleSpec("prefix", "attn", 2),
)

PLAN_NAMES = (*METHODS, "mixed")


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
