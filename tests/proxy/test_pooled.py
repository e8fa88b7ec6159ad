"""``pooled_only``: the last block cut to the token the classifier reads changes no logit and no gradient."""

import pytest
import torch
from tiny_proxy import perturb_trainable, tiny_task_and_models

from autopeft.errors import StudyError
from autopeft.peft.arch import get_arch
from autopeft.peft.methods import REGISTRY
from autopeft.plan import ModuleSpec as M
from autopeft.plan import PeftPlan
from autopeft.proxy.fidelity import Fidelity
from autopeft.proxy.pooled import cut_last_block, cut_reason, is_cut
from autopeft.proxy.train import ProxyTrainer, check_options

LAYERS = 3
LAST = LAYERS - 1


def _every_method() -> list[M]:
    """One module per method and variant on each of its sites that BERT has (experts only inside the attention
    sub-layer)."""
    out = []
    for name, method in REGISTRY.items():
        for variant in method.variants or (None,):
            size = 8 if method.size_means else 0
            for site in method.sites:
                if site == "gate" or (name == "lora_experts" and site not in ("q", "k", "v", "o")):
                    continue
                experts = dict(num_experts=2, top_k=1) if name == "lora_experts" else {}
                out.append(M(name, site, size, variant=variant, **experts))
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_task_and_models(tmp_path_factory.mktemp("pooled"), 96, dropout=0.0, layers=LAYERS)


def _fidelity(setup, kind="bert", **kw) -> Fidelity:
    task, models = setup
    base = dict(model=models[kind], task=task, steps=6, batch_size=8, train_examples=48, eval_examples=16,
                max_length=24, learning_rate=1e-2)
    return Fidelity(**{**base, **kw})


@pytest.mark.parametrize("spec", _every_method(), ids=lambda s: f"{s.method}-{s.site}-{s.variant}")
def test_a_cut_last_block_gives_the_same_logits_and_gradients(setup, spec):
    trainer = ProxyTrainer(_fidelity(setup))
    plan = PeftPlan.from_modules(LAYERS, {1: [M("lora", "q", 2)], LAST: [spec]})
    full = perturb_trainable(trainer.build_model(plan)).train()
    cut = perturb_trainable(trainer.build_model(plan)).train()
    assert cut_reason(cut) is None and cut_last_block(cut) and is_cut(cut)
    batch = trainer._inputs(trainer.train_data, torch.arange(8))
    labels = trainer.train_data.labels[:8]
    outs = []
    for model in (full, cut):
        out = model(**batch, labels=labels)
        out.loss.backward()
        outs.append((out.logits, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    (la, ga), (lb, gb) = outs
    torch.testing.assert_close(lb, la, rtol=1e-5, atol=1e-6)
    assert ga.keys() == gb.keys()
    for name in ga:
        if ga[name] is None:
            assert gb[name] is None, name
        else:
            torch.testing.assert_close(gb[name], ga[name], rtol=1e-4, atol=1e-6, msg=name)


def test_the_cut_block_computes_one_position(setup):
    trainer = ProxyTrainer(_fidelity(setup))
    model = trainer.build_model(PeftPlan(LAYERS))
    cut_last_block(model)
    seen = []
    get_arch(model).layers(model)[-1].intermediate.register_forward_hook(lambda m, a, out: seen.append(out.shape))
    batch = trainer._inputs(trainer.eval_data, torch.arange(4))
    with torch.no_grad():
        model(**batch)
    assert seen == [torch.Size([4, 1, 64])]  # the feed-forward ran for the first token of each row


def test_experts_after_the_cut_keep_the_whole_block(setup):
    trainer = ProxyTrainer(_fidelity(setup))
    experts = M("lora_experts", "up", 2, num_experts=2, top_k=1)
    model = trainer.build_model(PeftPlan.from_modules(LAYERS, {LAST: [experts]}))
    assert "load-balancing" in cut_reason(model)
    assert not cut_last_block(model) and not is_cut(model)
    below = trainer.build_model(PeftPlan.from_modules(LAYERS, {1: [experts]}))  # not in the last block: cut
    assert cut_last_block(below)


def test_a_trial_with_the_cut_trains_and_scores_as_without(setup):
    plan = PeftPlan.from_modules(LAYERS, {1: [M("lora", "v", 4)], LAST: [M("serial_adapter", "ffn", 4)]})
    (a, b) = (ProxyTrainer(_fidelity(setup, pooled_only=on)).run(plan) for on in (False, True))
    assert b.train_loss == pytest.approx(a.train_loss, rel=1e-4)  # no dropout in this model: no other masks
    assert (b.score, b.test_score) == (a.score, a.test_score)
    for name, t in a.adapter_state.items():
        torch.testing.assert_close(b.adapter_state[name], t, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("cache_mb", [None, 0.0])
def test_head_only_plans_under_the_frozen_cache(setup, cache_mb):
    """Fed past the last block (nothing to cut), or, when the states do not fit, computed with padding zeroed."""
    plan = PeftPlan(LAYERS)
    fid = _fidelity(setup, frozen_cache=True)
    a = ProxyTrainer(fid, cache_mb=cache_mb).run(plan)
    cut = ProxyTrainer(fid.model_copy(update={"pooled_only": True}), cache_mb=cache_mb)
    assert cut.cached_layers(plan) == (LAYERS if cache_mb is None else 0)
    b = cut.run(plan)
    assert b.train_loss == pytest.approx(a.train_loss, rel=1e-4) and b.score == a.score


def test_other_families_are_refused(setup):
    with pytest.raises(StudyError, match=r"--pooled-only: 'llama' models .*drop --pooled-only.*bert"):
        check_options(_fidelity(setup, "llama", pooled_only=True), "cpu")
    with pytest.raises(StudyError, match="--pooled-only"):
        ProxyTrainer(_fidelity(setup, "llama", pooled_only=True))
    check_options(_fidelity(setup, pooled_only=True), "cpu")
