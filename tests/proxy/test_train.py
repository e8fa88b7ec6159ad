"""The proxy training loop on tiny random BERT and LLaMA classifiers saved from configs."""

import math
import random
import warnings

import pytest
import torch
from tiny_proxy import save_tiny, sharing, write_toy_task

from autopeft.errors import StudyError
from autopeft.plan import ModuleSpec, PeftPlan
from autopeft.proxy import train as proxy_train
from autopeft.proxy.fidelity import Fidelity
from autopeft.proxy.train import ProxyTrainer, TrialFailed, bucket_by_length, check_options, score_predictions


def _save_tiny(kind, path):
    return save_tiny(kind, path, dropout=0.1)


@pytest.fixture(scope="module")
def toy_task(tmp_path_factory):
    """A separable sentiment-like task: label 1 iff the text contains 'good'; 3 to 15 words."""
    return write_toy_task(tmp_path_factory.mktemp("task") / "toy.csv", 240)


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


# --------------------------------------------------------------------------- batches
@pytest.fixture(scope="module")
def bert_trainer(tmp_path_factory, toy_task):
    model = _save_tiny("bert", tmp_path_factory.mktemp("bert") / "bert")
    return ProxyTrainer(Fidelity(model=model, task=toy_task, steps=30, batch_size=8, train_examples=96,
                                 eval_examples=40, max_length=24, learning_rate=1e-2))


def _losses(trainer: ProxyTrainer, plan: PeftPlan) -> list[float]:
    out: list[float] = []
    trainer.run(plan, on_step=lambda step, loss: out.append(loss))
    return out


LORA = PeftPlan.from_modules(2, {i: [ModuleSpec("lora", "q", 4)] for i in range(2)})


def test_collate_pads_each_batch_to_its_longest_member(bert_trainer):
    data = bert_trainer.train_data
    idx = [5, 0, 17]
    batch = proxy_train._collate(data, idx, torch.device("cpu"))
    rows = [data.input_ids[i, : data.lengths[i]].tolist() for i in idx]  # per-example reference
    width = max(map(len, rows))
    assert batch["input_ids"].shape == (3, width)
    for r, row in enumerate(rows):
        pad = width - len(row)
        assert batch["input_ids"][r].tolist() == row + [bert_trainer.tokenizer.pad_token_id] * pad
        assert batch["attention_mask"][r].tolist() == [1] * len(row) + [0] * pad
    assert batch["labels"].tolist() == [int(data.labels[i]) for i in idx]


def test_length_buckets_keep_the_examples_and_cut_padding():
    rng = random.Random(0)
    lengths = [rng.randint(3, 60) for _ in range(500)]
    stream = list(range(500)) * 2
    rng.shuffle(stream)
    batches = [stream[i : i + 16] for i in range(0, 960, 16)]  # 60 batches: one full chunk of 50 and one of 10
    bucketed = bucket_by_length(batches, lengths, seed=0)
    assert len(bucketed) == len(batches) and all(len(b) == 16 for b in bucketed)
    for start in (0, 50):  # every chunk keeps exactly its examples
        chunk = slice(start, start + 50)
        assert sorted(i for b in bucketed[chunk] for i in b) == sorted(i for b in batches[chunk] for i in b)
    padded = lambda bs: sum(len(b) * max(lengths[i] for i in b) for b in bs)
    assert padded(bucketed) < 0.7 * padded(batches)
    assert bucket_by_length(batches, lengths, seed=0) == bucketed  # seeded
    assert bucket_by_length(batches, lengths, seed=1) != bucketed


def test_length_buckets_only_when_asked(bert_trainer):
    plain = bert_trainer._batches(30, 8, 0)
    bucketed = sharing(bert_trainer, length_buckets=True)._batches(30, 8, 0)
    assert plain != bucketed and sorted(map(sorted, plain)) != sorted(map(sorted, bucketed))
    assert sorted(i for b in plain for i in b) == sorted(i for b in bucketed for i in b)


def test_evaluation_batches_hold_at_most_the_device_token_budget(bert_trainer):
    from autopeft.proxy.train import EVAL_TOKENS, EVAL_TOKENS_CPU, _eval_batches, eval_tokens

    assert eval_tokens(torch.device("cpu")) == EVAL_TOKENS_CPU < eval_tokens(torch.device("cuda")) == EVAL_TOKENS
    data = bert_trainer.eval_data
    for tokens in (24, 64, 200):
        batches = _eval_batches(data, tokens)
        assert sorted(torch.cat(batches).tolist()) == list(range(len(data)))
        assert all(len(b) * int(data.lengths[b].max()) <= tokens for b in batches)
        assert max(map(len, batches)) > 1
    assert len(_eval_batches(data, 200)) < len(_eval_batches(data, 64)) < len(_eval_batches(data, 24))


