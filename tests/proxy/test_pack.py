"""Several plans trained together (``--pack``) give what each gets alone, on tiny BERT and LLaMA classifiers."""

import pytest
import torch

from autopeft.plan import ModuleSpec as M
from autopeft.plan import PeftPlan
from autopeft.proxy.fidelity import Fidelity
from autopeft.proxy.pack import PackedTrainer, PackError, RowSplit, check_pack
from autopeft.proxy.pooled import is_cut, queries_cut
from autopeft.proxy.train import ProxyTrainer, TrialFailed

#: one plan per kind of module site: low-rank, serial/parallel adapter, scales, prefix (attention), experts, none
PLANS = [
    PeftPlan.from_modules(2, {0: [M("lora", "q", 4), M("lora", "v", 4)]}),
    PeftPlan.from_modules(2, {1: [M("serial_adapter", "ffn", 4), M("ia3", "k")]}),
    PeftPlan.from_modules(2, {0: [M("prefix", "attn", 3)], 1: [M("lora_experts", "q", 2, num_experts=3, top_k=2)]}),
    PeftPlan.from_modules(2, {1: [M("parallel_adapter", "attn", 4), M("ssf", "o")]}),
    PeftPlan(2),
    PeftPlan.from_modules(2, {1: [M("compacter", "ffn", 8)]}),  # its rule matrices are shared by the plan's layers
]


def _trainer(models, kind, task, dropout=0.0, seed=0, cache_mb=None, **options) -> ProxyTrainer:
    return ProxyTrainer(Fidelity(model=models[kind, dropout], task=task, steps=16, batch_size=8, train_examples=96,
                                 eval_examples=24, max_length=16, learning_rate=1e-2, seed=seed, **options),
                        cache_mb=cache_mb)


@pytest.mark.parametrize("kind, buckets", [("bert", True), ("llama", False)])
def test_packed_trials_equal_solo_trials_without_dropout(kind, buckets, models, task):
    trainer = _trainer(models, kind, task, length_buckets=buckets)
    alone = [trainer.run(p) for p in PLANS]
    packed = PackedTrainer(trainer, 4).run_many(PLANS)  # a pack of 4, then a pack of 2
    for a, b in zip(alone, packed):
        assert b.score == a.score and b.test_score == a.test_score
        assert b.train_loss == pytest.approx(a.train_loss, rel=1e-5)
        assert b.trainable_params == a.trainable_params and b.module_params == a.module_params
        assert a.adapter_state.keys() == b.adapter_state.keys()
        for name, tensor in a.adapter_state.items():
            torch.testing.assert_close(b.adapter_state[name], tensor, rtol=1e-4, atol=1e-5)
    assert any(a.train_loss != alone[0].train_loss for a in alone[1:])  # the plans really differ


@pytest.mark.parametrize("options", [{"gradient_checkpointing": True}, {"autocast": "bf16"}])
def test_packed_trials_apply_the_fidelity_options(options, models, task):
    trainer = _trainer(models, "bert", task, **options)
    plans = PLANS[:2]
    alone = [trainer.run(p) for p in plans]
    packed = PackedTrainer(trainer, 2).run_many(plans)
    loose = options.get("autocast") == "bf16"  # bf16 matmuls: rounding differs with the batch's shape
    for a, b in zip(alone, packed):
        assert b.train_loss == pytest.approx(a.train_loss, rel=2e-2 if loose else 1e-5)
        if not loose:
            assert b.score == a.score


