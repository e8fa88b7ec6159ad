"""autopeft's MOBO sampler: valid, seeded, pending-aware proposals from the model, fits reused while the data
is unchanged, the budget respected, and its exact pieces (marginals, EHVI) checked against BoTorch."""

from __future__ import annotations

import math
import random

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from autopeft.optimize.mobo import ChoiceGrid, Marginals, MOBOSampler, ProductInputs, log_ehvi, outcomes
from autopeft.optimize.samplers import make_sampler
from autopeft.proxy.fidelity import Fidelity
from autopeft.space import ModelDims, SearchSpace, load_space, parse_space
from autopeft.study.storage import open_storage
from autopeft.study.study import create_or_load
from autopeft.study.worker import propose, run_worker

from fakes import ArithmeticEvaluator

optuna.logging.set_verbosity(optuna.logging.ERROR)
DIMS = ModelDims(num_layers=2, hidden_size=64)
STARTUP = 8


def space(name: str = "full", budget: float | None = None) -> SearchSpace:
    spec = load_space(name)
    if budget is not None:
        spec = parse_space(spec.model_dump_json().replace('"budget":null', f'"budget":{{"max_trainable_pct":{budget}}}'))
    return SearchSpace(spec, DIMS, source=name)


def tell(study, sp: SearchSpace, trial, budget: float | None = None) -> None:
    m = ArithmeticEvaluator().run(sp.decode({k: int(v) for k, v in trial.params.items()}))
    if budget is not None:
        trial.set_constraint("budget", m.trainable_pct - budget)
    study.tell(trial, [m.score, m.trainable_pct])


def ask(study, sp: SearchSpace):
    return study.ask(fixed_distributions=sp.distributions())


def search(sp: SearchSpace, n: int, seed: int = 0, budget: float | None = None):
    sampler = make_sampler("botorch", seed=seed, n_startup_trials=STARTUP, space=sp)
    study = optuna.create_study(directions=sp.directions, sampler=sampler)
    for _ in range(n):
        tell(study, sp, ask(study, sp), budget)
    return study, sampler


def test_proposals_are_valid_and_all_from_the_model():
    sp = space()
    study, sampler = search(sp, STARTUP + 4)
    for t in study.trials:
        assert set(t.params) == set(sp.choices)
        assert all(0 <= t.params[k] < len(sp.choices[k]) for k in sp.choices)
        sp.decode({k: int(v) for k, v in t.params.items()})  # a plan of the space
    # the very first trial has no search space to sample jointly yet (nothing completed): Sobol's joint draws
    # start with the second
    assert sampler.relative_calls == {"startup": STARTUP - 1, "main": 4}
    mobo = sampler.main.sampler
    assert mobo.stats["model"] == 4 and mobo.stats["independent"] == 0  # no fallback to random sampling


def test_same_seed_same_proposals_other_seed_others():
    sp = space("autopeft")
    runs = [[t.params for t in search(sp, STARTUP + 3, seed=s)[0].trials] for s in (0, 0, 1)]
    assert runs[0] == runs[1]
    assert runs[0][STARTUP:] != runs[2][STARTUP:]