def test_evaluation_batching_does_not_change_the_score(bert_trainer):
    model = bert_trainer.build_model(LORA)
    torch.nn.init.normal_(model.classifier.weight, std=1.0)  # a head that predicts both classes
    big = bert_trainer.evaluate(model, bert_trainer.eval_data)  # token-budget batches
    small = bert_trainer.evaluate(model, bert_trainer.eval_data, batch_size=3)
    assert big == small == bert_trainer.evaluate(model, bert_trainer.eval_data, tokens=48)


# --------------------------------------------------------------------------- options
def test_gradient_checkpointing_gives_the_same_losses(bert_trainer):
    short = sharing(bert_trainer, steps=4)
    ckpt = sharing(bert_trainer, steps=4, gradient_checkpointing=True)
    assert _losses(ckpt, LORA) == pytest.approx(_losses(short, LORA), rel=1e-5)  # dropout masks are replayed


def test_bf16_autocast_runs_on_cpu(bert_trainer):
    fp32 = _losses(sharing(bert_trainer, steps=4), LORA)
    bf16 = _losses(sharing(bert_trainer, steps=4, autocast="bf16"), LORA)
    assert bf16 != fp32 and bf16 == pytest.approx(fp32, rel=5e-2)


def test_options_the_device_cannot_run_are_refused(monkeypatch):
    with pytest.raises(StudyError, match="--autocast: fp16 needs a CUDA device.*--autocast bf16"):
        check_options(Fidelity(autocast="fp16"), "cpu")
    monkeypatch.setattr(proxy_train, "_c_compiler", lambda: None)
    with pytest.raises(StudyError, match="--compile: .*C compiler.*drop --compile"):
        check_options(Fidelity(compile=True), "cpu")


def test_a_device_this_machine_lacks_is_refused(monkeypatch):
    with pytest.raises(StudyError, match=r"--device: 'gpu' is not a torch device; use cpu, cuda"):
        check_options(Fidelity(), "gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(StudyError, match=r"--device: 'cuda' asked, but torch .* sees no CUDA device; use --device cpu"):
        check_options(Fidelity(), "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(StudyError, match=r"--device: 'cuda:2' asked, but torch sees 2 CUDA device\(s\); use one of "
                                         r"cuda:0, cuda:1"):
        proxy_train.check_device("cuda:2")
    assert proxy_train.check_device("cuda:1") == torch.device("cuda:1")
    assert proxy_train.check_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("native", [True, False, None])
def test_bf16_on_a_cpu_without_bf16_instructions_is_run_with_a_warning(monkeypatch, native):
    monkeypatch.setattr(proxy_train, "cpu_bf16_native", lambda: native)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_options(Fidelity(autocast="bf16"), "cpu")
    said = [str(w.message) for w in caught]
    assert (native is False) == any("--autocast bf16: this CPU has no bf16" in m and "drop --autocast" in m
                                     for m in said)


def test_the_cpu_bf16_probe_answers_from_torch(monkeypatch):
    assert proxy_train.cpu_bf16_native() in (True, False, None)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert proxy_train.cpu_bf16_native() is True
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert proxy_train.cpu_bf16_native() is False
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert proxy_train.cpu_bf16_native() is None


@pytest.mark.slow  # ~40 s on 2 cores: inductor compiles the forward, backward and inference graphs
@pytest.mark.skipif(proxy_train._c_compiler() is None, reason="torch.compile on CPU needs a C compiler (cc/gcc/clang)")
@pytest.mark.parametrize("pooled", [False, True], ids=["whole", "pooled-only"])
def test_compiled_blocks_give_the_same_losses(tmp_path, toy_task, pooled):
    model = save_tiny("bert", tmp_path / "bert", dropout=0.0, layers=1)  # inductor draws its own dropout masks
    fid = Fidelity(model=model, task=toy_task, steps=2, batch_size=8, train_examples=32, eval_examples=8,
                   max_length=24, pooled_only=pooled)  # pooled: the block's cut is traced into the compiled graph
    plan = PeftPlan.from_modules(1, {0: [ModuleSpec("lora", "q", 4)]})
    eager = ProxyTrainer(fid)
    compiled = ProxyTrainer(fid.model_copy(update={"compile": True}))
    assert _losses(compiled, plan) == pytest.approx(_losses(eager, plan), rel=1e-5)


def _eager_backend(monkeypatch) -> None:
    """torch.compile with dynamo's ``eager`` backend: the same tracing, guards and compile caches as inductor,
    without inductor's code generation (seconds per form on this machine)."""
    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compile_module(self, **kw, backend="eager"))


