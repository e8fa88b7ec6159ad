"""Queue overhead: what the study database costs per trial, and how long workers wait for proposals.

    python benchmarks/queue_overhead.py [--postgres URL] [--repeats 3] [--trials 120]

Part 1 - per-trial overhead of claim + heartbeat + report, with 1, 4 and 8 worker processes on SQLite
and PostgreSQL. Every trial is queued beforehand and costs nothing to evaluate (the synthetic objective
with 0 s), so a worker's wall time per trial is all queue overhead. Baseline, side by side: the same
queued trials and the same attribute writes through Optuna's own loop (``Study.optimize`` with
heartbeats). Medians over repeats; each repeat is a fresh study.

Part 2 - idle share: 8 workers, trials of 5 s each (the synthetic objective sleeps), one proposer
keeping the queue full; the share of the workers' time spent waiting for a trial to claim, for the
random sampler (queue mechanics alone) and for the default BoTorch sampler (GP proposals).

PostgreSQL: --postgres URL, else $AUTOPEFT_TEST_POSTGRES_URL; without either only SQLite runs.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid

SPACE = "autopeft"


def _study(url: str, trial_seconds: float):
    from autopeft.proxy.fidelity import Fidelity
    from autopeft.study.runner import prepare_study

    fid = Fidelity(objective="synthetic", trial_seconds=trial_seconds)
    st, _ = prepare_study(SPACE, fid, storage=url, study_name=f"bench-{uuid.uuid4().hex[:8]}", sampler="random")
    return st


def _queue(st, n: int) -> None:
    """Queue ``n`` trials (the anchor counts as one) with random parameters."""
    import optuna

    from autopeft.study.worker import propose

    st.study.sampler = optuna.samplers.RandomSampler(seed=0)
    propose(st, n - 1)


# --------------------------------------------------------------------------- part 1
def _autopeft_worker(url, name, start, out):
    from autopeft.study.runner import quiet_libraries
    from autopeft.study.storage import open_storage
    from autopeft.study.study import load
    from autopeft.proxy.synthetic import SyntheticEvaluator
    from autopeft.study.presence import Presence
    from autopeft.study.worker import run_worker

    quiet_libraries()
    st = load(open_storage(url), name)
    evaluator = SyntheticEvaluator(st.fidelity)
    spent = []
    run_eval = evaluator.run

    def timed(plan):
        t = time.perf_counter()
        result = run_eval(plan)
        spent.append(time.perf_counter() - t)
        return result

    evaluator.run = timed
    presence = Presence(st, "worker")
    start.wait()
    t0, c0 = time.perf_counter(), time.process_time()
    stats = run_worker(st, evaluator, presence=presence, self_propose=False, idle_timeout=0, poll_seconds=0.05)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    out.put((stats.completed, wall, sum(spent), cpu))


def _optuna_worker(url, name, start, out):
    """Optuna's loop doing the same work: pop a queued trial, evaluate, write the same attributes, tell."""
    import optuna

    from autopeft.proxy.synthetic import SyntheticEvaluator
    from autopeft.study.runner import quiet_libraries
    from autopeft.study.storage import open_storage
    from autopeft.study.study import load

    quiet_libraries()
    storage = open_storage(url)
    st = load(storage, name)
    evaluator = SyntheticEvaluator(st.fidelity)
    dists = st.space.distributions()
    spent = []
    done = [0]

    def objective(trial):
        params = {k: trial.suggest_int(k, d.low, d.high) for k, d in dists.items()}
        plan = st.space.decode(params)
        trial.set_user_attr("plan", plan.to_dict())
        trial.set_user_attr("plan_summary", plan.summary())
        trial.set_user_attr("fidelity", st.fidelity.model_dump())
        t = time.perf_counter()
        metrics = evaluator.run(plan)
        spent.append(time.perf_counter() - t)
        trial.set_user_attr("metrics", metrics.to_dict())
        done[0] += 1
        return [metrics.objective(o) for o in st.objectives]

    def stop_when_empty(study, trial):
        if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
            study.stop()

    study = optuna.load_study(study_name=name, storage=storage)
    start.wait()
    t0, c0 = time.perf_counter(), time.process_time()
    if study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        study.optimize(objective, callbacks=[stop_when_empty])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    out.put((done[0], wall, sum(spent), cpu))


def overhead(url: str, loop: str, workers: int, trials: int) -> tuple[float, float, float]:
    """(median per-trial overhead in wall ms across workers, the same in CPU ms of the worker process,
    trials per second overall). With more workers than cores the wall figure includes waiting for a
    core; the CPU figure is what a worker with a core of its own would add, before database latency."""
    st = _study(url, 0.0)
    _queue(st, trials)
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    target = _autopeft_worker if loop == "autopeft" else _optuna_worker
    procs = [ctx.Process(target=target, args=(url, st.name, start, out)) for _ in range(workers)]
    for p in procs:
        p.start()
    time.sleep(4 + workers)  # let every process import and connect before the clock starts
    t0 = time.perf_counter()
    start.set()
    results = [out.get(timeout=900) for _ in procs]
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join()
    done = sum(r[0] for r in results)
    # Optuna's loop samples a fresh trial when the queue empties between its check and its ask, so it
    # may run a few more than were queued (same work each); autopeft's workers only claim.
    if done < trials or (loop == "autopeft" and done != trials):
        raise RuntimeError(f"{loop}: {done} trials ran, {trials} were queued")
    per_trial = [1000 * (wall - spent) / n for n, wall, spent, _ in results if n]
    cpu_per_trial = [1000 * (cpu - spent) / n for n, _, spent, cpu in results if n]
    return statistics.median(per_trial), statistics.median(cpu_per_trial), done / elapsed