def test_a_pending_batch_is_distinct_and_reuses_one_fit():
    sp = space()
    study, sampler = search(sp, STARTUP + 1)
    mobo = sampler.main.sampler
    fits = mobo.fit_count
    batch = [ask(study, sp) for _ in range(4)]  # left RUNNING: each is pending for the next
    rows = {tuple(sorted(t.params.items())) for t in batch}
    done = {tuple(sorted(t.params.items())) for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert len(rows) == 4 and not rows & done
    assert mobo.fit_count == fits + 1  # new data since the last proposal: one fit for the whole batch
    tell(study, sp, batch[0])
    ask(study, sp)
    assert mobo.fit_count == fits + 2  # a result came in: refitted (warm)
    ask(study, sp)
    assert mobo.fit_count == fits + 2  # nothing new: the fit is reused


def test_budget_becomes_a_threshold_and_model_proposals_respect_it():
    budget, n = 0.1, STARTUP + 12
    sp = space("autopeft", budget=budget)
    study, _ = search(sp, n, budget=budget)
    out = outcomes(study.get_trials(states=(TrialState.COMPLETE,)), study.directions)
    assert out.thresholds == [(1, pytest.approx(budget))] and out.con is None  # no GP of its own
    inputs = study.sampler.main.sampler.inputs(study, sp.distributions())
    assert all(torch.equal(f.cols, inputs.param_cols) for f in study.sampler.main.sampler._cache["marginals"])
    over = sum(t.values[1] > budget for t in study.trials[STARTUP:])
    free, _ = search(space("autopeft"), n)  # the same search without the budget
    over_free = sum(t.values[1] > budget for t in free.trials[STARTUP:])
    assert over == 0 and over_free >= 2, (over, over_free)


def test_a_constraint_that_is_not_an_objective_gets_its_own_gp():
    study = optuna.create_study(directions=["maximize", "minimize"])
    for i in range(6):
        t = study.ask({"x": IntDistribution(0, 5)})
        t.set_constraint("odd", float(t.params["x"] % 2) - 0.5)
        study.tell(t, [t.params["x"], 1.0 + i])
    out = outcomes(study.trials, study.directions)
    assert out.thresholds == [] and out.con.shape == (6, 1)
    assert out.log_cols == [False, True]  # a positive minimised cost is modelled in log space


def test_mixed_categorical_float_and_integer_parameters():
    dists = {"kind": CategoricalDistribution(["a", "b", "c"]), "lr": FloatDistribution(1e-4, 1e-1, log=True),
             "n": IntDistribution(0, 4)}
    sampler = MOBOSampler(seed=0, n_startup_trials=5)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    rng = random.Random(0)
    for i in range(9):
        t = study.ask(dists)
        gain = {"a": 0.0, "b": 1.0, "c": 0.5}[t.params["kind"]] - abs(math.log10(t.params["lr"]) + 2) + rng.random() * 0.1
        study.tell(t, [gain, 1.0 + t.params["n"]])
        assert t.params["kind"] in ("a", "b", "c") and 1e-4 <= t.params["lr"] <= 1e-1 and 0 <= t.params["n"] <= 4
    assert sampler.stats["model"] == 4 and sampler.stats["independent"] == 0


def test_choice_grid_encodes_ordinals_on_the_unit_cube_and_categoricals_one_hot():
    grid = ChoiceGrid({"c": CategoricalDistribution(["x", "y"]), "i": IntDistribution(0, 4),
                       "f": FloatDistribution(1.0, 100.0, log=True)})
    assert grid.dim == 2 + 2  # i, f ordinal; c one-hot
    z = torch.tensor([[1, 4, 0], [0, 2, len(grid.values[2]) - 1]])
    x = grid.encode(z)
    assert torch.allclose(x, torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 1.0, 1.0, 0.0]], dtype=torch.double))
    assert grid.params(z[0]) == {"c": "y", "i": 4, "f": 1.0}
    assert grid.neighbours(z).shape == (2, 2 + 5 + len(grid.values[2]), 3)


def test_marginals_match_the_gp_posterior():
    from botorch.models import SingleTaskGP
    from botorch.models.transforms import Standardize

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(20, 3, generator=gen, dtype=torch.double)
    y = (x.sum(-1, keepdim=True) * 3).sin() * 5 + 2
    model = SingleTaskGP(x, y, outcome_transform=Standardize(m=1)).eval()
    xs = torch.rand(7, 3, generator=gen, dtype=torch.double)
    post = model.posterior(xs.unsqueeze(-2))  # one point at a time: latent mean and variance
    mean, std = Marginals.of(model)(xs)
    assert torch.allclose(mean, post.mean.reshape(-1), rtol=1e-6, atol=1e-6)
    assert torch.allclose(std, post.variance.reshape(-1).sqrt(), rtol=1e-3, atol=1e-6)


def test_log_ehvi_matches_a_monte_carlo_estimate():
    from botorch.utils.multi_objective.box_decompositions.non_dominated import FastNondominatedPartitioning
    from botorch.utils.multi_objective.hypervolume import Hypervolume

    ref = torch.tensor([0.0, 0.0], dtype=torch.double)
    front = torch.tensor([[3.0, 1.0], [2.0, 2.0], [1.0, 3.0]], dtype=torch.double)
    lower, upper = FastNondominatedPartitioning(ref_point=ref, Y=front).get_hypercell_bounds()
    mean = torch.tensor([[2.5, 2.5], [0.5, 0.5], [4.0, 0.5]], dtype=torch.double)
    std = torch.tensor([[0.5, 0.3], [0.4, 0.4], [0.2, 1.0]], dtype=torch.double)
    exact = log_ehvi(mean, std, lower, upper).exp()
    hv = Hypervolume(ref)
    base = hv.compute(front)
    gen = torch.Generator().manual_seed(0)
    for i in range(3):
        ys = mean[i] + std[i] * torch.randn(4000, 2, generator=gen, dtype=torch.double)
        mc = sum(hv.compute(torch.cat([front, y.unsqueeze(0)])) - base for y in ys) / len(ys)
        assert float(exact[i]) == pytest.approx(mc, rel=0.05, abs=1e-3)