@pytest.mark.parametrize("forms", [proxy_train.COMPILE_FORMS, 24], ids=["default", "small-cache"])
def test_compiled_blocks_stay_compiled_from_trial_to_trial(tmp_path, toy_task, monkeypatch, caplog, forms):
    """Every block of every plan is a form of one forward function. A worker keeps compiling new forms across
    trials (torch's default keeps 8, then runs every new one uncompiled), and empties torch's caches when it
    would run out."""
    from torch._dynamo.utils import counters

    _eager_backend(monkeypatch)
    torch.compiler.reset()  # a fresh worker: nothing compiled yet
    monkeypatch.setattr(proxy_train, "_compiled_at_reset", counters["frames"]["ok"])
    monkeypatch.setattr(proxy_train, "COMPILE_FORMS", forms)
    resets = []
    reset = torch.compiler.reset
    monkeypatch.setattr(torch.compiler, "reset", lambda: (resets.append(1), reset()))
    model = save_tiny("bert", tmp_path / "bert", dropout=0.0, layers=2)
    trainer = ProxyTrainer(Fidelity(model=model, task=toy_task, steps=2, batch_size=8, train_examples=32,
                                    eval_examples=8, max_length=24, compile=True))
    plans = [PeftPlan.from_modules(2, {0: [ModuleSpec("lora", "q", 4)]}),
             PeftPlan.from_modules(2, {1: [ModuleSpec("lora", "v", 4)]}),
             PeftPlan.from_modules(2, {0: [ModuleSpec("ia3", "k", 0)], 1: [ModuleSpec("lora", "q", 2)]}),
             PeftPlan.from_modules(2, {1: [ModuleSpec("ia3", "down", 0)]})]
    compiled = []
    with caplog.at_level("WARNING", logger="torch._dynamo"):
        for plan in plans:
            before = counters["frames"]["ok"]
            trainer.run(plan)
            compiled.append(counters["frames"]["ok"] - before)
        again = counters["frames"]["ok"]
        trainer.run(plans[0])
    assert not [r for r in caplog.records if "recompile_limit" in r.getMessage()]
    assert sum(compiled) > 8 and all(n > 0 for n in compiled)  # more forms than torch keeps by default, all compiled
    if forms == proxy_train.COMPILE_FORMS:
        assert not resets and counters["frames"]["ok"] == again  # a plan seen before compiles nothing
    else:
        assert resets  # the small cache was emptied between trials, never overrun


def test_adamw_is_torchs_fused_kernel_unless_turned_off(tmp_path):
    """One fused AdamW per trial on CPU (a handful of operations a step, not one to ten per parameter tensor)."""
    from autopeft.plan import PeftPlan
    from autopeft.proxy.fidelity import Fidelity
    from autopeft.proxy.train import ProxyTrainer

    trainer = ProxyTrainer(Fidelity.build({"steps": 2, "train_examples": 16, "eval_examples": 8, "batch_size": 8,
                                           "max_length": 16}))
    model = trainer.build_model(PeftPlan(6))  # head only, on the packaged 6-block MiniLM
    assert trainer.make_optimizer(model)[0].defaults["fused"] is True
    trainer.fused_adamw = False
    assert not trainer.make_optimizer(model)[0].defaults["fused"]


def test_the_compiled_form_limit_reaches_torch_with_or_without_its_argument(monkeypatch):
    """torch.compile takes ``recompile_limit`` in recent builds; pyproject allows torch >= 2.4, whose compile has no
    such argument (passing it would fail every compiled trial): there dynamo's global setting carries the limit."""
    from torch._dynamo import config

    assert proxy_train._form_limit() == {"recompile_limit": proxy_train.COMPILE_FORMS}

    def old_compile(model=None, *, fullgraph=False, dynamic=None, backend="inductor", mode=None, options=None,
                    disable=False):
        return model

    monkeypatch.setattr(torch, "compile", old_compile)
    monkeypatch.setattr(config, "recompile_limit", 8)
    assert proxy_train._form_limit() == {}
    assert config.recompile_limit == proxy_train.COMPILE_FORMS


def test_cpu_trials_draw_autopeft_dropout_masks(tmp_path, toy_task):
    """On CPU the trainer's models draw dropout with autopeft's mask (another random stream than torch's); off
    (``fast_dropout = False``) or under ``compile`` they keep torch's. Without dropout both give the same trial."""
    from autopeft.kernels import Dropout
    from autopeft.peft.prefix_attention import SDPA

    plan = PeftPlan.from_modules(2, {i: [ModuleSpec("lora", "v", 4)] for i in range(2)})
    results = {}
    for p in (0.1, 0.0):
        fid = Fidelity(model=save_tiny("bert", tmp_path / f"bert-{p}", dropout=p), task=toy_task, steps=8,
                       batch_size=8, train_examples=64, eval_examples=16, max_length=16)
        for fast in (True, False):
            trainer = ProxyTrainer(fid)
            trainer.fast_dropout = fast
            net = trainer.configure(trainer.build_model(plan))
            assert (net.config._attn_implementation == SDPA) is fast
            assert any(type(m) is Dropout for m in net.modules()) is fast
            results[p, fast] = trainer.run(plan)
    assert results[0.1, True].train_loss != results[0.1, False].train_loss  # another random stream
    assert results[0.0, True].train_loss == pytest.approx(results[0.0, False].train_loss, rel=1e-5)
    assert results[0.0, True].score == results[0.0, False].score
    compiled = ProxyTrainer(fid.model_copy(update={"compile": True}))
    net = compiled.configure(compiled.build_model(plan))
    assert net.config._attn_implementation == "sdpa" and not any(type(m) is Dropout for m in net.modules())
