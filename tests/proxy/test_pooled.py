"""``pooled_only``: the last block cut to the token the classifier reads changes no logit and no gradient."""

import copy

import pytest
import torch
from tiny_proxy import perturb_trainable, tiny_task_and_models

from autopeft.errors import StudyError
from autopeft.peft.arch import get_arch
from autopeft.peft.methods import REGISTRY
from autopeft.plan import ModuleSpec as M
from autopeft.plan import PeftPlan
from autopeft.proxy.fidelity import Fidelity
from autopeft.proxy.pooled import cut_last_block, cut_reason, is_cut, queries_cut, query_cut_reason
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
    experts_on_every_query = spec.method == "lora_experts" and spec.site in ("q", "o")
    assert queries_cut(cut) is not experts_on_every_query
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


def test_the_cut_block_computes_one_query_and_every_key(setup):
    trainer = ProxyTrainer(_fidelity(setup))
    model = trainer.build_model(PeftPlan.from_modules(LAYERS, {LAST: [M("lora", "q", 2), M("prefix", "attn", 2)]}))
    assert cut_last_block(model) and queries_cut(model)
    last = get_arch(model).layers(model)[-1]
    seen = {}
    for name in ("query", "key", "value"):
        last.attention.self.get_submodule(name).register_forward_hook(
            lambda m, a, out, name=name: seen.update({name: out.shape}))
    last.attention.output.dense.register_forward_hook(lambda m, a, out: seen.update(o=out.shape))
    batch = trainer._inputs(trainer.eval_data, torch.arange(4))
    with torch.no_grad():
        model(**batch)
    t = batch["input_ids"].shape[1]
    assert t > 1 and seen == {"query": (4, 1, 32), "key": (4, t, 32), "value": (4, t, 32), "o": (4, 1, 32)}


def test_experts_on_the_last_query_keep_every_query(setup):
    trainer = ProxyTrainer(_fidelity(setup))
    for site, reason in (("q", True), ("o", True), ("k", False), ("v", False)):
        spec = M("lora_experts", site, 2, num_experts=2, top_k=1)
        model = trainer.build_model(PeftPlan.from_modules(LAYERS, {LAST: [spec]}))
        assert (query_cut_reason(model) is not None) is reason, site
        assert cut_last_block(model) and queries_cut(model) is not reason, site
    plain = trainer.build_model(PeftPlan.from_modules(LAYERS, {LAST: [M("lora", "q", 2)]}))
    assert cut_last_block(plain, queries=False) and is_cut(plain) and not queries_cut(plain)


@pytest.mark.parametrize("family", ["roberta", "xlm-roberta", "electra"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_the_query_cut_in_every_bert_family(family, attention):
    """The first-query forward stands in for each family's own self-attention: same logits and gradients, on a
    padded batch, with a query LoRA, a parallel adapter (it reads the query's input) and a prefix in the last block."""
    import transformers

    from autopeft.peft import apply_plan

    config_cls, model_cls = {
        "roberta": (transformers.RobertaConfig, transformers.RobertaForSequenceClassification),
        "xlm-roberta": (transformers.XLMRobertaConfig, transformers.XLMRobertaForSequenceClassification),
        "electra": (transformers.ElectraConfig, transformers.ElectraForSequenceClassification),
    }[family]
    torch.manual_seed(0)
    cfg = config_cls(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     attn_implementation=attention, **({"embedding_size": 32} if family == "electra" else {}))
    base = model_cls(cfg)
    plan = PeftPlan.from_modules(2, {1: [M("lora", "q", 2), M("parallel_adapter", "attn", 4), M("prefix", "attn", 2)]})
    ids = torch.randint(5, 99, (3, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    outs = []
    for cut in (False, True):
        model = perturb_trainable(apply_plan(copy.deepcopy(base), plan, seed=0)).train()
        if cut:
            assert cut_last_block(model) and queries_cut(model)
        out = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 2]))
        out.loss.backward()
        outs.append((out.logits, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    (la, ga), (lb, gb) = outs
    torch.testing.assert_close(lb, la, rtol=1e-5, atol=1e-6)
    for name in ga:
        torch.testing.assert_close(gb[name], ga[name], rtol=1e-4, atol=1e-6, msg=name)


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
