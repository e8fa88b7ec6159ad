"""The frozen-layer cache: a cached trial is the uncached trial with no dropout below the plan, on tiny BERT and LLaMA."""

import pytest
import torch
from tiny_proxy import tiny_task_and_models

from autopeft.errors import StudyError
from autopeft.peft.arch import get_arch
from autopeft.peft.methods import REGISTRY
from autopeft.plan import ModuleSpec as M
from autopeft.plan import PeftPlan
from autopeft.proxy import cache as fc
from autopeft.proxy.fidelity import Fidelity
from autopeft.proxy.train import ProxyTrainer

LAYERS = 3
#: modules of every kind on block 1: low-rank (with experts), adapters, scales, prefix
MIXED = [M("lora", "q", 4), M("lora_experts", "v", 2, num_experts=3, top_k=2), M("serial_adapter", "ffn", 4),
         M("parallel_adapter", "attn", 4), M("ia3", "k"), M("ssf", "o"), M("prefix", "attn", 3)]


def _every_method() -> list[M]:
    """One module per method and variant, on each method's first site."""
    out = []
    for name, method in REGISTRY.items():
        for variant in method.variants or (None,):
            size = 8 if method.size_means else 0  # 8: a multiple of Compacter's n = 4
            experts = dict(num_experts=2, top_k=1) if name == "lora_experts" else {}
            out.append(M(name, method.sites[0], size, variant=variant, **experts))
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_task_and_models(tmp_path_factory.mktemp("cache"), 160, dropout=0.1, layers=LAYERS)


def _fidelity(setup, kind, **kw) -> Fidelity:
    task, models = setup
    base = dict(model=models[kind], task=task, steps=8, batch_size=8, train_examples=64, eval_examples=16,
                max_length=24, learning_rate=1e-2, frozen_cache=True)
    return Fidelity(**{**base, **kw})


def _trial(trainer: ProxyTrainer, plan: PeftPlan):
    losses: list[float] = []
    metrics = trainer.run(plan, on_step=lambda step, loss: losses.append(loss))
    return metrics, losses


def test_first_adapted_layer():
    assert fc.first_adapted_layer(PeftPlan(4)) == 4  # head only: every block is frozen
    assert fc.first_adapted_layer(PeftPlan.from_modules(4, {2: [M("ia3", "k")], 3: [M("lora", "q", 2)]})) == 2
    assert fc.first_adapted_layer(PeftPlan.from_modules(4, {0: [M("prefix", "attn", 2)]})) == 0


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_no_method_changes_the_blocks_below_it(setup, kind):
    """The cache's premise, for every method and variant: a plan on block 1 leaves what leaves block 0 unchanged."""
    trainer = ProxyTrainer(_fidelity(setup, kind))
    batch = trainer._inputs(trainer.eval_data, torch.arange(8))
    grab = []
    for spec in _every_method():
        model = trainer.build_model(PeftPlan.from_modules(LAYERS, {1: [spec]})).eval()
        for net in (trainer._base, model):
            hook = get_arch(net).layers(net)[0].register_forward_hook(lambda m, a, out: grab.append(out))
            with torch.no_grad():
                net(**batch)
            hook.remove()
        assert torch.allclose(grab[-2], grab[-1], rtol=1e-6, atol=1e-6), spec


@pytest.mark.parametrize("kind", ["bert", "llama"])
@pytest.mark.parametrize("where", ["mixed@1", "head only"])
def test_cached_trial_equals_uncached_without_lower_dropout(setup, kind, where):
    plan = {"mixed@1": PeftPlan.from_modules(LAYERS, {1: MIXED, 2: [M("lora", "v", 2)]}),
            "head only": PeftPlan(LAYERS)}[where]
    fid = _fidelity(setup, kind, length_buckets=True)
    cached = ProxyTrainer(fid)
    plain = ProxyTrainer(fid, use_cache=False)
    assert cached.cached_layers(plan) == fc.first_adapted_layer(plan) and plain.cached_layers(plan) == 0
    (a, la), (b, lb) = _trial(cached, plan), _trial(plain, plan)
    depth = fc.first_adapted_layer(plan)  # train, validation and test states at the plan's depth and those below
    splits = ("train", "validation", "test")
    assert sorted(cached.cache.keys()) == sorted((s, d) for s in splits for d in range(1, depth + 1))
    assert la == pytest.approx(lb, rel=1e-5)  # upper blocks keep their dropout: the same masks are drawn
    assert (a.score, a.test_score) == (b.score, b.test_score)
    for name, t in a.adapter_state.items():
        assert torch.allclose(t, b.adapter_state[name], rtol=1e-5, atol=1e-6), name
    again, _ = _trial(cached, plan)  # the second trial reads the cache
    assert cached.cache.hits >= 3 and again.score == a.score


def test_frozen_blocks_have_no_dropout_and_the_rest_keep_it(setup):
    trainer = ProxyTrainer(_fidelity(setup, "bert"), use_cache=False)
    model = trainer.train_mode(trainer.build_model(PeftPlan.from_modules(LAYERS, {2: [M("lora", "q", 2)]})))
    arch = get_arch(model)
    assert not arch.embeddings(model).training
    assert [b.training for b in arch.layers(model)] == [False, False, True]
    assert model.classifier.training


