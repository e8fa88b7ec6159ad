"""Proposer latency: seconds for a batch of 8 proposals at 50, 200 and 1,000 completed trials, and a search-quality
check of the default sampler against the one it replaced.

    python benchmarks/proposer_latency.py [--sizes 50,200,1000] [--repeats 5] [--quality-seeds 5]

Part 1 - latency. The space is ``search_spaces/full.yaml`` bound to MiniLM's shape (74 integer parameters), the
trials are seeded random plans of it scored by the synthetic objective (``autopeft.proxy.synthetic``: exact
trainable %, a score that saturates with the log of the parameter count). For each sampler and size N a study on
Optuna's in-memory storage holds N completed trials (autopeft: N - 8, then one batch of 8 proposed and completed
untimed, its first, cold fit; Optuna's samplers fit from scratch on every proposal). Each repeat times a batch of
8 proposals made the way ``autopeft propose`` makes them (each trial asked and every parameter suggested while the
earlier ones of the batch stay RUNNING, i.e. pending), in wall and CPU seconds of this process, then completes
them, so every timed batch sees 8 new results, as a proposer serving workers does: repeat r runs at N + 8 (r - 1)
completed trials. Samplers, side by side in one run:

* ``autopeft`` - ``make_sampler("botorch")``, autopeft's default (:mod:`autopeft.optimize.mobo`);
* ``optuna-botorch`` - Optuna's ``BoTorchSampler`` with qLogNEHVI, the previous default;
* ``optuna-gp`` - Optuna's native ``GPSampler``.

A sampler whose batch would take longer than ``--cell-seconds`` (estimated from its previous size, assuming the
time grows with N^1.5, as BoTorchSampler's did here: 18 s per proposal at 100, 47 s at 200) is skipped at that
size, and its repeats stop once a cell has used that budget; both are printed. Torch runs on one thread
(``--threads``), as autopeft's proposer does.

Part 2 - search quality on the synthetic objective (the replay benchmark, ``benchmarks/search_quality.py``, is the
real test): hypervolume after 25 and 50 trials, proposals in batches of ``--quality-batch`` (each pending while
the rest of its batch is asked), the head-only anchor first and 8 Sobol start-up trials, for the new default, the
previous one (``optuna-botorch``), random search and the ablations of the default (``ABLATIONS``), over
``--quality-seeds`` seeds. Two measures: the
project's reference point (score 0, 100 % trainable) and a log one (trainable % on a log10 axis, reference at
score 0.5 and 100 %), where the cheap end of the front counts as much as the accurate one.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import statistics
import time
import warnings

SPACE = "full"
BATCH = 8  # proposals per timed batch; --batch 1 times single proposals (for samplers too slow for a batch)
SAMPLERS = ("autopeft", "optuna-botorch", "optuna-gp")


def setup():
    from autopeft.proxy.fidelity import Fidelity
    from autopeft.proxy.models import load_config, model_dims
    from autopeft.proxy.synthetic import SyntheticEvaluator
    from autopeft.space import SearchSpace, load_space

    fidelity = Fidelity(objective="synthetic")
    space = SearchSpace(load_space(SPACE), model_dims(load_config(fidelity.model)), source=SPACE)
    return space, SyntheticEvaluator(fidelity)


#: Ablations of the default: each row changes one choice of :class:`autopeft.optimize.mobo.MOBOSampler`.
ABLATIONS = {
    "autopeft-wide-search": {"raw_samples": 512, "num_restarts": 8, "max_steps": 20},  # twice the acquisition search
    "autopeft-linear-costs": {"log_costs": False},  # trainable % modelled as is, not its log
    "autopeft-mean-believer": {"believer": "mean"},  # pending points believed at their posterior mean
    "autopeft-no-believer": {"believer": None},  # pending points only kept out of
    "autopeft-per-parameters": {"canonical": False, "inputs": False},  # parameter vectors, not plans
    "autopeft-qlognehvi": {"acquisition": "qlognehvi"},  # BoTorch's Monte-Carlo qLogNEHVI instead of analytic EHVI
    "autopeft-parameter-inputs": {"inputs": False},  # the GP reads the parameters, not the plan's slots
    "autopeft-inferred-reference": {"reference": False},  # EHVI's reference inferred from the front, not the project's
    "autopeft-saas": {"sparsity": True},  # SAAS shrinkage prior on the GPs' length-scales, not BoTorch's default
}


def make(name: str, seed: int, space):
    from autopeft.optimize.samplers import (PendingAware, PlanInputs, ProjectReference, SpaceCanonical, StartupThen, _sobol,
                                            make_sampler)

    if name in ABLATIONS:
        from autopeft.optimize.mobo import MOBOSampler

        kw = dict(ABLATIONS[name])
        kw["canonical"] = SpaceCanonical(space) if kw.pop("canonical", True) else None
        kw["inputs"] = PlanInputs(space) if kw.pop("inputs", True) else None
        kw["reference"] = ProjectReference(space) if kw.pop("reference", True) else None
        main = MOBOSampler(seed=seed, n_startup_trials=8, **kw)
        return StartupThen(_sobol(seed), PendingAware(main), 8)
    return make_sampler("botorch" if name == "autopeft" else name, seed=seed, n_startup_trials=8, space=space)


def _values(space, evaluator, params):
    m = evaluator.run(space.decode({k: int(v) for k, v in params.items()}))
    return [m.objective(o) for o in space.objectives]


def _batch(study, space, evaluator) -> tuple[float, float]:
    """(wall, CPU) seconds to propose one batch (trials left RUNNING while the rest are proposed); then completes
    it. CPU seconds are this process's (torch on one thread): on a machine shared with other jobs they show the
    work, wall seconds what a proposer there would take."""
    dists = space.distributions()
    cpu = time.process_time()
    started = time.perf_counter()
    trials = []
    for _ in range(BATCH):
        trial = study.ask()
        for name, d in dists.items():
            trial.suggest_int(name, d.low, d.high)
        trials.append(trial)
    seconds = (time.perf_counter() - started, time.process_time() - cpu)
    for trial in trials:
        study.tell(trial, _values(space, evaluator, trial.params))
    return seconds


def latency_cell(name: str, n: int, repeats: int, cell_seconds: float, space, evaluator) -> tuple[list[tuple[float, float]], str]:
    import optuna

    rng = random.Random(n)
    study = optuna.create_study(directions=space.directions, sampler=make(name, 0, space))
    dists = space.distributions()
    done = []
    for _ in range(n - BATCH if name == "autopeft" else n):
        params = space.sample(rng)
        done.append(optuna.trial.create_trial(params=params, distributions=dists,
                                              values=_values(space, evaluator, params)))
    study.add_trials(done)
    started = time.perf_counter()
    if name == "autopeft":
        _batch(study, space, evaluator)  # its first (cold) fit, untimed; Optuna's samplers refit from scratch anyway
    times, note = [], ""
    for r in range(repeats):
        times.append(_batch(study, space, evaluator))  # (wall, CPU)
        if time.perf_counter() - started > cell_seconds and r + 1 < repeats:
            note = f"{repeats - r - 1} repeat(s) skipped: the cell used its {cell_seconds:.0f} s budget"
            break
    return times, note


def part_latency(args, space, evaluator) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    samplers = args.samplers.split(",")
    print(f"\n## latency: batch of {BATCH} proposal(s), wall s / CPU s (medians of repeats; each repeat after {BATCH} new "
          "results)", flush=True)
    last: dict[str, tuple[int, float]] = {}
    rows = []
    for n in sizes:
        medians = {}
        for name in samplers:
            if name in last:
                n0, t0 = last[name]
                estimate = t0 * (n / n0) ** 1.5  # BoTorchSampler measured here: 18 s at 100, 47 s at 200
                if estimate > args.cell_seconds:
                    print(f"- {name} at {n}: skipped, a batch would take about {estimate:.0f} s ({t0:.1f} s at {n0}, "
                          f"x (N ratio)^1.5) > --cell-seconds {args.cell_seconds:.0f}", flush=True)
                    continue
            times, note = latency_cell(name, n, args.repeats, args.cell_seconds, space, evaluator)
            wall = statistics.median(t for t, _ in times)
            cpu = statistics.median(c for _, c in times)
            medians[name] = (wall, cpu)
            last[name] = (n, wall)
            print(f"- {name} at {n}: {len(times)} repeat(s), wall {min(t for t, _ in times):.2f}-"
                  f"{max(t for t, _ in times):.2f} s, CPU {min(c for _, c in times):.2f}-{max(c for _, c in times):.2f} s"
                  + (f"; {note}" if note else ""), flush=True)
        rows.append((n, medians))
    print("\n| completed trials | " + " | ".join(f"{s} wall / CPU s" for s in samplers) + " | "
          + " | ".join(f"{s} / {samplers[0]} (CPU)" for s in samplers[1:]) + " |")
    print("|---:|" + "---:|" * (2 * len(samplers) - 1))
    for n, medians in rows:
        cells = [f"{medians[s][0]:.2f} / {medians[s][1]:.2f}" if s in medians else "skipped" for s in samplers]
        base = medians.get(samplers[0])
        ratios = [f"{medians[s][1] / base[1]:.1f}x" if s in medians and base else "-" for s in samplers[1:]]
        print(f"| {n} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |", flush=True)


# --------------------------------------------------------------------------- part 2
def hypervolume_2d(points, ref) -> float:
    """Area dominated by (score up, cost down) points over ``ref`` = (score, cost)."""
    inside = sorted((p for p in points if p[0] > ref[0] and p[1] < ref[1]), key=lambda p: -p[0])
    area, best = 0.0, ref[1]
    for score, cost in inside:
        if cost < best:
            area += (score - ref[0]) * (best - cost)
            best = cost
    return area


def search(name: str, seed: int, n_trials: int, batch: int, space, evaluator) -> list[tuple[float, float]]:
    """One search of ``n_trials``: batches of ``batch`` proposals (each pending while the rest are asked), then
    their results, as a proposer serving ``batch`` workers that finish together."""
    import optuna

    from autopeft.study.study import enqueue_anchors

    study = optuna.create_study(directions=space.directions, sampler=make(name, seed, space))
    study.set_metric_names(space.objectives)
    enqueue_anchors(study, space)
    dists = space.distributions()
    out = []
    while len(out) < n_trials:
        trials = [study.ask(fixed_distributions=dists) for _ in range(min(batch, n_trials - len(out)))]
        for trial in trials:
            values = _values(space, evaluator, trial.params)
            study.tell(trial, values)
            out.append(tuple(values))
    return out


def part_quality(args, space, evaluator) -> None:
    checkpoints = (25, 50)
    measures = {"project": (lambda s, c: (s, c), (0.0, 100.0)),
                "log": (lambda s, c: (s, math.log10(max(c, 1e-6))), (0.5, 2.0))}
    names = args.quality_samplers.split(",")
    hv = {(n, m, c): [] for n in names for m in measures for c in checkpoints}
    for seed in range(args.quality_seeds):
        for name in names:
            started = time.perf_counter()
            points = search(name, seed, max(checkpoints), args.quality_batch, space, evaluator)
            for m, (to, ref) in measures.items():
                for c in checkpoints:
                    hv[(name, m, c)].append(hypervolume_2d([to(*p) for p in points[:c]], ref))
            got = " ".join(f"{m}@{c}={hv[(name, m, c)][-1]:.4g}" for m in measures for c in checkpoints)
            print(f"  seed {seed} {name}: {time.perf_counter() - started:.0f} s, {got}", flush=True)
    print(f"\n## search quality on the synthetic objective: hypervolume, mean ± sd over {args.quality_seeds} seeds, "
          f"batches of {args.quality_batch}")
    print("| sampler | " + " | ".join(f"{m} @{c}" for m in measures for c in checkpoints) + " | "
          + " | ".join(f"{m} @{c} / {names[0]}" for m in measures for c in checkpoints) + " |")
    print("|---|" + "---:|" * (4 * len(measures)))
    for n in names:
        cells = [f"{statistics.mean(hv[(n, m, c)]):.4g} ± {statistics.pstdev(hv[(n, m, c)]):.2g}"
                 for m in measures for c in checkpoints]
        ratios = [f"{statistics.mean(hv[(n, m, c)]) / statistics.mean(hv[(names[0], m, c)]):.3f}"
                  for m in measures for c in checkpoints]
        print(f"| {n} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")


def main() -> None:
    global BATCH
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="50,200,1000")
    parser.add_argument("--samplers", default=",".join(SAMPLERS), help="comma list; the first is the baseline of "
                        "the ratio columns")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cell-seconds", type=float, default=400.0,
                        help="time budget of one (sampler, size) cell; larger cells are skipped or cut short")
    parser.add_argument("--quality-seeds", type=int, default=5, help="0 skips part 2")
    slow = {"autopeft-qlognehvi"}  # minutes per search: only when named
    parser.add_argument("--quality-samplers",
                        default=",".join(["autopeft", "optuna-botorch", "random"] + [a for a in ABLATIONS if a not in slow]),
                        help="comma list for part 2 (the first is the baseline of the ratio columns); "
                        f"also {', '.join(sorted(slow))}")
    parser.add_argument("--quality-batch", type=int, default=4, help="proposals per batch in part 2")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=BATCH, help="proposals per timed batch")
    args = parser.parse_args()
    BATCH = args.batch

    import optuna
    import torch

    from autopeft.study.runner import quiet_libraries

    torch.set_num_threads(args.threads)
    quiet_libraries()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# proposer_latency: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {load:.1f}, "
          f"torch {torch.__version__} ({args.threads} thread), optuna {optuna.__version__}, {time.strftime('%Y-%m-%d')}")
    space, evaluator = setup()
    print(f"space {SPACE}: {len(space.distributions())} parameters")
    if not args.skip_latency:
        part_latency(args, space, evaluator)
    if args.quality_seeds:
        part_quality(args, space, evaluator)
    print(f"load at the end {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "")


if __name__ == "__main__":
    main()
