"""Warm start across tasks or models: how much sooner a study seeded from a finished one reaches the cold study's
hypervolume.

For every seed, on the replay objective (``benchmarks/search_quality.py``'s searches, real SQLite studies made by
``autopeft.study.study.create_or_load``, as ``autopeft run`` makes them):

1. a *source* study searches the source table (another task, or another model of another depth) with the default
   sampler for ``--source-trials``;
2. a *cold* study searches the target table with the default sampler for ``--trials`` trials;
3. a *warm* study of the target table first gets ``autopeft run --warm-start``'s seeds
   (:func:`autopeft.transfer.warm_start`: the source's ``--top`` most promising plans, after the head-only anchor),
   then the default sampler, for the same ``--trials`` trials in all (the seeds count).

``--arms prior warm+prior`` adds target studies that get the source's completed trials as the default sampler's
transferred prior mean for the score (``MOBOSampler(prior=...)``, :func:`autopeft.transfer.prior_observations`):
*prior* queues nothing (the study keeps its own quasi-random start), *warm+prior* also gets the carried plans.

Reported per measure (``project`` and ``log-nadir``, as in search_quality.py, in % of the target table's true
front): the hypervolume of both after 10, 25 and ``--trials`` trials (mean ± standard deviation over seeds), and
how many trials the warm study took to reach the cold study's final hypervolume (median over seeds; a seed that
never gets there counts as ``--trials`` + 1, and is counted). ``--replay distinct`` answers a plan the table lacks
with the nearest recorded plan that has not answered that study yet (as ``search_quality.py --replay distinct``):
carried plans are often far from every recorded plan of the other table, and under the nearest replay several of
them get the same answer.

    python benchmarks/warm_start.py --source benchmarks/data/table_rotten_tomatoes_minilm_h200.jsonl \\
        --target benchmarks/data/table_bbc_news_minilm_steps60.jsonl --seeds 10 --trials 50 --workers 2

Across models on one task: the source table of MiniLM's lower four blocks (``benchmarks/sibling_model.py`` writes
that model; its docstring gives the command that builds the table), the target table of the whole MiniLM:

    python benchmarks/warm_start.py --source benchmarks/data/table_rotten_tomatoes_minilm_l4.jsonl \\
        --target benchmarks/data/table_rotten_tomatoes_minilm_h200.jsonl --seeds 10 --trials 50 --workers 2
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import search_quality as sq  # noqa: E402  (a sibling script, not a package)

DEFAULT_SOURCE = ROOT / "benchmarks" / "data" / "table_rotten_tomatoes_minilm_h200.jsonl"
DEFAULT_TARGET = ROOT / "benchmarks" / "data" / "table_bbc_news_minilm_steps60.jsonl"
#: target studies beside cold and warm (``--arms``)
ARMS = ("prior", "warm+prior")


def study_on(table_path: str, name: str, url: str, seed: int):
    """A new autopeft study replaying ``table_path`` on storage ``url``, with the default sampler."""
    from autopeft.optimize.samplers import DEFAULT_SAMPLER
    from autopeft.study.storage import open_storage
    from autopeft.study.study import create_or_load

    _, space, fidelity = sq.replay_setup(table_path)
    sampler = sq.make_named_sampler(DEFAULT_SAMPLER, seed, space)
    study, _ = create_or_load(open_storage(url), name, space.spec, space.dims, fidelity, sampler=sampler)
    return study


def give_prior(study, observations) -> None:
    """Hand ``observations`` to the default sampler of ``study`` as its transferred prior (``MOBOSampler.prior``)."""
    from autopeft.optimize.mobo import MOBOSampler

    sampler = study.study.sampler
    while not isinstance(sampler, MOBOSampler):
        sampler = getattr(sampler, "main", None) or sampler.sampler  # StartupThen, then PendingAware
    sampler.prior = lambda st, space: observations


def run_seed(job: tuple[int, str, str, int, int, int, bool, tuple[str, ...]]) -> dict[str, Any]:
    """Source, cold and warm searches of one seed (and the ``arms`` beyond them); their per-trial (score, trainable
    %)."""
    import optuna
    import torch

    from autopeft.proxy.replay import ReplayEvaluator
    from autopeft.study.runner import quiet_libraries
    from autopeft.transfer import prior_observations, warm_start

    seed, source_table, target_table, source_trials, trials, top, distinct, arms = job
    torch.set_num_threads(1)
    quiet_libraries()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/studies.db"
        out: dict[str, Any] = {"seed": seed}
        source = study_on(source_table, "source", url, seed)
        sq.drive(source.study, source.space, ReplayEvaluator(source.fidelity, distinct=distinct), source_trials)
        for name in ("cold", "warm", *arms):
            study = study_on(target_table, name, url, seed)
            if name in ("warm", "warm+prior"):
                out["seeded"] = len(warm_start(study, source, top=top))
            if name in ("prior", "warm+prior"):
                give_prior(study, prior_observations(study, source))
            replay = ReplayEvaluator(study.fidelity, distinct=distinct)
            out[name] = sq.drive(study.study, study.space, replay, trials)["values"]
    return out


def reach(warm: list[float], goal: float) -> int:
    """First trial count (1-based) at which ``warm`` reaches ``goal``, or len(warm) + 1."""
    return next((k + 1 for k, v in enumerate(warm) if v >= goal - 1e-9), len(warm) + 1)


def report(results: list[dict[str, Any]], target_rows: list[dict[str, Any]], trials: int,
           arms: tuple[str, ...] = ()) -> list[str]:
    checkpoints = [k for k in (10, 25, trials) if k <= trials]
    lines = ["| measure | study | " + " | ".join(f"{k} trials" for k in checkpoints)
             + " | trials to the cold study's final hypervolume (median [min-max]) |",
             "|---|---|" + "---:|" * len(checkpoints) + "---:|"]
    for measure in sq.MEASURES:
        ref, full = sq.true_front(measure, target_rows)
        names = ("cold", "warm", *arms)
        curves = {name: [sq.curve(r[name], measure, ref, full) for r in results] for name in names}
        needed = {name: [reach(c, cold[-1]) for c, cold in zip(curves[name], curves["cold"])] for name in names}
        for name in names:
            cells = []
            for k in checkpoints:
                mean, sd, _, _ = sq.stats([c[k - 1] for c in curves[name]])
                cells.append(f"{mean:.1f} ± {sd:.1f}")
            n = needed[name]
            lines.append(f"| {measure} | {name} | " + " | ".join(cells)
                         + f" | {statistics.median(n):g} [{min(n)}-{max(n)}] |")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", default=str(DEFAULT_SOURCE), help="table of the source task or model")
    ap.add_argument("--target", default=str(DEFAULT_TARGET), help="table of the target task or model")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--source-trials", type=int, default=50, help="trials of each source study")
    ap.add_argument("--trials", type=int, default=50, help="trials of each target study, the seeds included")
    ap.add_argument("--top", type=int, default=8, help="plans carried over (autopeft run --warm-start-top)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--replay", choices=("nearest", "distinct"), default="nearest",
                    help="a plan absent from the table gets its nearest recorded plan, or (distinct) the nearest "
                         "one that has not answered this study yet (search_quality.py's --replay)")
    ap.add_argument("--arms", nargs="*", default=[], choices=ARMS,
                    help="more target studies beside cold and warm: prior (the default sampler with the source's "
                         "results as its transferred prior mean, no plans queued), warm+prior (both)")
    args = ap.parse_args(argv)
    if args.trials < 2 or args.source_trials < 1 or args.seeds < 1:
        sys.exit("--trials must be at least 2, --source-trials and --seeds at least 1")
    source_table, _, _ = sq.replay_setup(args.source)
    target_table, _, _ = sq.replay_setup(args.target)
    jobs = [(seed, args.source, args.target, args.source_trials, args.trials, args.top, args.replay == "distinct",
             tuple(args.arms)) for seed in range(args.seeds)]
    started = time.time()
    if args.workers > 1:
        with mp.get_context("spawn").Pool(args.workers) as pool:
            results = pool.map(run_seed, jobs)
    else:
        results = [run_seed(j) for j in jobs]
    rel = lambda p: Path(p).resolve().relative_to(ROOT) if Path(p).resolve().is_relative_to(ROOT) else p  # noqa: E731
    print(f"`python benchmarks/warm_start.py {' '.join(argv if argv is not None else sys.argv[1:])}` · "
          f"{sq.machine()} · {time.strftime('%Y-%m-%d')} · code {sq.code_version()} · seeds 0-{args.seeds - 1} · "
          f"{time.time() - started:.0f} s")
    print(f"source `{rel(args.source)}` ({source_table.fidelity.describe()}), {args.source_trials} trials; "
          f"target `{rel(args.target)}` ({target_table.fidelity.describe()}, {len(target_table.rows)} plans); "
          f"warm studies seeded with {statistics.mean(r['seeded'] for r in results):g} plans on average")
    print()
    print("\n".join(report(results, target_table.rows, args.trials, tuple(args.arms))))


if __name__ == "__main__":
    main()
