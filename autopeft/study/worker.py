"""The worker loop: the only code that talks both to the study database and to training.

Trial lifecycle (built on Optuna's queue, no second queue):

1. ``fail_stale``: RUNNING trials whose worker stopped sending heartbeats are failed with the reason
   on them, and :class:`~autopeft.study.storage.RetryCallback` re-queues each as a WAITING copy
   (``retry_history`` on the trial; capped, after which the trial stays FAIL).
2. ``claim``: pops a WAITING trial atomically (one queued by ``autopeft propose``, or a retry); two
   workers never get the same one. With none waiting, a worker proposes for itself unless a proposer
   serves the study, in which case it waits for the proposer.
3. Decode parameters -> :class:`PeftPlan`; store plan and fidelity on the trial; train while a
   heartbeat thread keeps the trial (and the worker's presence) alive.
4. ``report``: objective values, metrics as user attributes, the budget as a constraint; an exception
   or a non-finite loss fails the trial with its reason, and the worker goes on. The report is retried
   through database outages; it is never dropped.

Every database step goes through :func:`~autopeft.study.retry.with_retries`, so a PostgreSQL restart
pauses a worker instead of killing it.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import optuna
import torch
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from autopeft.errors import AutopeftError
from autopeft.plan import PeftPlan
from autopeft.proxy.train import TrialMetrics
from autopeft.study.presence import Presence, live
from autopeft.study.retry import DEFAULT_OUTAGE_DEADLINE, with_retries
from autopeft.study.signals import signals_deferred
from autopeft.study.storage import grace_seconds
from autopeft.study.study import AutopeftStudy

FAIL_REASON = "fail_reason"
BUDGET_CONSTRAINT = "trainable_pct_over_budget"
HANDED_BACK = "interrupted (worker stopped); handed back to the queue"
log = logging.getLogger("autopeft.study")


class WorkerGaveUp(AutopeftError):
    """Every recent trial failed: the setting (model, task, fidelity), not a plan, is at fault."""


class Evaluator(Protocol):
    def run(self, plan: PeftPlan) -> TrialMetrics: ...


class PackEvaluator(Evaluator, Protocol):
    """Trains several plans together (the worker's ``--pack``): one result or exception per plan, in order."""

    def run_many(self, plans: Sequence[PeftPlan]) -> Sequence[TrialMetrics | BaseException]: ...


@dataclass
class WorkerStats:
    completed: int = 0
    failed: int = 0
    trial_numbers: list[int] = field(default_factory=list)
    idle_seconds: float = 0.0  # time spent waiting for a trial to claim
    wall_seconds: float = 0.0  # time in the worker loop
    exit_reason: str = ""


class _Heartbeat:
    """Records a heartbeat for some trials (and the worker's presence) every ``interval`` seconds."""

    def __init__(self, study: AutopeftStudy, trial_ids: Sequence[int], presence: Presence | None = None,
                 number: int | None = None):
        self.storage = study.storage
        self.trial_ids = list(trial_ids)
        self.presence = presence
        self.number = number
        self.interval = self.storage.get_heartbeat_interval() or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                for trial_id in self.trial_ids:
                    self.storage.record_heartbeat(trial_id)
                if self.presence is not None:
                    self.presence.report("running", self.number)
            except Exception:  # the database may be restarting: the next beat tries again
                pass

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


# --------------------------------------------------------------------------- failing and re-queueing
def _retry_callback(study: AutopeftStudy):
    return study.storage.get_heartbeat_stale_trial_callback()


def requeue(study: AutopeftStudy, trial_id: int, *, count: bool = True) -> int | None:
    """Queue a WAITING copy of a failed trial. ``count=False`` (a hand-back on SIGTERM or Ctrl-C) does
    not count against the retry cap. Returns the copy's number, or None when the cap is reached."""
    callback = _retry_callback(study)
    if callback is None:
        return None
    trial = study.storage.get_trial(trial_id)
    if hasattr(callback, "max_retry"):
        return callback(study.study, trial, count=count)
    callback(study.study, trial)
    return None


def fail_stale(study: AutopeftStudy) -> list[int]:
    """Fail the RUNNING trials whose heartbeat is older than the grace period, with the reason on each,
    and re-queue them (capped). Returns the numbers of the trials this call failed.

    Optuna's ``fail_stale_trials`` does the same without leaving a reason on the trial.
    """
    storage = study.storage
    if not storage.get_heartbeat_interval():
        return []
    grace = grace_seconds(storage)
    cap = getattr(_retry_callback(study), "max_retry", None)
    failed = []
    for trial_id in storage._get_stale_trial_ids(study.study._study_id) + _never_beaten(study, grace):
        trial = storage.get_trial(trial_id)
        attempts = len(trial.system_attrs.get("retry_history", [])) + 1
        reason = f"no heartbeat for over {grace} s: its worker died or hung (attempt {attempts})"
        if cap is not None and attempts > cap:
            reason += f"; retry cap {cap} reached, not re-queued"
        try:
            storage.set_trial_user_attr(trial_id, FAIL_REASON, reason)
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                failed.append(trial_id)
        except UpdateFinishedTrialError:  # another process failed (or its worker finished) it first
            continue
    for trial_id in failed:
        with_retries(lambda: requeue(study, trial_id), "re-queueing a stale trial")
    return [storage.get_trial(t).number for t in failed]


def _never_beaten(study: AutopeftStudy, grace: float) -> list[int]:
    """RUNNING trials with no heartbeat at all, started more than ``grace`` seconds ago.

    Every autopeft process records a heartbeat right after it creates or claims a trial; a trial without
    one was orphaned in between (its process died, or the database acknowledged the creation after the
    connection was lost). Optuna's stale check only sees trials that have a heartbeat, so these would
    stay RUNNING for ever. Optuna stores ``datetime_start`` in UTC from the creating process's clock, so
    hosts should keep their clocks in sync. Reads Optuna's tables through its models: the storage API
    does not say whether a trial has a heartbeat.
    """
    from datetime import datetime, timedelta, timezone

    from optuna.storages._rdb import models

    cutoff = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(seconds=grace)  # the column is naive UTC
    with study.storage.scoped_session() as session:
        rows = (
            session.query(models.TrialModel.trial_id)
            .outerjoin(models.TrialHeartbeatModel, models.TrialHeartbeatModel.trial_id == models.TrialModel.trial_id)
            .filter(models.TrialModel.study_id == study.study._study_id)
            .filter(models.TrialModel.state == TrialState.RUNNING)
            .filter(models.TrialHeartbeatModel.trial_heartbeat_id.is_(None))
            .filter(models.TrialModel._datetime_start_utc < cutoff)
            .all()
        )
    return [r[0] for r in rows]


# --------------------------------------------------------------------------- claiming
def next_step(study: AutopeftStudy, n_trials: int | None) -> str:
    """What a worker should do now to bring the study to ``n_trials`` COMPLETE trials:
    ``"stop"`` (reached), ``"wait"`` (the trials still running would reach it: wait, since one of them
    may die, and then its re-queued copy is WAITING and no longer RUNNING) or ``"run"``.

    A queued trial does not make a worker run while the running ones would finish the study: the proposer
    and a worker that finds no live proposer can each add a trial in the same moment, and running that
    extra one would leave the study with more than ``n_trials`` (it stays queued for a later run)."""
    if n_trials is None:
        return "run"
    complete = study.count(TrialState.COMPLETE)
    if complete >= n_trials:
        return "stop"
    if complete + study.count(TrialState.RUNNING) >= n_trials:
        return "wait"
    return "run"


def _within_target(study: AutopeftStudy, trials: list[optuna.Trial], n_trials: int,
                   deadline: float) -> list[optuna.Trial]:
    """The claimed ``trials`` that the study still needs; the others go back to the queue (WAITING).

    Deciding to run and claiming are two steps, so two workers can claim in the same moment the one trial
    the study still needs. After claiming, the RUNNING trials are ranked by number (queued ones before ones
    sampled since) and only the first ``n_trials`` - COMPLETE may run: every worker ranks them alike, so
    exactly one of two such claims goes back, and a worker never holds a trial the study does not need.
    """
    def keep() -> set[int]:
        complete = study.count(TrialState.COMPLETE)
        running = sorted(study.trials(states=(TrialState.RUNNING,)), key=lambda t: t.number)
        return {t._trial_id for t in running[: max(0, n_trials - complete)]}

    allowed = with_retries(keep, "checking the queue", deadline=deadline)
    for trial in trials:
        if trial._trial_id not in allowed:
            with_retries(lambda: study.storage.set_trial_state_values(trial._trial_id, TrialState.WAITING),
                         "handing a trial back to the queue", deadline=deadline)
    return [t for t in trials if t._trial_id in allowed]


def proposer_is_live(study: AutopeftStudy) -> bool:
    return bool(live(study, "proposer"))


def _pop_waiting(study: AutopeftStudy) -> int | None:
    """The id of the oldest WAITING trial, now RUNNING for this worker, or None.

    As Optuna's own queue does it: setting RUNNING succeeds only while the trial is still WAITING, so
    two workers never get the same trial. The heartbeat is refreshed *before* the claim: a queued
    trial may carry an old beat from when it was proposed, and no other worker may take it for stale
    in the moment between the claim and this worker's first beat.
    """
    storage = study.study._storage
    beat = bool(study.storage.get_heartbeat_interval())
    for waiting in storage.get_all_trials(study.study._study_id, deepcopy=False, states=(TrialState.WAITING,)):
        if beat:
            study.storage.record_heartbeat(waiting._trial_id)
        try:
            if storage.set_trial_state_values(waiting._trial_id, state=TrialState.RUNNING):
                return waiting._trial_id
        except UpdateFinishedTrialError:
            continue
    return None


def _start_new_trial(study: AutopeftStudy, deadline: float) -> int:
    """A new RUNNING trial with a first heartbeat (so it is failed and re-queued if its creator dies)."""
    storage = study.study._storage  # the study's cached view of the RDB storage; Trial reads through it
    trial_id = with_retries(lambda: storage.create_new_trial(study.study._study_id), "creating a trial", deadline=deadline)
    if study.storage.get_heartbeat_interval():
        with_retries(lambda: study.storage.record_heartbeat(trial_id), "recording a heartbeat", deadline=deadline)
    return trial_id


def _with_params(study: AutopeftStudy, trial_id: int, deadline: float) -> optuna.Trial:
    """The trial with every parameter set: a queued trial's fixed values, else the sampler's proposal.
    Each step is retried on its own, so an outage here never makes the caller take a second trial."""
    trial = with_retries(lambda: optuna.Trial(study.study, trial_id), "opening a trial", deadline=deadline)
    with single_thread():
        for name, dist in study.space.distributions().items():
            with_retries(lambda: trial.suggest_int(name, dist.low, dist.high), "setting a parameter", deadline=deadline)
    return trial


def claim(study: AutopeftStudy, *, sample_if_empty: bool = True,
          deadline: float = DEFAULT_OUTAGE_DEADLINE) -> optuna.Trial | None:
    """Claim the oldest WAITING trial (one proposed by ``autopeft propose``, or a retry), or, when none
    waits and ``sample_if_empty``, a fresh proposal of the study's sampler. None when nothing was claimed.
    A heartbeat is recorded at once, so a worker that dies right after claiming still has its trial
    failed and re-queued. A stop signal that arrives meanwhile is delivered once the trial is claimed and handed
    back (:func:`signals_deferred`)."""
    with signals_deferred() as stop:
        if stop:  # a stop is already held (by the caller's block): claim nothing
            return None
        trial_id = with_retries(lambda: _pop_waiting(study), "claiming a trial", deadline=deadline)
        if trial_id is None and sample_if_empty and not stop:
            trial_id = _start_new_trial(study, deadline)
        if trial_id is None:
            return None
        trial = _with_params(study, trial_id, deadline)
        if stop:  # stopping: the trial goes back to the queue; the signal is delivered on leaving the outermost block
            _hand_back(study, trial, deadline)
            return None
    return trial


# --------------------------------------------------------------------------- running and reporting
def record_result(study: AutopeftStudy, trial: optuna.Trial, metrics: TrialMetrics) -> None:
    """Store metrics on the trial and tell the study its objective values."""
    trial.set_user_attr("metrics", metrics.to_dict())
    budget = study.budget_pct
    if budget is not None:
        trial.set_constraint(BUDGET_CONSTRAINT, metrics.trainable_pct - budget)
    study.study.tell(trial, [metrics.objective(o) for o in study.objectives], skip_if_finished=True)


def _finish(study: AutopeftStudy, what: str, trial: optuna.Trial, write: Callable[[], None],
            deadline: float) -> None:
    """Run ``write`` (the report) through outages. A retry after a lost acknowledgement finds the trial
    already finished, which is success. A trial that another process failed as stale meanwhile keeps
    its state; its re-queued copy runs again."""

    def attempt() -> None:
        state = study.storage.get_trial(trial._trial_id).state
        if state.is_finished():
            if state == TrialState.FAIL:
                log.warning("trial %d was failed as stale while its %s was pending; its re-queued copy runs",
                            trial.number, what)
            return
        try:
            write()
        except UpdateFinishedTrialError:
            pass

    with signals_deferred():  # a stop signal waits until the write is done
        with_retries(attempt, f"the {what} of trial {trial.number}", deadline=deadline)


def _describe(study: AutopeftStudy, trial: optuna.Trial, presence: Presence | None, deadline: float) -> PeftPlan:
    """Decode the trial's plan and store plan, fidelity and worker on it (a bad plan raises, failing the trial)."""
    params = {name: int(trial.params[name]) for name in study.space.choices}
    plan = study.space.decode(params)

    def describe() -> None:
        trial.set_user_attr("plan", plan.to_dict())
        trial.set_user_attr("plan_summary", plan.summary())
        trial.set_user_attr("fidelity", study.fidelity.model_dump())
        if presence is not None:
            trial.set_user_attr("worker", presence.worker_id)

    with_retries(describe, f"describing trial {trial.number}", deadline=deadline)
    return plan


def _hand_back(study: AutopeftStudy, trial: optuna.Trial, deadline: float) -> None:
    """Fail this attempt and queue the same parameters again, not counted as a retry (nothing is wrong
    with the trial: the worker is stopping)."""

    def hand_back() -> None:
        trial.set_user_attr(FAIL_REASON, HANDED_BACK)
        done = study.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        if done.user_attrs.get(FAIL_REASON) == HANDED_BACK:  # not failed as stale (and re-queued) meanwhile
            requeue(study, trial._trial_id, count=False)

    _finish(study, "hand-back", trial, hand_back, deadline)


def _report(study: AutopeftStudy, trial: optuna.Trial, outcome: TrialMetrics | BaseException, tb: str,
            deadline: float) -> FrozenTrial:
    """Store the result (metrics, or the error that failed the trial) and return the finished trial. A stop signal
    waits until it is stored (:func:`signals_deferred`)."""
    with signals_deferred():
        _store(study, trial, outcome, tb, deadline)
    return with_retries(lambda: study.storage.get_trial(trial._trial_id), "reading a trial", deadline=deadline)


def _store(study: AutopeftStudy, trial: optuna.Trial, outcome: TrialMetrics | BaseException, tb: str,
           deadline: float) -> None:
    """Write ``outcome`` onto the trial: its metrics and stored weights, or its failure."""
    if isinstance(outcome, BaseException):
        reason = f"{type(outcome).__name__}: {outcome}"

        def fail() -> None:
            trial.set_user_attr(FAIL_REASON, reason[:2000])
            trial.set_user_attr("traceback", tb[-4000:])
            study.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)

        _finish(study, "failure", trial, fail, deadline)
    else:
        from autopeft.artifacts import save_trial_artifact  # trained weights as the trial's artifact; never raises

        save_trial_artifact(study, trial, outcome)
        _finish(study, "result", trial, lambda: record_result(study, trial, outcome), deadline)


