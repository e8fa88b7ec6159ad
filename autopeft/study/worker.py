"""The worker loop: the only code that talks both to the study database and to training.

Trial lifecycle (built on Optuna's queue, no second queue):

1. ``fail_stale_trials``: RUNNING trials whose worker stopped sending heartbeats are failed, and
   Optuna's ``RetryFailedTrialCallback`` re-queues each as a WAITING copy (capped retries).
2. ``study.ask``: pops a WAITING trial atomically (one proposed by ``autopeft propose``, or a retry);
   with none waiting, the sampler proposes a fresh one, RUNNING trials counting as pending.
3. Decode parameters -> :class:`PeftPlan`; store plan and fidelity on the trial; train while a
   heartbeat thread keeps the trial alive.
4. ``study.tell``: objective values, metrics as user attributes, the budget as a constraint; an
   exception or a non-finite loss fails the trial with its reason, and the worker goes on.
"""

from __future__ import annotations

import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Protocol

import optuna
import torch
from optuna.storages import fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from autopeft.plan import PeftPlan
from autopeft.proxy.train import TrialMetrics
from autopeft.study.study import AutopeftStudy

FAIL_REASON = "fail_reason"
BUDGET_CONSTRAINT = "trainable_pct_over_budget"


class WorkerGaveUp(RuntimeError):
    """Every recent trial failed: the setting (model, task, fidelity), not a plan, is at fault."""


class Evaluator(Protocol):
    def run(self, plan: PeftPlan) -> TrialMetrics: ...


@dataclass
class WorkerStats:
    completed: int = 0
    failed: int = 0
    trial_numbers: list[int] = field(default_factory=list)


class _Heartbeat:
    """Records a heartbeat for one trial every ``interval`` seconds until stopped."""

    def __init__(self, study: AutopeftStudy, trial_id: int):
        self.storage = study.storage
        self.trial_id = trial_id
        self.interval = self.storage.get_heartbeat_interval() or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while True:
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # a missed beat is retried at the next interval
                pass
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "_Heartbeat":
        if self.interval:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


