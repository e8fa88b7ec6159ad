"""benchmarks/step_time.py on a tiny BERT: the rows it times, their matmul work, and the table it prints."""

import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import step_time  # noqa: E402


@pytest.fixture
def tiny(monkeypatch):
    model = dict(step_time.MODELS["minilm"], batch=(2, 8),
                 config=BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                   vocab_size=30522, num_labels=2))
    monkeypatch.setitem(step_time.MODELS, "minilm", model)
    return model


def test_lora_rows_count_the_products_the_fused_kernel_and_autograd_share(tiny):
    torch.manual_seed(0)
    rows = {r["label"]: r for r in step_time.bench_model("minilm", 1, torch.device("cpu"), torch.float32,
                                                         only=["autopeft LoRA all-linear"])}
    bound = rows["bound: frozen forward + backward to inputs"]["gflop"]
    fused = rows["autopeft LoRA all-linear"]["gflop"]
    assert 0 < rows["frozen forward"]["gflop"] < bound < fused
    # the fused node computes the same six low-rank products as autograd over the plain ops, nothing more
    assert fused == pytest.approx(rows["autopeft LoRA all-linear, unfused"]["gflop"], rel=1e-9)
    # r = 8 on every linear of a 32-wide model: the low-rank products are a large share of the work
    assert fused / bound > 1.2
    text = step_time.table(list(rows.values()), [])
    assert "| GFLOP | GFLOP / bound |" in text
    assert f"| {fused:.1f} | {fused / bound:.3f}x |" in text


def test_graphed_rows_replay_the_eager_step(tiny, monkeypatch):
    monkeypatch.setattr(step_time, "CAPTURE", lambda step, args: step)  # the CPU twin of a recording
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    rows = {r["label"]: r for r in step_time.bench_model("minilm", 1, cpu, torch.float32, only=["all-linear"],
                                                         graphs=True)}
    graphed = "autopeft LoRA all-linear" + step_time.GRAPHED
    assert {"bound" + step_time.GRAPHED, "peft LoRA all-linear" + step_time.GRAPHED, graphed} <= rows.keys()
    assert rows[graphed]["peer"] == "peft LoRA all-linear" + step_time.GRAPHED
    assert rows[graphed]["gflop"] == pytest.approx(rows["autopeft LoRA all-linear"]["gflop"], rel=1e-9)
    assert "experts q,v: autopeft" + step_time.GRAPHED not in rows  # --only keeps the rows asked for

    from functools import partial

    from autopeft.proxy.graphs import StepGraphs

    batch = step_time._batch("minilm", cpu)
    for kind, build in (("train", step_time._ours("minilm", ["q", "v", "up"], cpu, torch.float32)),
                        ("bound", lambda: step_time._base("minilm", cpu, torch.float32))):
        model = build().eval()  # no dropout: the two ways must agree exactly
        grads = []
        for graphs in (None, StepGraphs(model, partial(step_time._loss, model), capture=lambda step, args: step)):
            model.zero_grad(set_to_none=True)
            step_time._step(model, batch, kind, graphs)  # the bound: a frozen model, so no parameter gradient
            grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
        assert len(grads[0]) == len(grads[1]) and (kind == "bound" or grads[0])
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b)
