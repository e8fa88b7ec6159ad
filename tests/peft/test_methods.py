"""The shared method table's remaining generic checks (merge, seeding, start state), then each new unit's formula."""

from __future__ import annotations

import pytest
import torch

from autopeft.peft import adapter_state_dict, apply_plan, auxiliary_loss, merge_plan, plan_parameter_count
from autopeft.peft.methods import REGISTRY
from autopeft.peft.modules import (
    AdaptedLinear,
    Compacter,
    CompacterRules,
    DoRA,
    DynMoLEExperts,
    Hydra,
    PHMLinear,
    PrefixKV,
    PrefixMLP,
    SSF,
)
from autopeft.peft.modules.dynmole import tsallis_entropy
from autopeft.plan import ModuleSpec, PeftPlan

MERGE_ATOL = 1e-5


def _perturbed(tiny, kind, plan_name, seed=0):
    """A model whose new tensors moved off their init (as after training), in float32."""
    model = apply_plan(tiny.build(kind), tiny.plan(plan_name), seed=seed)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _merges(plan: PeftPlan) -> bool:
    return any(REGISTRY[m.method].merges and (m.method != "prefix" or m.variant == "mlp") for _, m in plan.modules())


def test_merge_keeps_outputs_within_tolerance(tiny, kind, plan_name):
    model = _perturbed(tiny, kind, plan_name)
    ids = tiny.ids()
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    before = tiny.logits(model, ids, attention_mask=mask)
    n_params = sum(p.numel() for p in model.parameters())
    merged = merge_plan(model)
    after = tiny.logits(model, ids, attention_mask=mask)
    torch.testing.assert_close(after, before, atol=MERGE_ATOL, rtol=0)
    if _merges(tiny.plan(plan_name)):
        assert merged > 0 and sum(p.numel() for p in model.parameters()) < n_params
    else:
        assert merged == 0


@pytest.mark.parametrize("plan_name", ["lora", "lora_dora", "ia3", "ssf", "hydra"])
def test_fully_merged_linears_become_plain_linears(tiny, plan_name):
    model = _perturbed(tiny, "llama_lm", plan_name)
    merge_plan(model)
    assert not any(isinstance(m, AdaptedLinear) for m in model.modules())
    assert not any(p.requires_grad for n, p in model.named_parameters() if not n.startswith("lm_head"))


def test_same_seed_same_init_other_seed_other_init(tiny, kind, plan_name):
    states = [adapter_state_dict(apply_plan(tiny.build(kind), tiny.plan(plan_name), seed=s)) for s in (5, 5, 6)]
    assert states[0].keys() == states[1].keys() == states[2].keys()
    assert all(torch.equal(states[0][n], states[1][n]) for n in states[0])
    if plan_name in ("ia3", "ssf"):  # constant init (ones / zeros): nothing for a seed to change
        return
    new = [n for n in states[0] if not n.startswith(("classifier", "score", "lm_head"))]
    assert any(not torch.equal(states[0][n], states[2][n]) for n in new)


def test_every_method_but_prefix_starts_as_the_base_model(tiny, kind, plan_name):
    if plan_name.startswith("prefix") or plan_name == "mixed":
        pytest.skip("prefix tuning changes outputs from step 0 (see test_inject.test_prefix_changes_outputs)")
    ids = tiny.ids()
    before = tiny.logits(tiny.build(kind), ids)
    after = tiny.logits(apply_plan(tiny.build(kind), tiny.plan(plan_name), seed=0), ids)
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)