# --------------------------------------------------------------------------- part 2
def _idle_worker(url, name, n_trials, out):
    from autopeft.study.runner import WorkerSpec, worker_main

    stats = worker_main(WorkerSpec(url, name, n_trials=n_trials, sampler="random"))
    out.put((stats.idle_seconds, stats.wall_seconds, stats.completed))  # from entering the worker loop


def _proposer(url, name, sampler, n_trials):
    from autopeft.optimize.samplers import make_sampler
    from autopeft.study.presence import Presence
    from autopeft.study.proposer import run_proposer
    from autopeft.study.runner import quiet_libraries
    from autopeft.study.storage import open_storage
    from autopeft.study.study import load

    quiet_libraries()
    st = load(open_storage(url), name, sampler=make_sampler(sampler, seed=0))
    run_proposer(st, n_trials=n_trials, presence=Presence(st, "proposer"), poll_seconds=0.2)  # exits at n_trials


def idle_share(url: str, sampler: str, workers: int, per_worker: int, trial_seconds: float) -> tuple[float, float]:
    """(idle share of worker time in %, median idle seconds per worker)."""
    st = _study(url, trial_seconds)
    n_trials = workers * per_worker
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proposer = ctx.Process(target=_proposer, args=(url, st.name, sampler, n_trials))
    proposer.start()
    time.sleep(5)  # the proposer is serving before the workers arrive (as in a deployment)
    procs = [ctx.Process(target=_idle_worker, args=(url, st.name, n_trials, out)) for _ in range(workers)]
    for p in procs:
        p.start()
    results = [out.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join()
    proposer.join(timeout=120)
    if proposer.is_alive():
        proposer.terminate()
    idle = [r[0] for r in results]
    wall = [r[1] for r in results]
    return 100 * sum(idle) / sum(wall), statistics.median(idle)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--postgres", default=os.environ.get("AUTOPEFT_TEST_POSTGRES_URL"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--trials", type=int, default=120, help="queued trials per overhead run")
    ap.add_argument("--workers", default="1,4,8")
    ap.add_argument("--idle-trials", type=int, default=6, help="trials per worker in the idle-share runs")
    ap.add_argument("--idle-workers", type=int, default=8)
    ap.add_argument("--trial-seconds", type=float, default=5.0)
    ap.add_argument("--skip-idle", action="store_true")
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--idle-samplers", default="random,botorch")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="autopeft-bench-")
    backends = [("SQLite", lambda: f"sqlite:///{tmp}/{uuid.uuid4().hex[:6]}.db")]
    if args.postgres:
        backends.append(("PostgreSQL", lambda: args.postgres))
    print(f"# queue overhead · {platform.machine()} · {os.cpu_count()} CPUs · Python {sys.version.split()[0]}")
    print(f"# {args.trials} queued zero-cost trials per run, median of {args.repeats} repeats\n")
    if not args.skip_overhead:
        print("| storage | workers | autopeft ms/trial | Optuna optimize ms/trial | ratio | autopeft CPU ms/trial "
              "| Optuna CPU ms/trial | autopeft trials/s | Optuna trials/s |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, make_url in backends if not args.skip_overhead else []:
        for w in [int(x) for x in args.workers.split(",")]:
            ours, base = [], []
            for _ in range(args.repeats):
                ours.append(overhead(make_url(), "autopeft", w, args.trials))
                base.append(overhead(make_url(), "optuna", w, args.trials))
            o = [statistics.median(x[i] for x in ours) for i in range(3)]
            b = [statistics.median(x[i] for x in base) for i in range(3)]
            print(f"| {label} | {w} | {o[0]:.1f} | {b[0]:.1f} | {o[0] / b[0]:.2f} | {o[1]:.1f} | {b[1]:.1f} "
                  f"| {o[2]:.1f} | {b[2]:.1f} |", flush=True)
    if args.skip_idle:
        return
    print(f"\n# idle share: {args.idle_workers} workers, {args.trial_seconds:g} s trials, "
          f"{args.idle_trials} trials per worker, one proposer started 5 s before them\n")
    print("| storage | proposer sampler | idle % of worker time | median idle s per worker |")
    print("|---|---|---:|---:|")
    for label, make_url in backends:
        for sampler in args.idle_samplers.split(","):
            share, med = idle_share(make_url(), sampler, args.idle_workers, args.idle_trials, args.trial_seconds)
            print(f"| {label} | {sampler} | {share:.1f} | {med:.1f} |", flush=True)


if __name__ == "__main__":
    main()
