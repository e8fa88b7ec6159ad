"""Run a study: validate the request, open (or resume) the study, and drive worker processes."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import sys
import time
from dataclasses import dataclass, replace
from typing import Callable

from optuna.trial import TrialState

from autopeft.errors import AutopeftError, StudyError
from autopeft.proxy.fidelity import Fidelity
from autopeft.study.retry import DEFAULT_OUTAGE_DEADLINE
from autopeft.study.storage import GRACE_PERIOD, HEARTBEAT_INTERVAL, MAX_RETRY, open_storage
from autopeft.study.study import AutopeftStudy, create_or_load, default_study_name, load


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs to join a study (plain data, so it crosses process boundaries)."""

    storage: str
    study: str
    sampler: str = "botorch"
    seed: int = 0
    n_trials: int | None = None
    max_trials: int | None = None
    device: str = "cpu"
    threads: int | None = None
    n_startup_trials: int = 8
    idle_timeout: float | None = None
    heartbeat_interval: int = HEARTBEAT_INTERVAL
    grace_period: int = GRACE_PERIOD
    max_retry: int = MAX_RETRY
    outage_deadline: float = DEFAULT_OUTAGE_DEADLINE
    pack: int = 1  # trials trained together (--pack)


def prepare_study(
    space: str,
    fidelity: Fidelity,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    sampler: str = "botorch",
) -> tuple[AutopeftStudy, bool]:
    """Validate everything (space, model, task, sampler), then create or resume the study.

    Nothing is written to the database until every input has been checked.
    """
    from autopeft.optimize.samplers import make_sampler
    from autopeft.proxy.models import load_config, model_dims
    from autopeft.proxy.tasks import load_task
    from autopeft.space import load_space

    spec = load_space(space)
    dims = model_dims(load_config(fidelity.model))
    if fidelity.objective == "proxy":
        load_task(fidelity.task, seed=fidelity.seed)
    elif fidelity.objective == "replay":  # the table exists and was trained at this fidelity
        from autopeft.proxy.replay import load_table

        load_table(fidelity.table).check_fidelity(fidelity)
    make_sampler(sampler, seed=fidelity.seed)
    name = study_name or default_study_name(spec, fidelity)
    return create_or_load(open_storage(storage), name, spec, dims, fidelity)