# ----------------------------------------------------------------- formulas of the new units
def _rand_(module, seed=1, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module


def test_dora_formula_and_detached_norm():
    base = torch.nn.Linear(6, 5)
    dora = DoRA(base, rank=3, scaling=2.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(dora.magnitude, torch.linalg.norm(base.weight, dim=1))
    _rand_(dora)
    x = torch.randn(4, 6)
    w = base.weight + 2.0 * dora.lora_B @ dora.lora_A
    expected = (dora.magnitude / torch.linalg.norm(w, dim=1))[None] * (x @ w.T) + base.bias
    torch.testing.assert_close(dora.combine(base(x), x, base), expected)
    # the norm passes no gradient: d/dm of the output is exactly (W' x) / ||W'||
    dora.combine(base(x), x, base).sum().backward()
    torch.testing.assert_close(dora.magnitude.grad, ((x @ w.T) / torch.linalg.norm(w, dim=1)[None]).sum(0))


def test_rslora_scale_is_alpha_over_sqrt_rank():
    assert ModuleSpec("lora", "q", 16, alpha=8.0, variant="rslora").scaling == pytest.approx(2.0)
    assert ModuleSpec("lora", "q", 16, alpha=8.0).scaling == pytest.approx(0.5)
    assert ModuleSpec("lora", "q", 16, alpha=8.0, variant="dora").scaling == pytest.approx(0.5)


def test_hydra_formula():
    hydra = _rand_(Hydra(6, 5, rank=2, scaling=1.5, generator=torch.Generator().manual_seed(0)))
    lin = AdaptedLinear(torch.nn.Linear(6, 5))
    lin.hydra = hydra
    x = torch.randn(3, 6)
    seq = x + 1.5 * x @ hydra.seq_A.T @ hydra.seq_B.T
    expected = lin.base_layer(seq) + 1.5 * x @ hydra.par_A.T @ hydra.par_B.T
    torch.testing.assert_close(lin(x), expected)


def test_ssf_scales_then_shifts():
    ssf = SSF(3)
    with torch.no_grad():
        ssf.scale.copy_(torch.tensor([1.0, 2.0, -1.0]))
        ssf.shift.copy_(torch.tensor([0.5, 0.0, 1.0]))
    assert torch.equal(ssf(torch.ones(2, 3)), torch.tensor([[1.5, 2.0, 0.0]] * 2))


def test_phm_weight_is_a_sum_of_kronecker_products():
    rules = CompacterRules(4, torch.Generator().manual_seed(0))
    phm = PHMLinear(rules, "down", 8, 12, torch.Generator().manual_seed(1))
    fast = [torch.outer(phm.s[i], phm.t[i]) for i in range(4)]  # (2, 3) each
    expected = sum(torch.kron(rules.down[i], fast[i]) for i in range(4))  # (8, 12)
    torch.testing.assert_close(phm.weight(), expected)
    x = torch.randn(5, 8)
    torch.testing.assert_close(phm(x), x @ expected + phm.bias)


def test_compacter_rules_are_shared_across_layers_and_counted_once(tiny):
    model = apply_plan(tiny.build("bert_cls"), tiny.plan("compacter"), seed=0)
    compacters = [m for m in model.modules() if isinstance(m, Compacter)]
    assert len(compacters) == 2 * tiny.NUM_LAYERS
    rules = model.bert.autopeft_shared.compacter
    assert all(c.down.rule is rules.down and c.up.rule is rules.up for c in compacters)
    names = [n for n, _ in model.named_parameters() if ".down" in n and "autopeft_shared" in n]
    assert names == ["bert.autopeft_shared.compacter.down"]  # one tensor, one name
    # d = 32, m = 8 (attn) and 4 (ffn): (3d + 3m) per module per layer + 2 n^3 once
    expected = tiny.NUM_LAYERS * ((3 * 32 + 3 * 8) + (3 * 32 + 3 * 4)) + 2 * 4**3
    assert plan_parameter_count(tiny.plan("compacter"), tiny.config("bert_cls")) == expected


def test_compacter_sizes_must_be_multiples_of_n(tiny):
    from autopeft.errors import PlanError

    with pytest.raises(PlanError, match="size.*multiple of 4"):
        ModuleSpec("compacter", "ffn", 6)


def _dynmole(num_experts=5, top_k=1):
    return DynMoLEExperts(12, 10, 2, num_experts, top_k, scaling=1.0, generator=torch.Generator().manual_seed(0))


def test_dynmole_keeps_top_p_mass_and_at_least_k():
    module = _dynmole(top_k=2)
    x = torch.randn(64, 12, generator=torch.Generator().manual_seed(1)) * 3
    gates, probs, chosen = module.route(x)
    assert (chosen.sum(-1) >= 2).all()
    torch.testing.assert_close(gates.sum(-1), torch.ones(64))
    unsure = tsallis_entropy(probs) > module.threshold * tsallis_entropy(torch.full((1, 5), 0.2))
    assert chosen[unsure].all()  # an unsure router sends the token to every expert
    sure = ~unsure
    assert sure.any()
    kept_mass = (probs * chosen).sum(-1)[sure]
    assert (kept_mass >= module.top_p - 1e-6).all() | (chosen[sure].sum(-1) == 2).all()
    # minimal: dropping the least probable chosen expert of a confident token leaves less than top_p
    for i in torch.nonzero(sure).flatten().tolist():
        n = int(chosen[i].sum())
        if n > 2:
            top = probs[i].sort(descending=True).values
            assert top[: n - 1].sum() < module.top_p


def test_dynmole_auxiliary_loss_adds_the_entropy():
    module = _dynmole()
    x = torch.randn(20, 12, generator=torch.Generator().manual_seed(2))
    module(x)
    _, probs, chosen = module.route(x)
    expected = module.load_balancing_loss(probs, chosen) + tsallis_entropy(probs).mean()
    torch.testing.assert_close(module.aux_loss, expected)
    with torch.no_grad():
        module.router.weight.zero_()  # uniform router: maximal entropy, every expert chosen
    gates, _, chosen = module.route(x)
    assert chosen.all() and torch.allclose(gates, torch.full_like(gates, 0.2))


def test_dynmole_in_a_model_reports_an_auxiliary_loss(tiny):
    model = apply_plan(tiny.build("llama_lm"), tiny.plan("lora_experts_dynmole"), seed=0)
    tiny.logits(model, tiny.ids())
    aux = auxiliary_loss(model)
    assert aux is not None and aux.requires_grad and aux.item() > 0


def test_prefix_mlp_merges_into_the_prefix_it_produces():
    mlp = PrefixMLP(2, 3, 4, torch.Generator().manual_seed(0))
    direct = mlp.merged()
    assert isinstance(direct, PrefixKV) and direct.key.shape == (2, 3, 4)
    k, v = mlp(5)
    torch.testing.assert_close(direct(5)[0], k)
    torch.testing.assert_close(direct(5)[1], v)


def test_counts_of_new_methods_are_exact_by_hand(tiny):
    cfg = tiny.config("llama_lm")  # hidden 32, intermediate 64, 2 kv heads of 8 -> c = 16
    cases = [
        (ModuleSpec("lora", "k", 4, variant="dora"), 4 * (32 + 16) + 16),
        (ModuleSpec("ssf", "gate"), 2 * 64),
        (ModuleSpec("hydra", "down", 2), 2 * (64 + 32) + 2 * 2 * 64),
        (ModuleSpec("prefix", "attn", 3, variant="mlp"), 3 * 16 + 16 * 16 + 16 + 16 * 32 + 32),
        (ModuleSpec("lora_experts", "q", 2, num_experts=3, top_k=1, variant="dynmole"), 3 * 2 * 64 + 32 * 3),
    ]
    for spec, count in cases:
        plan = PeftPlan.from_modules(tiny.NUM_LAYERS, {0: [spec]})
        assert plan_parameter_count(plan, cfg) == count, spec
