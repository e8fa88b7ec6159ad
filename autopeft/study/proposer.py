"""The proposer service: keeps a queue of WAITING trials ahead of the workers.

One proposer per study samples batches with the study's sampler (the default one counts RUNNING and
WAITING trials as pending, so a batch never repeats queued or running work) and queues them; workers on
any number of machines claim them. The queue is Optuna's WAITING state in the study database; the
proposer holds no state of its own, so it can be restarted at any time.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


from autopeft.analysis import state_counts
from autopeft.study.presence import Presence, live_workers
from autopeft.study.retry import DEFAULT_OUTAGE_DEADLINE, with_retries
from autopeft.study.study import AutopeftStudy
from autopeft.study.worker import fail_stale, propose


@dataclass
class ProposerStats:
    proposed: list[int] = field(default_factory=list)
    batches: int = 0
    exit_reason: str = ""


def queue_target(study: AutopeftStudy, queue_depth: int | None) -> int:
    """WAITING trials to keep queued: ``queue_depth``, or one per trial the live workers train at once
    (a ``--pack K`` worker counts K) plus one."""
    if queue_depth is not None:
        return queue_depth
    return sum(w.pack for w in live_workers(study)) + 1


def batch_size(study: AutopeftStudy, *, queue_depth: int | None, n_trials: int | None, max_batch: int,
               counts: dict[str, int] | None = None) -> int:
    """How many proposals to queue now: fill the queue to its target, never past ``n_trials`` in all.
    ``counts``: trials per state, when already read."""
    counts = counts or state_counts(study)
    waiting = counts["WAITING"]
    want = queue_target(study, queue_depth) - waiting
    if n_trials is not None:
        want = min(want, n_trials - (counts["COMPLETE"] + counts["RUNNING"] + waiting))
    return max(0, min(want, max_batch))


def run_proposer(
    study: AutopeftStudy,
    *,
    n_trials: int | None = None,
    queue_depth: int | None = None,
    max_batch: int = 8,
    poll_seconds: float = 1.0,
    presence: Presence | None = None,
    stop: threading.Event | None = None,
    deadline: float = DEFAULT_OUTAGE_DEADLINE,
) -> ProposerStats:
    """Keep the queue full until ``stop`` is set or the study holds ``n_trials`` COMPLETE trials.

    Each round also fails and re-queues trials of dead workers, so a study whose workers all died is
    recovered as soon as new workers join.
    """
    stop = stop or threading.Event()
    stats = ProposerStats()
    while not stop.is_set():
        def round_() -> int:
            fail_stale(study)
            counts = state_counts(study)  # one read of the trials per round
            if n_trials is not None and counts["COMPLETE"] >= n_trials:
                return -1
            return batch_size(study, queue_depth=queue_depth, n_trials=n_trials, max_batch=max_batch, counts=counts)

        n = with_retries(round_, "checking the queue", deadline=deadline)
        if n < 0:
            stats.exit_reason = f"the study holds {n_trials} complete trials"
            break
        if n:
            if presence is not None:
                with_retries(lambda: presence.report("proposing"), "reporting presence", deadline=deadline)
            stats.proposed += propose(study, n, deadline=deadline)  # retries each of its steps
            stats.batches += 1
            continue  # the queue may still be short (workers took trials meanwhile)
        if presence is not None:
            with_retries(lambda: presence.report("idle"), "reporting presence", deadline=deadline)
        stop.wait(poll_seconds)
    else:
        stats.exit_reason = "stopped by signal"
    if presence is not None:
        try:
            presence.report("stopped", force=True)
        except Exception:  # leaving: the entry simply ages out
            pass
    return stats