@contextmanager
def single_thread():
    """Run the sampler on one thread: its small GP fits are 3-6x faster without thread overhead."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def requeue(study: AutopeftStudy, trial_id: int) -> None:
    """Queue a WAITING copy of a failed trial through the storage's retry callback (same links and cap
    as trials of dead workers)."""
    callback = study.storage.heartbeat_stale_trial_callback
    if callback is not None:
        callback(study.study, study.storage.get_trial(trial_id))


def next_step(study: AutopeftStudy, n_trials: int | None) -> str:
    """What a worker should do now to bring the study to ``n_trials`` COMPLETE trials:
    ``"stop"`` (reached), ``"wait"`` (the trials still running would reach it, nothing is queued:
    wait, since one of them may die and be re-queued) or ``"run"``."""
    if n_trials is None:
        return "run"
    complete = study.count(TrialState.COMPLETE)
    if complete >= n_trials:
        return "stop"
    if complete + study.count(TrialState.RUNNING) >= n_trials and not study.count(TrialState.WAITING):
        return "wait"
    return "run"


def record_result(study: AutopeftStudy, trial: optuna.Trial, metrics: TrialMetrics) -> None:
    """Store metrics on the trial and tell the study its objective values."""
    trial.set_user_attr("metrics", metrics.to_dict())
    budget = study.budget_pct
    if budget is not None:
        trial.set_constraint(BUDGET_CONSTRAINT, metrics.trainable_pct - budget)
    study.study.tell(trial, [metrics.objective(o) for o in study.objectives])


def run_one(study: AutopeftStudy, evaluator: Evaluator) -> FrozenTrial:
    """Claim (or sample) one trial, train it, report it. Returns the finished trial."""
    with single_thread():
        trial = study.study.ask(study.space.distributions())
    params = {name: int(trial.params[name]) for name in study.space.choices}
    try:
        plan = study.space.decode(params)
        trial.set_user_attr("plan", plan.to_dict())
        trial.set_user_attr("plan_summary", plan.summary())
        trial.set_user_attr("fidelity", study.fidelity.model_dump())
        with _Heartbeat(study, trial._trial_id):
            metrics = evaluator.run(plan)
    except KeyboardInterrupt:
        # Hand the trial back: fail this attempt and queue the same parameters again.
        trial.set_user_attr(FAIL_REASON, "interrupted; re-queued")
        study.study.tell(trial, state=TrialState.FAIL)
        requeue(study, trial._trial_id)
        raise
    except Exception as exc:  # any training error fails this trial only; the worker goes on
        reason = f"{type(exc).__name__}: {exc}"
        trial.set_user_attr(FAIL_REASON, reason[:2000])
        trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
        study.study.tell(trial, state=TrialState.FAIL)
        return study.storage.get_trial(trial._trial_id)
    record_result(study, trial, metrics)
    return study.storage.get_trial(trial._trial_id)


def run_worker(
    study: AutopeftStudy,
    evaluator: Evaluator,
    *,
    n_trials: int | None = None,
    max_trials: int | None = None,
    on_trial_end: Callable[[FrozenTrial], None] | None = None,
    max_consecutive_failures: int = 5,
    poll_seconds: float = 2.0,
) -> WorkerStats:
    """Run trials until the study holds ``n_trials`` COMPLETE trials or this worker ran ``max_trials``.

    When the trials other workers are running would complete the study, the worker waits for them
    rather than exiting: if one of them dies, its re-queued copy is picked up here.
    """
    stats = WorkerStats()
    streak = 0  # consecutive failures: a setting that fails every trial must not spin forever
    last_reason = None
    while max_trials is None or stats.completed + stats.failed < max_trials:
        if streak >= max_consecutive_failures:
            raise WorkerGaveUp(
                f"{streak} trials in a row failed; last reason: {last_reason}"
            )
        fail_stale_trials(study.study)
        step = next_step(study, n_trials)
        if step == "stop":
            break
        if step == "wait":
            time.sleep(poll_seconds)
            continue
        finished = run_one(study, evaluator)
        stats.trial_numbers.append(finished.number)
        if finished.state == TrialState.COMPLETE:
            stats.completed += 1
            streak = 0
        else:
            stats.failed += 1
            streak += 1
            last_reason = finished.user_attrs.get(FAIL_REASON)
        if on_trial_end is not None:
            on_trial_end(finished)
    return stats


def _sample_new_trial(study: AutopeftStudy) -> optuna.Trial:
    """Like ``study.ask`` but always a new trial: ``ask`` would pop a queued WAITING trial instead."""
    storage = study.study._storage  # the study's cached view of the RDB storage; Trial reads through it
    trial_id = storage.create_new_trial(storage.get_study_id_from_name(study.name))
    study.study.sampler.before_trial(study.study, storage.get_trial(trial_id))
    trial = optuna.Trial(study.study, trial_id)
    for name, dist in study.space.distributions().items():
        trial.suggest_int(name, dist.low, dist.high)
    return trial


def propose(study: AutopeftStudy, n: int) -> list[int]:
    """Queue ``n`` sampler proposals as WAITING trials for workers to claim. Returns their numbers.

    Each proposal is made with ``ask`` (so the sampler sees earlier proposals as pending) and then
    handed to the queue by setting it WAITING; a worker's ``ask`` pops it with its parameters.
    """
    # All n are sampled before any is set WAITING, so each later proposal sees the earlier ones as pending.
    with single_thread():
        trials = [_sample_new_trial(study) for _ in range(n)]
    for trial in trials:
        trial.set_user_attr("proposed", True)
        study.storage.set_trial_state_values(trial._trial_id, TrialState.WAITING)
    return [t.number for t in trials]
