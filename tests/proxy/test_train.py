"""The proxy training loop on tiny random BERT and LLaMA classifiers saved from configs."""

import csv
import math
import shutil

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

from autopeft.plan import ModuleSpec, PeftPlan
from autopeft.proxy.fidelity import Fidelity
from autopeft.proxy.models import resolve_model_path
from autopeft.proxy.train import ProxyTrainer, TrialFailed, score_predictions

VOCAB = 30522  # the packaged MiniLM tokenizer's vocabulary, reused by the tiny models


def _save_tiny(kind, path):
    torch.manual_seed(0)
    if kind == "bert":
        cfg = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, num_labels=2)
        model = BertForSequenceClassification(cfg)
    else:
        cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, intermediate_size=64, num_labels=2, pad_token_id=0)
        model = LlamaForSequenceClassification(cfg)
    model.save_pretrained(path)
    tok_dir = resolve_model_path("minilm")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(f"{tok_dir}/{name}", path / name)
    return str(path)


@pytest.fixture(scope="module")
def toy_task(tmp_path_factory):
    """A separable sentiment-like task: label 1 iff the text contains 'good'."""
    path = tmp_path_factory.mktemp("task") / "toy.csv"
    words = ["film", "plot", "actor", "scene", "story", "music", "ending", "cast"]
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        for i in range(240):
            label = i % 2
            text = f"{words[i % 8]} {words[(i // 8) % 8]} {'good' if label else 'bad'} {words[(i * 3) % 8]}"
            w.writerow([text, label])
    return str(path)


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_training_learns_and_reports_metrics(kind, tmp_path, toy_task):
    model = _save_tiny(kind, tmp_path / kind)
    fid = Fidelity(model=model, task=toy_task, steps=40, batch_size=16, train_examples=192, eval_examples=24,
                   max_length=16, learning_rate=1e-2)
    trainer = ProxyTrainer(fid)
    plan = PeftPlan.from_modules(2, {i: [ModuleSpec("lora", "q", 4), ModuleSpec("lora", "v", 4)] for i in range(2)})
    m = trainer.run(plan)
    assert m.score > 0.8  # the toy task is separable by one token
    # LoRA r=4: q is 32->32 (4*32 + 32*4); v is 32->32 on BERT, 32->16 on the 2-KV-head LLaMA (4*32 + 16*4).
    per_layer = 256 + (256 if kind == "bert" else 192)
    assert m.module_params == 2 * per_layer
    assert m.trainable_params == m.module_params + sum(p.numel() for p in trainer.build_model(PeftPlan(2)).parameters() if p.requires_grad)
    assert math.isclose(m.trainable_pct, 100 * m.trainable_params / m.base_params)
    assert m.step_time > 0 and m.wall_time > 0 and m.peak_memory >= 0

    again = ProxyTrainer(fid).run(plan)
    assert again.score == m.score and again.train_loss == pytest.approx(m.train_loss, rel=1e-5)  # seeded


def test_nan_loss_fails_the_trial(tmp_path, toy_task, monkeypatch):
    model = _save_tiny("bert", tmp_path / "bert")
    trainer = ProxyTrainer(Fidelity(model=model, task=toy_task, steps=3, train_examples=32, eval_examples=8))
    build = trainer.build_model

    def poisoned(plan):
        net = build(plan)
        net.classifier.register_forward_hook(lambda mod, args, out: out * float("nan"))
        return net

    monkeypatch.setattr(trainer, "build_model", poisoned)
    with pytest.raises(TrialFailed, match="loss became nan at step 0"):
        trainer.run(PeftPlan(2))


def test_macro_f1_and_accuracy():
    assert score_predictions([0, 1, 1, 0], [0, 1, 0, 0], "accuracy", 2) == 0.75
    # class 0: tp=2 fp=0 fn=1 -> 0.8; class 1: tp=1 fp=1 fn=0 -> 2/3
    assert score_predictions([0, 1, 1, 0], [0, 1, 0, 0], "macro_f1", 2) == pytest.approx((0.8 + 2 / 3) / 2)
