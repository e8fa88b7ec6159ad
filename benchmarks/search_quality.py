"""Search quality: hypervolume reached by each sampler after 10, 25, 50 and 100 trials, on the replay objective.

Every (sampler, seed) pair runs one search over the table's space (``search_spaces/full.yaml`` for the table
``benchmarks/build_table.py`` builds) in-process on Optuna's in-memory storage. Trials are answered from the
table (:class:`autopeft.proxy.replay.ReplayEvaluator`: the recorded metrics of the equal plan, else of the
nearest recorded plan), so a search costs only its proposals. Each study starts like ``autopeft run``: the
head-only anchor first, then the sampler (``make_sampler``'s settings, 8 start-up trials).

Hypervolume is of the feasible front of (score up, trainable % down), as 100 x the true front's, i.e. of every
plan the table records. Two reference points:

* ``project``: the rule of :func:`autopeft.optimize.pareto.default_reference_point` (score 0, 100 % trainable),
  what the CLI and dashboard report. Trainable % spans 0.003-5 % here, so this volume is nearly the best score
  alone; it separates samplers little.
* ``log-nadir``: trainable % on a log10 axis, reference at the table's worst score and largest trainable %:
  every part of the front counts, the cheap end as much as the accurate one.

    python benchmarks/search_quality.py --seeds 10 --trials 100 --workers 2

``--replay distinct`` answers a plan the table does not record with the nearest recorded plan that has not
answered this search yet (each plan answers a search once, as each new plan is a new run in a real search); it
writes a section of its own. ``NAME+sensitivity`` queues ``autopeft run --seed-sensitivity``'s seeds before the
sampler ``NAME`` (``NAME+reversed-sensitivity``: the same seeds from the reversed ranking, a control).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TABLE = ROOT / "benchmarks" / "data" / "table_rotten_tomatoes_minilm_h200.jsonl"  # 305 plans, on an H200
DEFAULT_DOC = ROOT / "docs" / "benchmarks.md"
DEFAULT_PLOT = ROOT / "docs" / "search_quality.png"
DEFAULT_JSON = ROOT / "benchmarks" / "data" / "search_quality.json"
SECTION = "## Search quality (issue 6)"
#: --replay modes: the section each one writes, and its plot
REPLAYS = {"nearest": (SECTION, "search_quality.png"),
           "distinct": ("## Search quality, distinct replay (issue 6)", "search_quality_distinct.png")}
OPTUNA_GP = "optuna-gp"  # Optuna's native GPSampler
SLOW = {"optuna-gp", "optuna-botorch"}  # Optuna's GP samplers: seconds per proposal at 50-100 trials
CHECKPOINTS = (10, 25, 50, 100)
N_STARTUP = 8  # autopeft run's --startup-trials default
MEASURES = ("project", "log-nadir")


# --------------------------------------------------------------------------- set-up
def replay_setup(table_path: str):
    """(table, space, replay fidelity) of a table file."""
    from autopeft.proxy.fidelity import Fidelity
    from autopeft.proxy.replay import load_table
    from autopeft.space import ModelDims, SearchSpace, parse_space

    table = load_table(table_path)
    h = table.header
    if "space_yaml" not in h or "dims" not in h:
        sys.exit(f"{table_path}: the header names no space; build the table with benchmarks/build_table.py")
    spec = parse_space(h["space_yaml"], source=f"table {table_path}")
    d = h["dims"]
    space = SearchSpace(spec, ModelDims(d["num_layers"], d["hidden_size"], tuple(d["sites"])), source=spec.name)
    fidelity = Fidelity(**{**table.fidelity.model_dump(), "objective": "replay", "table": str(table_path)})
    return table, space, fidelity


def make_named_sampler(name: str, seed: int, space):
    """The sampler ``autopeft run --sampler name`` would use (``space``: the study's, for samplers that read plans),
    or one of ``benchmarks/proposer_latency.py``'s ablations of the default (``autopeft-linear-costs``, ...)."""
    from autopeft.optimize.samplers import make_sampler

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from proposer_latency import ABLATIONS
    from proposer_latency import make as make_ablation

    if name in ABLATIONS:
        return make_ablation(name, seed, space)
    return make_sampler(name, seed=seed, n_startup_trials=N_STARTUP, space=space)


# --------------------------------------------------------------------------- hypervolume
def reference(measure: str, rows: list[dict[str, Any]]) -> tuple[float, float]:
    """Reference point (score, cost) of ``measure``, in maximisation form: (score, -trainable %) or
    (score, -log10 trainable %)."""
    from autopeft.optimize.pareto import default_reference_point

    if measure == "project":
        score, pct = default_reference_point(["maximize", "minimize"], ["score", "trainable_pct"]).values
        return score, -pct
    return min(r["score"] for r in rows), -math.log10(max(max(r["trainable_pct"] for r in rows), MIN_PCT))


def true_front(measure: str, rows: list[dict[str, Any]]) -> tuple[tuple[float, float], float]:
    """(reference point, hypervolume of the front of every completed row) of ``measure``: the 100 % mark of a
    curve."""
    done = [r for r in rows if r.get("state", "COMPLETE") == "COMPLETE"]
    ref = reference(measure, done)
    return ref, hypervolume([to_point(measure, r["score"], r["trainable_pct"]) for r in done], ref)


#: Floor of trainable % on the log axis (a plan that trains nothing at all would sit at minus infinity).
MIN_PCT = 1e-6


def to_point(measure: str, score: float, pct: float) -> tuple[float, float]:
    return (score, -pct) if measure == "project" else (score, -math.log10(max(pct, MIN_PCT)))


def hypervolume(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by ``points`` (maximisation, 2 objectives) above ``ref``: the staircase sum.

    Own code, not botorch's ``Hypervolume``: the curves need the volume after every trial of every run
    (thousands of calls), and the two-objective sweep is a sort and a loop."""
    inside = sorted((p for p in points if p[0] > ref[0] and p[1] > ref[1]), key=lambda p: -p[0])
    area, best_cost = 0.0, ref[1]
    for score, cost in inside:  # by score, best first: each point adds the strip its cost improves
        if cost > best_cost:
            area += (score - ref[0]) * (cost - best_cost)
            best_cost = cost
    return area


# --------------------------------------------------------------------------- one search
def run_search(job: tuple[str, int, str, int, int, bool, int]) -> dict[str, Any]:
    """One search, ``job`` = (sampler name, seed, table, trials, torch threads, distinct replay, batch); returns
    :func:`drive`'s record of it with the sampler name and seed."""
    import optuna
    import torch

    from autopeft.proxy.replay import ReplayEvaluator
    from autopeft.study.runner import quiet_libraries
    from autopeft.study.study import enqueue_anchors

    name, seed, table_path, n_trials, threads, distinct, batch = job
    torch.set_num_threads(threads)
    quiet_libraries()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    _, space, fidelity = replay_setup(table_path)
    evaluator = ReplayEvaluator(fidelity, distinct=distinct)
    sampler_name, _, start = name.partition("+")
    study = optuna.create_study(directions=space.directions, sampler=make_named_sampler(sampler_name, seed, space))
    study.set_metric_names(space.objectives)
    enqueue_anchors(study, space)
    if start:
        enqueue_sensitivity_seeds(study, space, fidelity, start)
    return {"sampler": name, "seed": seed, **drive(study, space, evaluator, n_trials, batch)}


def drive(study, space, evaluator, n_trials: int, batch: int = 1) -> dict[str, list]:
    """Ask, replay and tell ``n_trials`` trials of ``study`` (queued ones first, as workers take them): per-trial
    (score, trainable %) (None for failed trials), proposal and replay seconds, replay distances and the ids of
    the rows that answered.

    ``batch`` > 1 keeps that many trials asked and not yet told, as that many workers would (each trial is told in
    the order it was asked, then the next is asked): every proposal after the first ones is made with ``batch`` - 1
    others pending."""
    import optuna

    from autopeft.proxy.train import TrialFailed

    dists = space.distributions()
    values, propose_s, replay_s, distance, rows = [], [], [], [], []
    running: list = []  # asked, not told yet: the trials ``batch`` workers hold
    for _ in range(n_trials):
        while len(running) < batch and len(propose_s) < n_trials:
            t0 = time.perf_counter()
            running.append(study.ask(fixed_distributions=dists))
            propose_s.append(time.perf_counter() - t0)
        trial = running.pop(0)  # the oldest finishes first
        plan = space.decode({k: int(v) for k, v in trial.params.items()})
        t1 = time.perf_counter()
        try:
            m = evaluator.run(plan)
        except TrialFailed:
            replay_s.append(time.perf_counter() - t1)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            values.append(None)
        else:
            replay_s.append(time.perf_counter() - t1)
            study.tell(trial, [m.objective(o) for o in space.objectives])
            values.append((m.score, m.trainable_pct))
        distance.append(evaluator.last_match.distance)
        rows.append(evaluator.last_match.row_id)
    return {"values": values, "propose_s": propose_s, "replay_s": replay_s, "distance": distance, "rows": rows}


#: Starts a sampler name can add after a "+": the sensitivity seeds of ``autopeft run --seed-sensitivity``, or, as
#: a control, the same seeds built from the reversed ranking (least sensitive layers first).
STARTS = ("sensitivity", "reversed-sensitivity")
_RANKINGS: dict[str, list[int]] = {}  # table -> layer ranking, measured once per process


def enqueue_sensitivity_seeds(study, space, fidelity, start: str) -> None:
    """Queue the sensitivity seeds after the head-only anchor, as ``autopeft run --seed-sensitivity`` does; the
    ranking is measured on the table's model and task (a few seconds) and is deterministic."""
    from autopeft.sensitivity import SEED_ATTR, measure_ranking, sensitivity_seeds

    if fidelity.table not in _RANKINGS:
        _RANKINGS[fidelity.table] = measure_ranking(fidelity)
    ranking = _RANKINGS[fidelity.table]
    if start == "reversed-sensitivity":
        ranking = ranking[::-1]
    for params in sensitivity_seeds(space, ranking):
        study.enqueue_trial(params, user_attrs={SEED_ATTR: start})


def curve(values: list, measure: str, ref: tuple[float, float], full: float) -> list[float]:
    """Hypervolume after each trial, in % of ``full``."""
    points, out = [], []
    for v in values:
        if v is not None:
            points.append(to_point(measure, *v))
        out.append(100 * hypervolume(points, ref) / full)
    return out


# --------------------------------------------------------------------------- report
def summarise(results: list[dict], rows: list[dict], checkpoints: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {"measures": {}}
    for measure in MEASURES:
        ref, full = true_front(measure, rows)
        per: dict[str, Any] = {}
        for res in results:
            c = curve(res["values"], measure, ref, full)
            per.setdefault(res["sampler"], []).append(c)
        out["measures"][measure] = {"reference": ref, "true_front_hv": full, "curves": per}
    return out


def stats(xs: list[float]) -> tuple[float, float, float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0), min(xs), max(xs)


def difference_ci(a: list[float], b: list[float], resamples: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """(mean(a) - mean(b), and its 95 % bootstrap interval): seeds resampled with replacement within each sampler
    (the runs of two samplers are independent, not paired), seeded, percentiles of the resampled differences."""
    import numpy as np

    rng = np.random.default_rng(seed)
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    da = xa[rng.integers(0, len(xa), (resamples, len(xa)))].mean(1)
    db = xb[rng.integers(0, len(xb), (resamples, len(xb)))].mean(1)
    lo, hi = np.percentile(da - db, [2.5, 97.5])
    return float(xa.mean() - xb.mean()), float(lo), float(hi)


def difference_lines(summary: dict, checkpoints: list[int], default: str) -> list[str]:
    """A table of the default's lead over every other sampler per measure and checkpoint, with its interval."""
    others = [n for n in summary["measures"][MEASURES[0]]["curves"] if n != default]
    if default not in summary["measures"][MEASURES[0]]["curves"] or not others:
        return []
    head = [f"{m} {k}" for m in MEASURES for k in checkpoints]
    lines = [f"**The default's lead**: mean hypervolume of `{default}` minus the other sampler's, in points, with a "
             "95 % bootstrap interval over seeds (an interval that holds 0 is no difference at this number of seeds).",
             "", "| against | " + " | ".join(f"{h} trials" for h in head) + " |", "|---|" + "---:|" * len(head)]
    for name in others:
        cells = []
        for measure in MEASURES:
            curves = summary["measures"][measure]["curves"]
            for k in checkpoints:
                a = [c[k - 1] for c in curves[default] if len(c) >= k]
                b = [c[k - 1] for c in curves[name] if len(c) >= k]
                if len(a) < 2 or len(b) < 2:
                    cells.append("not run")
                    continue
                d, lo, hi = difference_ci(a, b)
                cells.append(f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def markdown(summary: dict, results: list[dict], meta: dict[str, Any], checkpoints: list[int],
             default: str) -> str:
    section, image = REPLAYS[meta["replay"]]
    how = ("else the nearest one (slot distance, `autopeft/proxy/replay.py`)" if meta["replay"] == "nearest" else
           "else the nearest one that has not answered this search yet (`--replay distinct`: "
           "`ReplayEvaluator(distinct=True)`, slot distance, `autopeft/proxy/replay.py`)")
    lines = [section, "",
             f"`{meta['command']}` · {meta['machine']} · {meta['date']} · table `{meta['table']}`: its first "
             f"{meta['plans']} plans ({meta['complete']} complete), built at {meta['table_fidelity']} by code "
             f"{meta['table_code']} · seeds {meta['seeds']} · space `{meta['space']}` ({meta['n_params']} parameters) · "
             f"searches run by code {meta['code']}, {meta['wall_s'] / 60:.0f} min wall clock.",
             "",
             "Each search starts as `autopeft run` does (head-only anchor, then the sampler with 8 start-up trials) "
             "and is answered from the table by the replay objective (`--objective replay`): the equal recorded plan, "
             f"{how}. Hypervolume of the front of "
             "(score up, trainable % down) in % of the table's true front (all its plans); mean ± standard deviation "
             "over seeds, [min-max]. `project`: reference point of `autopeft.optimize.pareto.default_reference_point` "
             "(score 0, 100 % trainable), which the CLI and dashboard report; `log-nadir`: trainable % on a log10 axis, "
             f"reference at the table's worst score and largest trainable %. The default sampler is `{default}`."
             + (f" {meta['batch']} trials are kept running, as {meta['batch']} workers would: each trial is told in "
                f"the order it was asked, then the next is asked, so every proposal is made with {meta['batch'] - 1} "
                "others pending." if meta.get("batch", 1) > 1 else ""),
             ""]
    for measure in MEASURES:
        m = summary["measures"][measure]
        lines += [f"**{measure}** (reference {tuple(round(x, 4) for x in m['reference'])}, true front "
                  f"{m['true_front_hv']:.4g})", "",
                  "| sampler | runs | " + " | ".join(f"{k} trials" for k in checkpoints) + " |",
                  "|---|---:|" + "---:|" * len(checkpoints)]
        for name, curves in m["curves"].items():
            cells = []
            for k in checkpoints:
                at = [c[k - 1] for c in curves if len(c) >= k]
                if not at:
                    cells.append("not run")
                    continue
                mean, sd, lo, hi = stats(at)
                cells.append(f"{mean:.1f} ± {sd:.1f} [{lo:.1f}-{hi:.1f}]")
            label = f"{name} (default)" if name == default else name
            lines.append(f"| {label} | {len(curves)} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += difference_lines(summary, [k for k in checkpoints if k in (25, 50)] or checkpoints, default)
    lines += ["| sampler | trials per run | mean s per proposal | last 10 proposals, s | replay ms (median) "
              "| exact replays | mean replay distance | recorded plans answering the first 50 trials (mean) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    by: dict[str, list[dict]] = {}
    for r in results:
        by.setdefault(r["sampler"], []).append(r)
    for name, rs in by.items():
        props = [s for r in rs for s in r["propose_s"]]
        tail = [s for r in rs for s in r["propose_s"][-10:]]
        dist = [d for r in rs for d in r["distance"]]
        exact = sum(d == 0 for d in dist) / len(dist)
        replay_ms = 1000 * statistics.median(s for r in rs for s in r["replay_s"])
        distinct = statistics.mean(len(set(r["rows"][:50])) for r in rs)
        lines.append(f"| {name} | {len(rs[0]['values'])} | {statistics.mean(props):.3f} | {statistics.mean(tail):.3f} "
                     f"| {replay_ms:.2f} | {100 * exact:.0f} % | {statistics.mean(dist):.2f} | {distinct:.1f} |")
    lines += ["", f"![Hypervolume per trial, mean and min-max over seeds]({image})", ""]
    return "\n".join(lines)


def write_section(doc: Path, text: str, section: str = SECTION) -> None:
    """Replace the section (up to the next ``## `` heading) in ``doc``, or append it."""
    body = doc.read_text() if doc.exists() else "# Benchmarks\n"
    start = body.find(section)
    if start < 0:
        body = body.rstrip("\n") + "\n\n\n" + text + "\n"
    else:
        nxt = body.find("\n## ", start + len(section))
        body = body[:start] + text + ("\n\n" + body[nxt + 1:] if nxt >= 0 else "\n")
    doc.write_text(body)


def plot(summary: dict, path: Path, default: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(MEASURES), figsize=(12, 4.5))
    for ax, measure in zip(axes, MEASURES):
        for name, curves in summary["measures"][measure]["curves"].items():
            n = min(len(c) for c in curves)
            xs = list(range(1, n + 1))
            cols = [[c[i] for c in curves] for i in range(n)]
            mean = [statistics.mean(col) for col in cols]
            line, = ax.plot(xs, mean, label=f"{name} (default)" if name == default else name,
                            linewidth=2.5 if name == default else 1.5)
            ax.fill_between(xs, [min(c) for c in cols], [max(c) for c in cols], color=line.get_color(), alpha=0.12)
        ax.set_xlabel("trials")
        ax.set_ylabel("hypervolume, % of the table's true front")
        ax.set_title(f"reference: {measure}")
        ax.grid(alpha=0.3)
    axes[-1].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def compact(res: dict[str, Any]) -> dict[str, Any]:
    return {**res, "values": [None if v is None else [round(v[0], 6), round(v[1], 6)] for v in res["values"]],
            "propose_s": [round(x, 4) for x in res["propose_s"]], "replay_s": [round(x, 6) for x in res["replay_s"]],
            "distance": [round(x, 3) for x in res["distance"]]}


def snapshot(path: str, rows: int | None) -> str:
    """A copy of the table's header and first ``rows`` plans (all when None) in a temporary file."""
    import tempfile

    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    keep = lines[: 1 + rows] if rows is not None else lines
    fd, out = tempfile.mkstemp(prefix="replay-table-", suffix=".jsonl")
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(keep) + "\n")
    return out


def code_version() -> str:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from build_table import code_version as version

    return version()


def machine() -> str:
    load = os.getloadavg()
    return (f"{os.cpu_count()}-core {platform.machine()} CPU ({platform.processor() or 'unknown model'}), "
            f"shared with other jobs (load average {load[0]:.1f} at the start)")


def main(argv: list[str] | None = None) -> None:
    from autopeft.optimize.samplers import DEFAULT_SAMPLER

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--table", default=str(DEFAULT_TABLE))
    ap.add_argument("--samplers", default=f"random,tpe,nsga2,{OPTUNA_GP},{DEFAULT_SAMPLER}",
                    help="comma list of the names make_sampler knows (autopeft run --sampler) and of "
                    "proposer_latency.py's ablations of the default (autopeft-linear-costs, autopeft-per-parameters, "
                    "autopeft-wide-search, ...), each optionally with a start after a '+': NAME+sensitivity queues "
                    "the seeds of autopeft run --seed-sensitivity first, NAME+reversed-sensitivity the same seeds "
                    "from the reversed layer ranking (a control)")
    ap.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 per sampler")
    ap.add_argument("--trials", type=int, default=100, help="trials per search")
    ap.add_argument("--slow-trials", type=int, default=None,
                    help="trials per search for Optuna's GP samplers (optuna-gp, optuna-botorch), if fewer")
    ap.add_argument("--slow-seeds", type=int, default=None,
                    help="seeds for Optuna's GP samplers (optuna-gp, optuna-botorch), if fewer")
    ap.add_argument("--workers", type=int, default=1, help="searches run in parallel processes")
    ap.add_argument("--batch", type=int, default=1,
                    help="trials kept asked and not yet told, as that many workers would run them (default 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--rows", type=int, default=None,
                    help="use the table's first N plans only (a table being built grows at its end: a fixed N "
                    "makes the run repeatable)")
    ap.add_argument("--doc", default=None, help=f"markdown file to write the section into (default: {DEFAULT_DOC.name} "
                    "of docs/; '' for none)")
    ap.add_argument("--replay", choices=tuple(REPLAYS), default="nearest",
                    help="nearest: a plan the table does not record gets the nearest recorded plan's metrics; "
                    "distinct: the nearest one this search has not been answered with yet (its own section)")
    ap.add_argument("--plot", default=None, help="PNG path (default: docs/search_quality[_distinct].png; '' for none)")
    ap.add_argument("--json", default=None, help="per-trial results (default: benchmarks/data/search_quality"
                    "[_distinct].json; '' for none)")
    ap.add_argument("--from-json", default=None, metavar="PATH",
                    help="run no search: summarise a stored run (the file its --json wrote), printed; --doc and --plot "
                    "write only when given")
    ap.add_argument("--seed-range", default=None, metavar="A-B",
                    help="with --from-json: only the searches of seeds A..B (e.g. 10-19, a replication's new seeds)")
    args = ap.parse_args(argv)
    if args.seed_range is not None and args.from_json is None:
        ap.error("--seed-range: only with --from-json PATH (a search run takes --seeds N: seeds 0..N-1)")
    if args.from_json is not None:
        resummarise(args, argv)
        return
    args.doc = str(DEFAULT_DOC) if args.doc is None else args.doc
    names = [s for s in dict.fromkeys(args.samplers.split(",")) if s]
    source = args.table
    args.table = snapshot(source, args.rows)  # every search replays the same rows, whatever the build appends
    table, space, _ = replay_setup(args.table)
    for name in names:
        sampler_name, _, start = name.partition("+")
        make_named_sampler(sampler_name, 0, space)  # unknown names fail here, before any search
        if start and start not in STARTS:
            sys.exit(f"--samplers: unknown start {start!r} in {name!r}; choose one of {', '.join(STARTS)}")
    if args.plot != "" and importlib.util.find_spec("matplotlib") is None:  # fail now, not after the searches
        os.unlink(args.table)
        sys.exit("--plot: matplotlib is not installed; pip install -e '.[benchmark]', or pass --plot '' for no plot")
    checkpoints = [k for k in CHECKPOINTS if k <= args.trials]
    meta = {"command": "python benchmarks/search_quality.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": machine(), "date": time.strftime("%Y-%m-%d"), "table": os.path.relpath(source, ROOT),
            "plans": len(table.rows), "complete": sum(r.get("state", "COMPLETE") == "COMPLETE" for r in table.rows),
            "table_fidelity": table.fidelity.describe(), "table_code": table.header.get("code_version", "?"),
            "seeds": f"0-{args.seeds - 1}"
            + (f" (optuna-gp, optuna-botorch: 0-{args.slow_seeds - 1})" if args.slow_seeds else ""),
            "space": space.spec.name, "n_params": len(space.choices), "code": code_version(), "replay": args.replay,
            "batch": args.batch}
    suffix = "" if args.replay == "nearest" else f"_{args.replay}"
    plot_path = str(DEFAULT_PLOT.with_name(f"search_quality{suffix}.png")) if args.plot is None else args.plot
    json_path = str(DEFAULT_JSON.with_name(f"search_quality{suffix}.json")) if args.json is None else args.json
    jobs = [(name, seed, args.table, args.slow_trials if (name in SLOW and args.slow_trials) else args.trials,
             args.threads, args.replay == "distinct", args.batch) for seed in range(args.seeds) for name in names
            if not (name in SLOW and args.slow_seeds is not None and seed >= args.slow_seeds)]
    results = []
    t0 = time.monotonic()
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.workers) as pool:
        for res in pool.imap_unordered(run_search, jobs):
            results.append(res)
            print(f"{res['sampler']} seed {res['seed']}: {len(res['values'])} trials, "
                  f"{sum(res['propose_s']):.1f} s proposing ({time.monotonic() - t0:.0f} s elapsed)", flush=True)
    results.sort(key=lambda r: (names.index(r["sampler"]), r["seed"]))
    summary = summarise(results, table.rows, checkpoints)
    meta["wall_s"] = time.monotonic() - t0
    text = markdown(summary, results, meta, checkpoints, DEFAULT_SAMPLER)
    print(text)
    if json_path:  # per-trial values and timings of every search, rounded to keep the file small
        Path(json_path).write_text(json.dumps({"meta": meta, "results": [compact(r) for r in results]},
                                              separators=(",", ":")))
    if plot_path:
        plot(summary, Path(plot_path), DEFAULT_SAMPLER)
    if args.doc:
        write_section(Path(args.doc), text, REPLAYS[args.replay][0])
    os.unlink(args.table)  # the snapshot


def resummarise(args, argv: list[str] | None) -> None:
    """The report of a stored run (``--from-json``), optionally of some of its seeds (``--seed-range A-B``)."""
    from autopeft.optimize.samplers import DEFAULT_SAMPLER

    path = Path(args.from_json)
    try:
        stored = json.loads(path.read_text())
        meta, results = stored["meta"], stored["results"]
    except (OSError, ValueError, KeyError) as exc:
        sys.exit(f"--from-json: {path} is not a run this script stored with --json ({exc}); pass the file a run wrote")
    if args.seed_range is not None:
        lo, sep, hi = args.seed_range.partition("-")
        if not (lo.isdigit() and hi.isdigit() and sep and int(lo) <= int(hi)):
            sys.exit(f"--seed-range: {args.seed_range!r} is not a range A-B of seeds with A <= B; pass e.g. 10-19")
        results = [r for r in results if int(lo) <= r["seed"] <= int(hi)]
        if not results:
            sys.exit(f"--seed-range: the run in {path} has no search of seeds {args.seed_range}")
        meta = {**meta, "seeds": f"{args.seed_range} of that run ({meta['seeds']})"}
    meta = {**meta, "command": f"{meta['command']}` summarised by `python benchmarks/search_quality.py "
            + " ".join(argv if argv is not None else sys.argv[1:])}
    table_path = snapshot(str(ROOT / meta["table"]), meta["plans"])
    try:
        table, _, _ = replay_setup(table_path)
    finally:
        os.unlink(table_path)
    trials = max(len(r["values"]) for r in results)
    checkpoints = [k for k in CHECKPOINTS if k <= trials]
    summary = summarise(results, table.rows, checkpoints)
    text = markdown(summary, results, meta, checkpoints, DEFAULT_SAMPLER)
    print(text)
    if args.plot:
        plot(summary, Path(args.plot), DEFAULT_SAMPLER)
    if args.doc:
        write_section(Path(args.doc), text, REPLAYS[meta["replay"]][0])


if __name__ == "__main__":
    main()
