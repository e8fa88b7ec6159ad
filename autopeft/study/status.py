"""What a study is doing now: who serves it, how fast it moves, what failed and why."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from optuna.trial import FrozenTrial, TrialState

from autopeft.analysis import state_counts
from autopeft.study.presence import WorkerPresence, all_presences, is_live
from autopeft.study.storage import grace_seconds
from autopeft.study.study import AutopeftStudy
from autopeft.study.worker import FAIL_REASON


@dataclass(frozen=True)
class Failure:
    number: int
    reason: str
    attempt: int  # 1 for a first attempt, 2 for its first retry, ...
    requeued_as: int | None  # the WAITING copy made of it, if any


@dataclass(frozen=True)
class StudyStatus:
    name: str
    counts: dict[str, int]
    workers: list[WorkerPresence]  # live
    proposers: list[WorkerPresence]  # live
    gone: list[WorkerPresence]  # stopped or silent past the grace period
    completed_last_hour: int
    trials_per_hour: float | None  # over the study's active span
    mean_trial_seconds: float | None
    failures: list[Failure]  # newest first


def _requeued(trials: list[FrozenTrial]) -> dict[int, int]:
    return {t.system_attrs["failed_trial"]: t.number for t in trials if "failed_trial" in t.system_attrs}


def study_status(study: AutopeftStudy, *, now: float | None = None) -> StudyStatus:
    now = time.time() if now is None else now
    trials = study.trials()
    counts = state_counts(study, trials)
    grace = grace_seconds(study.storage)
    presences = all_presences(study)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.datetime_complete and t.datetime_start]
    # Optuna stamps trials with the local wall clock of the process that finished them.
    local_now = datetime.fromtimestamp(now)
    last_hour = sum(t.datetime_complete >= local_now - timedelta(hours=1) for t in complete)
    rate = mean = None
    if complete:
        mean = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in complete) / len(complete)
        span = (max(t.datetime_complete for t in complete) - min(t.datetime_start for t in complete)).total_seconds()
        rate = 3600 * len(complete) / span if span > 0 else None
    requeued = _requeued(trials)
    failures = [
        Failure(t.number, t.user_attrs.get(FAIL_REASON) or "no reason recorded",
                len(t.system_attrs.get("retry_history", [])) + 1, requeued.get(t.number))
        for t in reversed(trials) if t.state == TrialState.FAIL
    ]
    return StudyStatus(
        name=study.name, counts=counts,
        workers=[p for p in presences if p.role == "worker" and is_live(p, grace, now)],
        proposers=[p for p in presences if p.role == "proposer" and is_live(p, grace, now)],
        gone=[p for p in presences if not is_live(p, grace, now)],
        completed_last_hour=last_hour, trials_per_hour=rate, mean_trial_seconds=mean, failures=failures,
    )
