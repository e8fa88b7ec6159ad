"""Tiny random BERT and LLaMA classifiers saved from configs (with the packaged MiniLM tokenizer), and a toy task,
for tests that run the proxy trainer end to end in seconds."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

from autopeft.proxy.models import resolve_model_path

VOCAB = 30522  # the packaged MiniLM tokenizer's vocabulary, reused by the tiny models
WORDS = ["film", "plot", "actor", "scene", "story", "music", "ending", "cast"]


def save_tiny(kind: str, path: Path, dropout: float = 0.1, layers: int = 2) -> str:
    """A seeded tiny ``kind`` ("bert" or "llama") classifier saved at ``path``; returns the path."""
    torch.manual_seed(0)
    if kind == "bert":
        cfg = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                         intermediate_size=64, num_labels=2, hidden_dropout_prob=dropout,
                         attention_probs_dropout_prob=dropout)
        model = BertForSequenceClassification(cfg)
    else:
        cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                          num_key_value_heads=2, intermediate_size=64, num_labels=2, pad_token_id=0,
                          attention_dropout=dropout)
        model = LlamaForSequenceClassification(cfg)
    model.save_pretrained(path)
    tok = resolve_model_path("minilm")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(f"{tok}/{name}", Path(path) / name)
    return str(path)


def write_toy_task(path: Path, n: int = 240) -> str:
    """Label 1 iff the text says 'good'; texts of 3 to 15 words, so batches carry padding."""
    with Path(path).open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        for i in range(n):
            label = i % 2
            words = [WORDS[i % 8], WORDS[(i // 8) % 8], "good" if label else "bad"] + [WORDS[(i * 3) % 8]] * (i % 13)
            w.writerow([" ".join(words), label])
    return str(path)


def tiny_task_and_models(root: Path, examples: int, dropout: float, layers: int) -> tuple[str, dict[str, str]]:
    """A toy task of ``examples`` rows and a tiny BERT and LLaMA of ``layers`` blocks, saved under ``root``."""
    task = write_toy_task(Path(root) / "toy.csv", examples)
    return task, {kind: save_tiny(kind, Path(root) / kind, dropout=dropout, layers=layers) for kind in ("bert", "llama")}


def perturb_trainable(model: torch.nn.Module, seed: int = 7, scale: float = 0.1) -> torch.nn.Module:
    """Move every trainable tensor by seeded noise, as training would: modules initialised to a no-op (LoRA's
    B = 0, ...) then change the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def sharing(trainer, **fields):
    """``trainer`` at another fidelity, sharing its loaded model and data (as a worker would build it anew)."""
    from autopeft.proxy.train import ProxyTrainer

    other = object.__new__(ProxyTrainer)
    other.__dict__.update(trainer.__dict__)
    other.fidelity = trainer.fidelity.model_copy(update=fields)
    return other