def test_deeper_states_are_built_from_shallower_ones(setup):
    trainer = ProxyTrainer(_fidelity(setup, "llama"))
    direct = trainer.hidden_states(trainer.eval_data, 2)
    stepwise = ProxyTrainer(_fidelity(setup, "llama"))
    stepwise.hidden_states(stepwise.eval_data, 1)
    via = stepwise.hidden_states(stepwise.eval_data, 2)  # runs block 1 only, from the cached states entering it
    assert torch.equal(direct.lengths, via.lengths)
    assert torch.allclose(direct.flat, via.flat, rtol=1e-5, atol=1e-6)


def test_states_between_are_kept_from_the_same_pass_and_reused(setup, monkeypatch):
    """A plan starting at block 2 computes blocks 0 and 1 once; the states entering block 1 come out of that pass
    too, so a later plan starting at block 1 computes no frozen block and trains exactly as on a fresh trainer."""
    low = PeftPlan.from_modules(LAYERS, {1: [M("lora", "v", 4)]})
    high = PeftPlan.from_modules(LAYERS, {2: [M("lora", "v", 4)]})
    trainer = ProxyTrainer(_fidelity(setup, "bert"))
    _trial(trainer, high)
    assert {k for k in trainer.cache.keys()} == {(s, d) for s in ("train", "validation", "test") for d in (1, 2)}
    capture, calls = fc.capture, []
    monkeypatch.setattr(fc, "capture", lambda *a, **kw: calls.append(a[1]) or capture(*a, **kw))
    (again, again_losses) = _trial(trainer, low)
    assert calls == []  # nothing below the plan computed again
    fresh = ProxyTrainer(_fidelity(setup, "bert"))
    (alone, alone_losses) = _trial(fresh, low)
    assert calls == [[1]] * 3  # the fresh trainer computed block 0 for each split
    assert again.score == alone.score and again_losses == pytest.approx(alone_losses, rel=1e-6)


def test_offered_states_never_evict(tmp_path):
    def entry(fill):  # 10 tokens of width 4, float32: 176 bytes
        return fc.pack_states([torch.full((10, 4), float(fill))], torch.float32)

    cache = fc.FrozenCache(budget_bytes=2 * 176)
    cache.put("a", entry(1))
    assert cache.offer("b", entry(2)) and not cache.offer("b", entry(3))  # kept once
    assert not cache.offer("c", entry(4))  # no room beside a and b: not kept, nothing evicted
    assert cache.keys() == ["a", "b"] and torch.equal(cache.get("b").flat, entry(2).flat)


def test_bfloat16_cache_halves_memory_and_stays_close(setup):
    plan = PeftPlan.from_modules(LAYERS, {1: [M("lora", "q", 4)]})
    f32 = ProxyTrainer(_fidelity(setup, "bert"))
    b16 = ProxyTrainer(_fidelity(setup, "bert", frozen_cache_dtype="bfloat16"))
    (_, la), (_, lb) = _trial(f32, plan), _trial(b16, plan)
    assert b16.cache.nbytes * 2 == f32.cache.nbytes
    assert lb == pytest.approx(la, rel=2e-2)  # bf16 keeps 8 bits of mantissa: ~0.4 % per stored value


def test_budget_evicts_least_recently_used_and_disk_keeps_entries(tmp_path):
    def entry(n, fill):  # n tokens of width 4, float32: (n + 1) * 16 bytes
        return fc.pack_states([torch.full((n, 4), float(fill))], torch.float32)

    cache = fc.FrozenCache(budget_bytes=3 * 16 * 11, directory=tmp_path)
    for key in ("a", "b", "c"):
        cache.put(key, entry(10, ord(key)), disk_key=key)
    cache.get("a")  # a is now the most recent
    cache.put("d", entry(10, 1), disk_key="d")
    assert cache.keys() == ["c", "a", "d"]  # b, least recently used, went
    assert cache.nbytes <= cache.budget
    reread = fc.FrozenCache(budget_bytes=1 << 20, directory=tmp_path).get("b", disk_key="b")  # another worker
    assert torch.equal(reread.flat, entry(10, ord("b")).flat)
    cache.put("huge", entry(1000, 0))  # above the whole budget: not kept, nothing else evicted
    assert cache.keys() == ["c", "a", "d"]


def test_gather_pads_with_zeros():
    states = fc.pack_states([torch.ones(2, 3), 2 * torch.ones(4, 3), 3 * torch.ones(1, 3)], torch.float32)
    out = states.gather(torch.tensor([2, 0]), width=3)  # (B, T, C)
    assert out.shape == (2, 3, 3)
    assert out[0, :, 0].tolist() == [3, 0, 0] and out[1, :, 0].tolist() == [1, 1, 0]


def test_cache_that_does_not_fit_runs_uncached(setup):
    plan = PeftPlan.from_modules(LAYERS, {1: [M("lora", "q", 4)]})
    trainer = ProxyTrainer(_fidelity(setup, "bert"), cache_mb=0.001)
    assert trainer.frozen_layers(plan) == 1 and trainer.cached_layers(plan) == 0
    reference = ProxyTrainer(_fidelity(setup, "bert"), use_cache=False)
    assert _trial(trainer, plan)[1] == _trial(reference, plan)[1]
    assert trainer.cache.keys() == []


def test_a_bad_cache_budget_is_refused(setup, monkeypatch):
    monkeypatch.setenv("AUTOPEFT_FROZEN_CACHE_MB", "lots")
    with pytest.raises(StudyError, match="AUTOPEFT_FROZEN_CACHE_MB: 'lots'.*2048"):
        ProxyTrainer(_fidelity(setup, "bert"))