def test_packed_trials_equal_solo_trials_with_the_last_block_cut(models, task):
    """``pooled_only`` in a pack: its last block is cut unless a trial puts LoRA experts after the cut there."""
    experts = PeftPlan.from_modules(2, {1: [M("lora_experts", "up", 2, num_experts=2, top_k=1)]})
    trainer = _trainer(models, "bert", task, pooled_only=True, frozen_cache=True)
    for plans, cut in ((PLANS[:4], True), ([PLANS[0], experts], False)):
        pack = PackedTrainer(trainer, len(plans))
        assert is_cut(pack.packed_model([pack.build_model(p) for p in plans])[0]) == cut
        alone = [trainer.run(p) for p in plans]
        for a, b in zip(alone, pack.run_many(plans)):
            assert b.score == a.score and b.train_loss == pytest.approx(a.train_loss, rel=1e-5)
            for name, tensor in a.adapter_state.items():
                torch.testing.assert_close(b.adapter_state[name], tensor, rtol=1e-4, atol=1e-5)


def test_a_pack_cuts_the_last_queries_unless_its_trials_split_that_attention(models, task):
    """A prefix in the last block makes that self-attention a per-trial split: the pack keeps every query there."""
    trainer = _trainer(models, "bert", task, pooled_only=True, frozen_cache=True)
    prefix_last = PeftPlan.from_modules(2, {1: [M("prefix", "attn", 3)]})
    for plans, queries in (([PLANS[0], PLANS[1], PLANS[3]], True), ([PLANS[0], prefix_last], False)):
        pack = PackedTrainer(trainer, len(plans))
        packed = pack.packed_model([pack.build_model(p) for p in plans])[0]
        assert is_cut(packed) and queries_cut(packed) == queries
        alone = [trainer.run(p) for p in plans]
        for a, b in zip(alone, pack.run_many(plans)):
            assert b.score == a.score and b.train_loss == pytest.approx(a.train_loss, rel=1e-5)


def test_packed_trials_equal_solo_trials_with_the_frozen_layer_cache(models, task):
    """Plans of different depths share one pack fed from the cache at the lowest of them; the blocks between run
    without dropout for the deeper plans' rows only, with padding zeroed where each plan starts."""
    trainer = _trainer(models, "bert", task, frozen_cache=True)
    alone = [trainer.run(p) for p in PLANS]
    pack = PackedTrainer(trainer, 6)
    packed, start = pack.packed_model([pack.build_model(p) for p in PLANS])
    assert [trainer.frozen_layers(p) for p in PLANS] == [0, 1, 0, 1, 2, 1]
    assert start == 0  # the LoRA plan starts at block 0: nothing below it to feed
    results = pack.run_many(PLANS)
    for a, b in zip(alone, results):
        assert b.score == a.score and b.train_loss == pytest.approx(a.train_loss, rel=1e-5)
    fed = PackedTrainer(trainer, 2)
    packed, start = fed.packed_model([fed.build_model(p) for p in (PLANS[1], PLANS[3])])  # both start at block 1
    assert start == 1
    for a, b in zip((alone[1], alone[3]), fed.run_many([PLANS[1], PLANS[3]])):
        assert b.score == a.score and b.train_loss == pytest.approx(a.train_loss, rel=1e-5)


def test_a_pack_of_one_with_dropout_and_frozen_blocks_is_the_solo_trial(models, task):
    """With the cache off (budget 0) the blocks below the plan run in the pack, without dropout, as alone: a pack
    of one draws the same dropout masks as the solo trial, so the two agree exactly."""
    trainer = _trainer(models, "bert", task, dropout=0.1, cache_mb=0, frozen_cache=True)
    plan = PLANS[1]  # modules in block 1 only
    alone = trainer.run(plan)
    (packed,) = PackedTrainer(trainer, 1).run_many([plan])
    assert packed.score == alone.score and packed.train_loss == pytest.approx(alone.train_loss, rel=1e-6)