def quiet_libraries() -> None:
    """Silence library chatter that is expected in a search and would bury the progress display:
    GP fitting jitter, acquisition restarts, Optuna's note that heartbeats are meant for
    ``Study.optimize`` (the worker loop records them itself), transformers' weight-loading bars."""
    import warnings

    from botorch.exceptions.warnings import BotorchWarning
    from linear_operator.utils.warnings import NumericalWarning
    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore", category=BotorchWarning)
    warnings.filterwarnings("ignore", category=NumericalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _raise_interrupt(signum, frame):  # SIGTERM -> the same clean hand-back as Ctrl-C
    raise KeyboardInterrupt


def worker_main(spec: WorkerSpec, evaluator_factory: Callable | None = None):
    """Entry point of one worker process; returns its :class:`~autopeft.study.worker.WorkerStats`.

    SIGTERM hands the running trial back (re-queued) and returns normally, like Ctrl-C.
    """
    import torch

    from autopeft.optimize.samplers import make_sampler
    from autopeft.proxy.pack import PackedTrainer, check_pack
    from autopeft.proxy.synthetic import make_evaluator
    from autopeft.proxy.train import ProxyTrainer
    from autopeft.study.presence import Presence
    from autopeft.study.worker import WorkerStats, run_worker

    signal.signal(signal.SIGTERM, _raise_interrupt)
    quiet_libraries()
    if spec.threads:
        torch.set_num_threads(spec.threads)
    sampler = make_sampler(spec.sampler, seed=spec.seed, n_startup_trials=spec.n_startup_trials)
    storage = open_storage(spec.storage, heartbeat_interval=spec.heartbeat_interval,
                           grace_period=spec.grace_period, max_retry=spec.max_retry)
    study = load(storage, spec.study, sampler=sampler)
    check_pack(spec.pack, study.objectives, study.fidelity)
    evaluator = evaluator_factory(study) if evaluator_factory else make_evaluator(study.fidelity, spec.device)
    if spec.pack > 1 and isinstance(evaluator, ProxyTrainer):
        evaluator = PackedTrainer(evaluator, spec.pack)
    presence = Presence(study, "worker", device=spec.device, pack=spec.pack)
    stats = WorkerStats()
    try:
        presence.report("idle", force=True)
        run_worker(study, evaluator, n_trials=spec.n_trials, max_trials=spec.max_trials,
                   idle_timeout=spec.idle_timeout, presence=presence, deadline=spec.outage_deadline,
                   pack=spec.pack, stats=stats)  # filled in place: still counted when a signal stops it
    except KeyboardInterrupt:
        stats.exit_reason = "stopped by signal; the running trial was handed back"
    finally:
        try:
            presence.report("stopped", force=True)
        except Exception:  # leaving anyway: the entry ages out
            pass
    return stats


def _process_entry(spec: WorkerSpec) -> None:
    worker_main(spec)


def _raise_if_crashed(procs: list, then: str) -> None:
    """A :class:`StudyError` naming the worker processes that exited non-zero, if any; ``then``: the next step."""
    crashed = [p.exitcode for p in procs if p.exitcode != 0]
    if crashed:
        raise StudyError(f"{len(crashed)} of {len(procs)} worker process(es) failed (exit codes {crashed}); "
                         "their error is printed above, and their running trials are re-queued once the grace "
                         f"period passes: fix the cause and {then}")


def _reporting_entry(spec: WorkerSpec, results) -> None:
    try:
        results.put(worker_main(spec))
    except AutopeftError as exc:  # the message names the field and the fix; no traceback
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


def run_workers(spec: WorkerSpec, processes: int) -> list:
    """``processes`` workers of ``spec``, each in a process of its own on this machine and all on ``spec.device``;
    returns their :class:`~autopeft.study.worker.WorkerStats` once every one has stopped.

    On a GPU a small proxy's training step is bound by the host issuing thousands of small kernels, not by the
    card: several processes issue them from several cores at once (docs/scale_out.md). Each process gets
    ``spec.threads`` CPU threads, by default the machine's cores shared out. SIGTERM is passed on to every worker
    (Ctrl-C reaches them from the terminal), and each hands its running trial back.
    """
    if processes < 1:
        raise StudyError(f"--processes: must be at least 1 (got {processes}); use 1 for one worker process")
    if processes == 1:
        return [worker_main(spec)]
    # What every worker would check first, checked once here: a bad study or --pack fails before any process starts.
    from autopeft.proxy.pack import check_pack

    study = load(open_storage(spec.storage), spec.study)
    check_pack(spec.pack, study.objectives, study.fidelity)
    if spec.threads is None:
        spec = replace(spec, threads=max(1, (os.cpu_count() or 1) // processes))
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_reporting_entry, args=(spec, results), daemon=False) for _ in range(processes)]

    def forward(signum, frame):  # SIGTERM to this process: every worker hands its trial back and reports
        for p in procs:
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, signal.SIGTERM)

    for p in procs:
        p.start()
    # Ctrl-C reaches the workers from the terminal (one process group); this process only waits for their reports.
    # (Installed after the start: an ignored SIGINT would be inherited by the workers.)
    previous = signal.signal(signal.SIGTERM, forward), signal.signal(signal.SIGINT, signal.SIG_IGN)
    stats: list = []
    try:
        while len(stats) < processes:
            try:
                stats.append(results.get(timeout=1.0))
            except queue.Empty:
                if not any(p.is_alive() for p in procs) and results.empty():
                    break  # a worker died without reporting
    finally:
        for p in procs:
            p.join()
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
    _raise_if_crashed(procs, "start the workers again")
    return stats


def run_study(
    study: AutopeftStudy,
    *,
    n_trials: int,
    workers: int = 1,
    sampler: str = "botorch",
    device: str = "cpu",
    n_startup_trials: int = 8,
    on_progress: Callable[[int, int, int], None] | None = None,
    poll_seconds: float = 1.0,
    pack: int = 1,
) -> None:
    """Run worker processes until the study holds ``n_trials`` COMPLETE trials (resuming counts old ones).

    ``on_progress(complete, failed, running)`` is called whenever the counts change.
    """
    url = study.storage.url
    threads = max(1, (os.cpu_count() or 1) // workers)
    spec = WorkerSpec(
        storage=url,
        study=study.name,
        sampler=sampler,
        seed=study.fidelity.seed,
        n_trials=n_trials,
        device=device,
        threads=threads,
        n_startup_trials=n_startup_trials,
        pack=pack,
    )
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_process_entry, args=(spec,), daemon=False) for _ in range(workers)]
    for p in procs:
        p.start()
    last = None
    try:
        while True:
            counts = (
                study.count(TrialState.COMPLETE),
                study.count(TrialState.FAIL),
                study.count(TrialState.RUNNING),
            )
            if counts != last and on_progress is not None:
                on_progress(*counts)
                last = counts
            if not any(p.is_alive() for p in procs):
                break
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM)
        for p in procs:
            p.join()
        raise
    for p in procs:
        p.join()
    _raise_if_crashed(procs, "rerun the same command to resume")
    if on_progress is not None:
        on_progress(study.count(TrialState.COMPLETE), study.count(TrialState.FAIL), study.count(TrialState.RUNNING))
