"""Dashboard load time at 500 and 5,000 trials: first render and refresh, against reloading every trial.

    python benchmarks/dashboard_load.py [--sizes 500 5000] [--repeats 5] [--keep DIR]

Builds one SQLite study per size in the ``full`` space (49 parameters per trial, the heaviest preset for
Optuna's reader), with metrics from a seeded closed-form score (no training), then times, as medians of
``--repeats`` runs:

* **data + figures**: what one page render computes outside Streamlit: read trials, build the trial frame,
  the front, the hypervolume and best-under-budget series, and the Plotly figures of the front, both progress
  charts and one plan.
  - *dashboard*: ``TrialCache`` (reads Optuna's tables directly; a refresh re-reads only new and unfinished
    trials) and the incremental frame builder;
  - *baseline*: reloading everything through Optuna (``RDBStorage.get_all_trials``) on every render.
  "first render" starts from a cold cache; "refresh" follows 5 trials that finished since the last render.
* **page (AppTest)**: the whole Streamlit script (``streamlit.testing``), first run and a rerun after 5 new
  trials: what a browser waits for on the server side, including Streamlit's serialisation.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import tempfile
import time
import warnings
import zlib
from pathlib import Path

import optuna
import sqlalchemy as sa
from optuna.trial import create_trial

from autopeft.dashboard import data as D
from autopeft.dashboard import figures as F
from autopeft.dashboard.source import TrialCache, open_readonly, open_study
from autopeft.proxy.fidelity import Fidelity
from autopeft.space import ModelDims, load_space
from autopeft.study.storage import open_storage
from autopeft.study.study import create_or_load

BASE_PARAMS = 22_700_000  # MiniLM with a 2-label head
HEAD_PARAMS = 770
APP = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"


def fake_metrics(plan) -> dict:
    """A closed-form stand-in for training: score rises with the log of the plan's parameters, plus a seeded
    per-plan wobble so most trials are dominated (as in a real search)."""
    size = sum(max(m.size, 1) * max(m.num_experts, 1) * 2 * 384 for _, m in plan.modules())
    wobble = (zlib.crc32(plan.summary().encode()) % 1000) / 1000 - 0.5
    score = 0.55 + 0.3 * (1 - math.exp(-math.log1p(size) / 8)) + 0.06 * wobble
    params = size + HEAD_PARAMS
    return {"score": score, "test_score": score, "metric": "accuracy", "trainable_params": params,
            "module_params": size, "base_params": BASE_PARAMS, "trainable_pct": 100 * params / BASE_PARAMS,
            "step_time": 0.2 + size / 5e6, "peak_memory": 50 + size / 1e4, "train_loss": 0.3, "wall_time": 30.0}


def add_trials(st, n: int, rng: random.Random) -> None:
    """``n`` COMPLETE trials with the user attributes a worker records."""
    dists = st.space.distributions()
    trials = []
    for _ in range(n):
        params = st.space.sample(rng)
        plan = st.space.decode(params)
        m = fake_metrics(plan)
        trials.append(create_trial(
            params=params, distributions=dists, values=[m[o] for o in st.objectives],
            user_attrs={"plan": plan.to_dict(), "plan_summary": plan.summary(), "fidelity": st.fidelity.model_dump(),
                        "metrics": m}))
    st.study.add_trials(trials)


def build(path: Path, n: int):
    url = f"sqlite:///{path}"
    storage = open_storage(url)
    # Building only: skip fsync per commit (the benchmark measures reads, not the build).
    sa.event.listen(storage.engine, "connect", lambda conn, _: conn.execute("PRAGMA synchronous=OFF"))
    storage.engine.dispose()
    st, _ = create_or_load(storage, "bench", load_space("full"), ModelDims(6, 384), Fidelity(steps=120))
    add_trials(st, n - 1, random.Random(n))  # plus the queued head-only anchor
    return url, st


def render(frame, st, plan_trial) -> None:
    """The derived data and figures of one page render."""
    view = D.front_view(frame, ("trainable_pct", "score"))
    F.front_figure(view, "trainable_pct", "score", log_x=True)
    ref = D.reference_point(frame, st.objectives)
    F.hypervolume_figure(D.hypervolume_series(frame, st.objectives, ref), st.objectives, ref)
    F.budget_figure(D.best_under_budget_series(frame, 1.0), 1.0)
    from autopeft.plan import PeftPlan

    plan = PeftPlan.from_dict(plan_trial.user_attrs["plan"])
    grid = D.plan_grid(plan)
    slots = D.slot_order(grid)
    values, labels = D.grid_matrix(grid, plan.num_layers, slots)
    F.plan_figure(values, labels, slots, "plan")


class Dashboard:
    def __init__(self, url: str):
        self.study = open_study(open_readonly(url), "bench")
        self.cache = TrialCache(self.study.storage, self.study.study._study_id)
        self.frames = D.TrialFrame(self.study.fidelity.model_dump(), self.study.objectives)

    def render(self) -> None:
        self.cache.refresh()
        records = self.cache.records
        render(self.frames.frame(records), self.study, records[-1])


class Reload:
    """The baseline: every render reads all trials through Optuna and converts them all."""

    def __init__(self, url: str):
        self.study = open_study(open_readonly(url), "bench")

    def render(self) -> None:
        trials = self.study.storage.get_all_trials(self.study.study._study_id, deepcopy=False)
        frame = D.trial_frame(trials, self.study.fidelity.model_dump(), self.study.objectives)
        render(frame, self.study, trials[-1])


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(url: str, st, kind, repeats: int, rng: random.Random) -> tuple[float, float]:
    first, refresh = [], []
    for _ in range(repeats):
        view = kind(url)
        first.append(timed(view.render))
        add_trials(st, 5, rng)  # five trials finish before the next refresh
        refresh.append(timed(view.render))
    return statistics.median(first), statistics.median(refresh)


def measure_page(url: str, st, repeats: int, rng: random.Random) -> tuple[float, float]:
    import os

    from streamlit.testing.v1 import AppTest

    os.environ["AUTOPEFT_STORAGE"] = url
    first, rerun = [], []
    for _ in range(repeats):
        import streamlit as stl

        stl.cache_resource.clear()  # a cold server
        at = AppTest.from_file(str(APP), default_timeout=300)
        first.append(timed(at.run))
        assert not at.exception, [e.message for e in at.exception]
        add_trials(st, 5, rng)
        rerun.append(timed(at.run))
        assert not at.exception, [e.message for e in at.exception]
    return statistics.median(first), statistics.median(rerun)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 5000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", type=Path, default=None, help="Folder for the study databases (default: a temp dir).")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="autopeft-dash-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.sizes:
        path = folder / f"study-{n}.db"
        path.unlink(missing_ok=True)
        t0 = time.perf_counter()
        url, st = build(path, n)
        print(f"built {n:,} trials in {time.perf_counter() - t0:.0f} s ({path})", file=sys.stderr)
        rng = random.Random(-n)
        dash = measure(url, st, Dashboard, args.repeats, rng)
        base = measure(url, st, Reload, args.repeats, rng)
        page = measure_page(url, st, args.repeats, rng)
        rows.append((n, dash, base, page))

    print(f"\nDashboard load, medians of {args.repeats} (seconds; refresh = after 5 new trials)\n")
    print("| trials | what | dashboard (incremental cache) | baseline (reload all via Optuna) | speed-up |")
    print("|---:|---|---:|---:|---:|")
    for n, dash, base, page in rows:
        print(f"| {n:,} | data + figures, first render | {dash[0]:.3f} | {base[0]:.3f} | {base[0] / dash[0]:.1f}x |")
        print(f"| {n:,} | data + figures, refresh | {dash[1]:.3f} | {base[1]:.3f} | {base[1] / dash[1]:.1f}x |")
    print("\n| trials | whole page (AppTest) | first render | refresh |")
    print("|---:|---|---:|---:|")
    for n, _, _, page in rows:
        print(f"| {n:,} | dashboard | {page[0]:.3f} | {page[1]:.3f} |")


if __name__ == "__main__":
    main()
