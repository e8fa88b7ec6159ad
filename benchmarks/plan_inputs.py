"""What the default sampler's score GP should read: the plan's slots or the space's parameters.

    python benchmarks/plan_inputs.py [--table FILE] [--train 50] [--draws 10] [--budget-seeds 6] [--no-priors]

Part 1 - how well a GP ranks plans it has not seen. From the tabular benchmark (``benchmarks/build_table.py``), each
draw takes ``--train`` random plans (seeded), fits the GP the sampler fits (BoTorch ``SingleTaskGP``, standardised
outcomes) to their scores, and predicts the other plans' scores. Reported per input encoding, mean over draws: the
Spearman correlation of predicted and true scores, and the mean true score of the 10 plans the GP ranks highest
(against the mean of all held-out plans: what picking at random gets). Encodings:

* ``parameters`` - the space's parameters on the unit cube (what every GP read before slots);
* ``slots`` - one input per (layer, method, site) slot (``SearchSpace.slot_features``), plus the parameters no slot
  reads (variants, top-k, routing): what the default's score GP reads (``ProductInputs.plan_cols``);
* ``slots + parameters`` - both.

Part 3 - SAAS-style sparsity (as in the AutoPEFT paper's SAAS-BO) on the slots. The same held-out ranking, at
``--train`` and at half as many plans, for the GP under BoTorch's default prior and under two MAP forms of the SAAS
prior (:data:`PRIORS`): does a prior that switches most slots off rank unseen plans better? ``--no-priors`` skips it.

Part 2 - proposals over a trainable-% budget. Seeded searches of ``search_spaces/autopeft.yaml`` on MiniLM's shape
with ``budget.max_trainable_pct: 0.1``, scored by the synthetic objective (exact trainable %): 8 Sobol
start-up trials, then 12 proposals by autopeft's default with the score GP on slots, and with every GP on the
parameters (what the default does under a budget). Counts the model's proposals over the budget, per seed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "benchmarks" / "data" / "table_rotten_tomatoes_minilm_h200.jsonl"


def encodings(table_path: str):
    """(scores (n,), {encoding name: inputs (n, d)}) of the table's sampled plans."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from search_quality import replay_setup

    from autopeft.optimize.mobo import ChoiceGrid, ProductInputs

    table, space, _ = replay_setup(table_path)
    names = table.header["param_names"]
    rows = [r for r in table.rows if r.get("params") is not None and r.get("state", "COMPLETE") == "COMPLETE"]
    dists = space.distributions()
    z = torch.tensor([r["params"] for r in rows])
    params = ChoiceGrid({n: dists[n] for n in names}).encode(z)
    inputs = ProductInputs({n: dists[n] for n in names}, space.slot_features())
    slots = inputs(z)[:, inputs.plan_cols]
    scores = torch.tensor([r["score"] for r in rows], dtype=torch.double)
    return scores, {"parameters": params, "slots": slots, "slots + parameters": torch.cat([slots, params], -1)}


#: Part 3's GP priors: BoTorch's default (what the sampler fits), and two forms of SAAS sparsity
PRIORS = {
    "default": "RBF, BoTorch's dimension-scaled log-normal length-scale prior (the sampler's GP)",
    "saas-rbf": "RBF, SAAS prior (half-Cauchy shrinkage of 1 / length-scale², global scale inferred), MAP fit",
    "map-saas": "BoTorch's get_map_saas_model: Matern-5/2, SAAS prior, its own noise and mean priors, MAP fit",
}


def gp(x, y, prior: str = "default"):
    """An unfitted GP on (x, y) with standardised outcomes, under one of :data:`PRIORS` (the first two are the
    sampler's own, :func:`autopeft.optimize.mobo.exact_gp`)."""
    from botorch.models.map_saas import get_map_saas_model
    from botorch.models.transforms import Standardize

    from autopeft.optimize.mobo import exact_gp

    if prior in ("default", "saas-rbf"):
        return exact_gp(x, y, sparsity=prior == "saas-rbf")
    if prior == "map-saas":
        return get_map_saas_model(x, y, outcome_transform=Standardize(m=1))
    raise ValueError(f"prior: {prior!r} is not one of {', '.join(PRIORS)}")


def rank_quality(x, y, train: int, draws: int, prior: str = "default") -> dict[str, float]:
    """Mean over ``draws`` seeded splits: Spearman correlation on held-out plans, mean true score of the GP's top 10,
    mean held-out score."""
    import torch
    from botorch.fit import fit_gpytorch_mll
    from gpytorch.mlls import ExactMarginalLogLikelihood
    from scipy.stats import spearmanr

    rho, top, mean = [], [], []
    for draw in range(draws):
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(draw))
        tr, te = perm[:train], perm[train:]
        model = gp(x[tr], y[tr, None], prior)
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        with torch.no_grad():
            pred = model.posterior(x[te]).mean.squeeze(-1)
        rho.append(float(spearmanr(pred.numpy(), y[te].numpy())[0]))
        top.append(float(y[te][pred.argsort(descending=True)[:10]].mean()))
        mean.append(float(y[te].mean()))
    return {"rho": statistics.fmean(rho), "rho_sd": statistics.stdev(rho) if draws > 1 else 0.0,
            "top10": statistics.fmean(top), "random": statistics.fmean(mean)}