def test_works_with_the_proposer_service(tmp_path, study_name):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    fid = Fidelity(steps=5, train_examples=64, eval_examples=32)
    st, _ = create_or_load(storage, study_name, load_space("autopeft"), DIMS, fid,
                           sampler=make_sampler("botorch", seed=0, n_startup_trials=3))
    run_worker(st, ArithmeticEvaluator(), n_trials=4)  # the anchor and the Sobol start, then one from the model
    queued = propose(st, 3)
    waiting = {t.number: t.params for t in st.trials((TrialState.WAITING,))}
    assert sorted(waiting) == sorted(queued)
    assert len({tuple(sorted(p.items())) for p in waiting.values()}) == 3
    assert st.study.sampler.main.sampler.stats["model"] == 1 + 3
    run_worker(st, ArithmeticEvaluator(), n_trials=7)  # workers train the queued proposals
    assert st.count(TrialState.COMPLETE) == 7 and st.count(TrialState.WAITING) == 0


def test_product_inputs_multiply_lookups_and_encode_the_other_parameters():
    dists = {"size": IntDistribution(0, 2), "on": IntDistribution(0, 1), "variant": IntDistribution(0, 2)}
    features = [("a", [("size", (0.0, 0.5, 1.0)), ("on", (0.0, 1.0))]), ("b", [("on", (1.0, 0.0))]),
                ("c", [("", (0.25,))])]
    inputs = ProductInputs(dists, features)
    # three products, then "variant" (no product reads it) on the unit cube; then every parameter so encoded
    assert inputs.dim == 3 + 1 + 3
    assert inputs.plan_cols.tolist() == [0, 1, 2, 3] and inputs.param_cols.tolist() == [4, 5, 6]
    z = torch.tensor([[1, 1, 0], [2, 0, 2], [2, 1, 1]])
    x = inputs(z)
    assert x.tolist() == [[0.5, 0.0, 0.25, 0.0, 0.5, 1.0, 0.0], [0.0, 1.0, 0.25, 1.0, 1.0, 0.0, 1.0],
                          [1.0, 0.0, 0.25, 0.5, 1.0, 1.0, 0.5]]
    assert inputs(z[None]).shape == (1, 3, 7)  # leading dimensions are kept
    grid = ChoiceGrid(dists, inputs=inputs)
    assert torch.equal(grid.encode(z), x)


def test_the_default_reads_the_plans_slots_and_proposes_new_plans():
    sp = space()
    study, sampler = search(sp, STARTUP + 4)
    main = sampler.main.sampler
    assert main.stats["model"] == 4
    fit = main._cache
    inputs = ProductInputs(sp.distributions(), sp.slot_features())
    assert fit["x"].shape[1] == inputs.dim
    score_gp, cost_gp = fit["marginals"]  # the score reads the plan's slots, the (log) trainable % the parameters
    assert torch.equal(score_gp.cols, inputs.plan_cols) and torch.equal(cost_gp.cols, inputs.param_cols)
    plans = [sp.decode({k: int(v) for k, v in t.params.items()}).summary() for t in study.trials]
    assert len(set(plans)) == len(plans)


def test_a_budget_below_the_reference_becomes_its_cost():
    from autopeft.optimize.mobo import Outcomes, _within

    out = Outcomes(torch.zeros(1, 2), [None, 0.0], [1.0, -1.0], thresholds=[(1, 2.5)])
    assert _within([0.0, 100.0], out) == [0.0, 2.5]  # past the budget no trial enters the front
    assert _within([0.0, 1.0], out) == [0.0, 1.0]  # a reference already inside the budget stays
    assert _within([0.0, 100.0], Outcomes(torch.zeros(1, 2), [None, 0.0], [1.0, -1.0])) == [0.0, 100.0]


def test_a_given_reference_changes_the_proposals_and_a_callable_one_is_read_per_study():
    sp = space()

    def run(reference):
        main = MOBOSampler(seed=0, n_startup_trials=STARTUP, reference=reference)
        study = optuna.create_study(directions=sp.directions, sampler=main)
        for _ in range(STARTUP + 3):
            trial = ask(study, sp)
            tell(study, sp, trial)
        return [t.params for t in study.trials[STARTUP:]], main

    inferred, _ = run(None)
    given, _ = run((0.0, 100.0))
    assert inferred != given
    seen = []
    called, main = run(lambda study: seen.append(study.study_name) or (0.0, 100.0))
    assert called == given and len(seen) == 3  # one read per model proposal