def run_one(study: AutopeftStudy, evaluator: Evaluator, trial: optuna.Trial | None = None, *,
            presence: Presence | None = None, deadline: float = DEFAULT_OUTAGE_DEADLINE) -> FrozenTrial:
    """Train one trial (claimed here when not given) and report it. Returns the finished trial."""
    if trial is None:
        trial = claim(study, deadline=deadline)
    number = trial.number
    try:
        if presence is not None:  # written when the state changes, else at most once per heartbeat interval
            with_retries(lambda: presence.report("running", number), "reporting presence", deadline=deadline)
        plan = _describe(study, trial, presence, deadline)
        with _Heartbeat(study, [trial._trial_id], presence, number):
            outcome: TrialMetrics | BaseException = evaluator.run(plan)
        tb = ""
    except KeyboardInterrupt:
        _hand_back(study, trial, deadline)
        raise
    except Exception as exc:  # any training error fails this trial only; the worker goes on
        outcome, tb = exc, traceback.format_exc()
    return _report(study, trial, outcome, tb, deadline)


def run_pack(study: AutopeftStudy, evaluator: PackEvaluator, trials: Sequence[optuna.Trial], *,
             presence: Presence | None = None, deadline: float = DEFAULT_OUTAGE_DEADLINE) -> list[FrozenTrial]:
    """Train several claimed trials together (``evaluator.run_many``) and report each. A trial whose plan
    cannot be decoded or whose training fails is failed alone; Ctrl-C or SIGTERM hands them all back."""
    finished: dict[int, FrozenTrial] = {}
    plans: dict[int, PeftPlan] = {}
    try:
        if presence is not None:
            with_retries(lambda: presence.report("running", trials[0].number), "reporting presence", deadline=deadline)
        for trial in trials:
            try:
                plans[trial.number] = _describe(study, trial, presence, deadline)
            except Exception as exc:
                finished[trial.number] = _report(study, trial, exc, traceback.format_exc(), deadline)
        todo = [t for t in trials if t.number in plans]
        if len(todo) > 1:
            numbers = [t.number for t in todo]
            for trial in todo:
                with_retries(lambda: trial.set_user_attr("packed_with", numbers), "describing a pack",
                             deadline=deadline)
    except KeyboardInterrupt:
        for trial in trials:
            if trial.number not in finished:
                _hand_back(study, trial, deadline)
        raise
    tb = ""
    try:
        with _Heartbeat(study, [t._trial_id for t in todo], presence, trials[0].number):
            outcomes: list[TrialMetrics | BaseException] = list(evaluator.run_many([plans[t.number] for t in todo]))
    except KeyboardInterrupt:
        for trial in todo:
            _hand_back(study, trial, deadline)
        raise
    except Exception as exc:  # the pack as a whole failed (e.g. out of memory): each of its trials fails with it
        outcomes, tb = [exc] * len(todo), traceback.format_exc()
    for trial, outcome in zip(todo, outcomes):
        finished[trial.number] = _report(study, trial, outcome, tb, deadline)
    return [finished[t.number] for t in trials]