def test_one_copy_of_the_base_weights_and_one_batched_forward(models, task):
    trainer = _trainer(models, "bert", task)
    pack = PackedTrainer(trainer, 3)
    models = [pack.build_model(p) for p in PLANS[:3]]
    frozen = [{p.data_ptr() for p in m.parameters() if not p.requires_grad} for m in models]
    assert frozen[0] == frozen[1] == frozen[2] == {p.data_ptr() for p in trainer._base.bert.parameters()}
    heads = [m.classifier.weight for m in models]
    assert heads[0].data_ptr() != heads[1].data_ptr() and all(h.requires_grad for h in heads)  # each trains its own
    packed, start = pack.packed_model(models)
    assert start == 0  # no frozen-layer cache in this fidelity
    splits = {n: m for n, m in packed.named_modules() if isinstance(m, RowSplit)}
    # every module a plan changed is split by rows; the rest (embeddings, untouched linears, norms) runs once
    assert "classifier" in splits and "bert.encoder.layer.1.output.dense" in splits
    assert "bert.encoder.layer.0.attention.self" in splits  # the prefix plan's attention, with the LoRA plan's q, v
    assert not any(n.startswith("bert.embeddings") or n.startswith("bert.encoder.layer.1.intermediate") for n in splits)
    assert all(len(m.parts) == 3 for m in splits.values())


def test_a_diverging_trial_fails_alone(models, task, monkeypatch):
    trainer = _trainer(models, "bert", task)
    pack = PackedTrainer(trainer, 3)
    build = pack.build_model
    calls = {"n": 0}

    def poisoned(plan):
        model = build(plan)
        if plan == PLANS[1]:  # this trial's logits turn NaN from step 5 on
            def hook(mod, args, out):
                calls["n"] += 1
                return out * float("nan") if calls["n"] > 5 else out
            model.classifier.register_forward_hook(hook)
        return model

    monkeypatch.setattr(pack, "build_model", poisoned)
    results = pack.run_many(PLANS[:3])
    assert isinstance(results[1], TrialFailed) and "loss became nan at step 5" in str(results[1])
    for i in (0, 2):  # the others trained on, exactly as alone
        alone = trainer.run(PLANS[i])
        assert results[i].score == alone.score
        assert results[i].train_loss == pytest.approx(alone.train_loss, rel=1e-5)


def test_with_dropout_packing_stays_within_seeded_noise(models, task):
    """Dropout masks are drawn for the whole pack, so a packed trial is another draw of the same run: its loss
    differs from the solo run by no more than solo runs of other seeds differ among themselves."""
    plans = PLANS[:2]
    solo = {s: [_trainer(models, "bert", task, dropout=0.1, seed=s).run(p).train_loss for p in plans]
            for s in (0, 1, 2)}
    packed = [m.train_loss for m in PackedTrainer(_trainer(models, "bert", task, dropout=0.1), 2).run_many(plans)]
    for i in range(len(plans)):
        spread = max(solo[s][i] for s in solo) - min(solo[s][i] for s in solo)
        assert abs(packed[i] - solo[0][i]) <= 2 * spread


def test_packing_comes_with_a_note_for_the_device():
    from autopeft.proxy.pack import pack_note

    assert "--pack 4 on a CPU" in pack_note(4, "cpu") and "Use --pack 1" in pack_note(4, "cpu")
    assert "--pack 8 on a GPU" in pack_note(8, "cuda:0") and "--processes N" in pack_note(8, "cuda:0")
    assert pack_note(1, "cpu") is None and pack_note(1, "cuda") is None and pack_note(8, "not-a-device") is None


def test_pack_option_is_checked():
    check_pack(1, ("score", "step_time"))  # one at a time measures anything
    check_pack(8, ("score", "trainable_pct"))
    with pytest.raises(PackError, match="--pack: must be at least 1 .got 0."):
        check_pack(0, ("score",))
    with pytest.raises(PackError, match="--pack: the study optimises step_time.*--pack 1"):
        check_pack(4, ("score", "step_time"))
    check_pack(4, ("score",), Fidelity(length_buckets=True))  # which examples share a batch: the same for all
    check_pack(4, ("score",), Fidelity(autocast="bf16", gradient_checkpointing=True, frozen_cache=True))
    with pytest.raises(PackError, match=r"--compile \(True\).*--pack 1"):
        check_pack(2, ("score",), Fidelity(compile=True))