def test_prior_weight_is_the_non_negative_least_squares_slope():
    from autopeft.optimize.mobo import prior_weight

    p = torch.tensor([[0.0], [1.0], [2.0], [3.0]], dtype=torch.double)
    assert prior_weight(p, 2 * p + 1) == pytest.approx(2.0)
    assert prior_weight(p, -p) == 0.0  # a study that goes the other way ignores the prior
    assert prior_weight(torch.ones(4, 1, dtype=torch.double), p) == 0.0  # flat prior: nothing to scale


def _prior_fit(sign: float, prior: bool = True):
    """A MOBO fit after 6 results of ``sign`` * a bumpy surface, with (``prior``) or without the surface itself
    observed on every other grid point as the transferred prior; the score means over the whole grid, the truth,
    and the prior weights."""
    dists = {"a": IntDistribution(0, 9), "b": IntDistribution(0, 9)}

    def truth(a, b):
        return math.sin(1.3 * a) + math.cos(1.1 * b)

    source = [({"a": a, "b": b}, [truth(a, b), 1.0 + a]) for a in range(0, 10, 2) for b in range(0, 10, 2)]
    sampler = MOBOSampler(seed=0, n_startup_trials=6, prior=(lambda st, sp: source) if prior else None)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    for a, b in ((0, 0), (9, 9), (2, 7), (7, 1), (4, 4), (1, 5)):
        study.enqueue_trial({"a": a, "b": b})
        t = study.ask(dists)
        study.tell(t, [sign * 0.5 * truth(a, b) + 3.0, 1.0 + a])
    study.ask(dists)  # the model's first proposal fits it
    assert sampler.stats["model"] == 1
    fit = sampler._cache
    grid = ChoiceGrid(sampler.infer_relative_search_space(study, None))
    z = torch.cartesian_prod(torch.arange(10), torch.arange(10))
    params = [grid.params(row) for row in z]
    mean = fit["marginals"][0](grid.encode(grid.rows(params)))[0]
    true = torch.tensor([sign * truth(p["a"], p["b"]) for p in params], dtype=torch.double)
    return mean, true, fit["prior_weights"]


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def test_a_transferred_prior_shapes_the_score_model_where_this_study_has_no_data():
    without, true, w0 = _prior_fit(1.0, prior=False)
    with_prior, _, w1 = _prior_fit(1.0)
    assert w0 == [0.0, 0.0]
    assert w1[0] == pytest.approx(0.5, rel=0.2) and w1[1] == 0.0  # the score's half-scale trend; no prior on the cost
    assert _spearman(with_prior, true) > 0.9 > _spearman(without, true) + 0.1


def test_a_prior_the_study_contradicts_gets_no_weight():
    contradicted, _, weights = _prior_fit(-1.0)
    without, _, _ = _prior_fit(-1.0, prior=False)
    assert weights == [0.0, 0.0]
    assert torch.allclose(contradicted, without)  # the same model as without the prior


def test_sparsity_fits_every_gp_under_a_saas_prior_and_proposes_from_the_model():
    sp = space("autopeft")
    sampler = MOBOSampler(seed=0, n_startup_trials=STARTUP, sparsity=True)
    study = optuna.create_study(directions=sp.directions, sampler=sampler)
    for _ in range(STARTUP + 3):
        tell(study, sp, ask(study, sp))
    assert sampler.stats["model"] == 3 and sampler.stats["independent"] == 0
    fitted = sampler._fit_gp(0, torch.rand(6, 4, dtype=torch.double), torch.rand(6, 1, dtype=torch.double))
    priors = {n.rsplit(".", 1)[-1]: type(p).__name__ for n, _, p, *_ in fitted.named_priors()}
    assert priors["inv_lengthscale_prior"] == priors["tau_prior"] == "HalfCauchyPrior"
    assert "lengthscale_prior" not in priors  # BoTorch's log-normal prior is replaced, not stacked
    plain = MOBOSampler(seed=0)._fit_gp(0, torch.rand(6, 4, dtype=torch.double), torch.rand(6, 1, dtype=torch.double))
    assert "tau_prior" not in {n.rsplit(".", 1)[-1] for n, *_ in plain.named_priors()}