def run_worker(
    study: AutopeftStudy,
    evaluator: Evaluator,
    *,
    n_trials: int | None = None,
    max_trials: int | None = None,
    on_trial_end: Callable[[FrozenTrial], None] | None = None,
    max_consecutive_failures: int = 5,
    poll_seconds: float = 1.0,
    idle_timeout: float | None = None,
    presence: Presence | None = None,
    self_propose: bool | None = None,
    deadline: float = DEFAULT_OUTAGE_DEADLINE,
    pack: int = 1,
    stats: WorkerStats | None = None,
) -> WorkerStats:
    """Run trials until the study holds ``n_trials`` COMPLETE trials, this worker ran ``max_trials``,
    or it waited ``idle_timeout`` seconds without finding a trial.

    ``self_propose``: sample a fresh trial when none is queued. ``None`` (default) decides each time:
    not while a proposer serves the study (the worker waits for its proposals), else yes.
    When the trials other workers are running would complete the study, the worker waits for them
    rather than exiting: if one of them dies, its re-queued copy is picked up here.

    ``pack``: claim up to this many trials at a time and train them together (``evaluator.run_many``,
    see :mod:`autopeft.proxy.pack`); a pack starts with the trials at hand rather than waiting to be full.
    ``stats``: a record to fill in place (a new one by default), so a caller still has the counts when a signal
    stops the loop.
    """
    if pack > 1 and not hasattr(evaluator, "run_many"):
        raise AutopeftError(f"--pack: this objective trains one trial at a time (got --pack {pack}); use --pack 1")
    stats = stats if stats is not None else WorkerStats()  # the caller's, to read after an interrupt
    loop_start = time.monotonic()
    streak = 0  # consecutive failures: a setting that fails every trial must not spin forever
    last_reason = None
    idle_since: float | None = None

    def idle(state_reason: str) -> bool:
        """Record idleness; True when the idle timeout ran out."""
        nonlocal idle_since
        now = time.monotonic()
        if idle_since is None:
            idle_since = now
        if presence is not None:
            with_retries(lambda: presence.report("idle"), "reporting presence", deadline=deadline)
        if idle_timeout is not None and now - idle_since >= idle_timeout:
            stats.exit_reason = f"idle for {idle_timeout:g} s ({state_reason})"
            return True
        # Poll fast right after running dry (the proposer is usually about to queue the next trial),
        # then back off to ``poll_seconds`` so long waits cost the database little.
        time.sleep(min(poll_seconds, 0.05 * 2 ** min(10, int((now - idle_since) / 0.25))))
        return False

    while True:
        if max_trials is not None and stats.completed + stats.failed >= max_trials:
            stats.exit_reason = f"ran --max-trials {max_trials}"
            break
        if streak >= max_consecutive_failures:
            raise WorkerGaveUp(f"{streak} trials in a row failed; last reason: {last_reason}")
        step = with_retries(lambda: (fail_stale(study), next_step(study, n_trials))[1], "checking the queue",
                            deadline=deadline)
        if step == "stop":
            stats.exit_reason = f"the study holds {n_trials} complete trials"
            break
        if step == "wait":
            if idle("the last trials are running elsewhere"):
                break
            continue
        sample = self_propose if self_propose is not None else not with_retries(
            lambda: proposer_is_live(study), "looking for a proposer", deadline=deadline)
        started = time.monotonic()
        with signals_deferred() as stop:  # a stop signal here hands the claimed trials back, then stops the worker
            trial = claim(study, sample_if_empty=sample, deadline=deadline)
            trials = [trial] if trial is not None else []
            while trials and len(trials) < pack and (max_trials is None
                                                     or stats.completed + stats.failed + len(trials) < max_trials):
                more = n_trials is None or with_retries(
                    lambda: study.count(TrialState.COMPLETE) + study.count(TrialState.RUNNING), "checking the queue",
                    deadline=deadline) < n_trials  # the trials running (this pack's included) would not finish the study
                extra = claim(study, sample_if_empty=sample, deadline=deadline) if more else None
                if extra is None:
                    break
                trials.append(extra)
            if trials and n_trials is not None:
                trials = _within_target(study, trials, n_trials, deadline)
            if stop:
                for held in trials:
                    _hand_back(study, held, deadline)
        if trial is None:
            if idle("no queued trial"):
                break
            continue
        if idle_since is not None:
            stats.idle_seconds += started - idle_since
        idle_since = None
        if not trials:
            if idle("the last trials are running elsewhere"):
                break
            continue
        if len(trials) == 1:
            done = [run_one(study, evaluator, trial, presence=presence, deadline=deadline)]
        else:
            done = run_pack(study, evaluator, trials, presence=presence, deadline=deadline)  # type: ignore[arg-type]
        for finished in done:
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
    if idle_since is not None:
        stats.idle_seconds += time.monotonic() - idle_since
    stats.wall_seconds = time.monotonic() - loop_start
    return stats


# --------------------------------------------------------------------------- proposing
def propose(study: AutopeftStudy, n: int, deadline: float = DEFAULT_OUTAGE_DEADLINE) -> list[int]:
    """Queue ``n`` sampler proposals as WAITING trials for workers to claim. Returns their numbers.

    The batch is pending-aware: every trial of the batch is sampled while the earlier ones are RUNNING,
    and the default sampler also counts queued (WAITING) trials as pending (see
    :class:`~autopeft.optimize.samplers.PendingAware`), so no proposal repeats a queued or running one.
    """
    trials = [_with_params(study, _start_new_trial(study, deadline), deadline) for _ in range(n)]
    for trial in trials:
        def queue() -> None:
            trial.set_user_attr("proposed", True)
            study.storage.set_trial_state_values(trial._trial_id, TrialState.WAITING)

        with_retries(queue, "queueing a proposal", deadline=deadline)
    return [t.number for t in trials]