def over_budget(seed: int, slots: bool, budget: float = 0.1, startup: int = 8, proposals: int = 12) -> int:
    """Model proposals over ``budget`` in one seeded search (see the module docstring)."""
    import optuna

    from autopeft.optimize import samplers
    from autopeft.proxy.fidelity import Fidelity
    from autopeft.proxy.models import load_config, model_dims
    from autopeft.proxy.synthetic import SyntheticEvaluator
    from autopeft.space import SearchSpace, load_space, parse_space

    fidelity = Fidelity(objective="synthetic")
    spec = load_space("autopeft")
    spec = parse_space(spec.model_dump_json().replace('"budget":null', f'"budget":{{"max_trainable_pct":{budget}}}'))
    space = SearchSpace(spec, model_dims(load_config(fidelity.model)), source="autopeft")
    sampler = samplers.make_sampler("botorch", seed=seed, n_startup_trials=startup, space=space)
    main = sampler.main.sampler
    if not slots:
        main.inputs = None  # every GP on the parameters
    else:
        main._columns = _slots_despite_budget(main)
    evaluator = SyntheticEvaluator(fidelity)
    study = optuna.create_study(directions=space.directions, sampler=sampler)
    over = 0
    for k in range(startup + proposals):
        trial = study.ask(fixed_distributions=space.distributions())
        m = evaluator.run(space.decode({n: int(v) for n, v in trial.params.items()}))
        trial.set_constraint("budget", m.trainable_pct - budget)
        study.tell(trial, [m.objective(o) for o in space.objectives])
        over += k >= startup and m.trainable_pct > budget
    return over


def _slots_despite_budget(main):
    """The sampler's column choice as if no constraint were set: the score GP on slots, the cost on parameters."""
    from autopeft.optimize.mobo import Outcomes

    original = main._columns

    def columns(grid, out, i):
        free = Outcomes(out.y, out.offsets, out.signs)  # the same outcomes without thresholds or constraint GPs
        return original(grid, free, i)

    return columns


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--table", default=str(TABLE))
    parser.add_argument("--train", type=int, default=50, help="plans the GP is fitted to, per draw")
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--budget-seeds", type=int, default=6)
    parser.add_argument("--no-priors", dest="priors", action="store_false", help="skip part 3 (the GP's prior)")
    args = parser.parse_args(argv)
    import optuna
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    scores, encoded = encodings(args.table)
    print(f"Part 1: {len(scores)} plans of {Path(args.table).name}; GP on {args.train} random plans, the rest "
          f"held out; mean over {args.draws} draws (seeds 0-{args.draws - 1})\n")
    print("| inputs | dimensions | Spearman (held-out scores) | mean score of the GP's top 10 | mean held-out score |")
    print("|---|---:|---:|---:|---:|")
    for name, x in encoded.items():
        q = rank_quality(x, scores, args.train, args.draws)
        print(f"| {name} | {x.shape[1]} | {q['rho']:.2f} ± {q['rho_sd']:.2f} | {q['top10']:.3f} | {q['random']:.3f} |",
              flush=True)
    if args.priors:
        print(f"\nPart 3: the GP's prior on the slots; GP on {args.train // 2} and on {args.train} random plans, mean over "
              f"{args.draws} draws\n")
        print("| prior | plans fitted | Spearman (held-out scores) | mean score of the GP's top 10 | mean held-out score |")
        print("|---|---:|---:|---:|---:|")
        for train in (args.train // 2, args.train):
            for prior in PRIORS:
                q = rank_quality(encoded["slots"], scores, train, args.draws, prior)
                print(f"| {prior} | {train} | {q['rho']:.2f} ± {q['rho_sd']:.2f} | {q['top10']:.3f} | {q['random']:.3f} |",
                      flush=True)
        print("\n" + "\n".join(f"* `{k}`: {v}" for k, v in PRIORS.items()))
    if args.budget_seeds:
        seeds = range(args.budget_seeds)
        on_slots = [over_budget(s, slots=True) for s in seeds]
        on_params = [over_budget(s, slots=False) for s in seeds]
        print(f"\nPart 2: model proposals over a 0.1 % budget, of 12 per search, seeds 0-{args.budget_seeds - 1}\n")
        print("| score GP reads | per seed | total |\n|---|---|---:|")
        print(f"| slots | {', '.join(map(str, on_slots))} | {sum(on_slots)} |")
        print(f"| parameters (the default under a budget) | {', '.join(map(str, on_params))} | {sum(on_params)} |")


if __name__ == "__main__":
    main()
