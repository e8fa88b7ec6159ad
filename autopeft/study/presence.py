"""Who is serving a study: workers and proposers announce themselves in the study database.

Optuna's heartbeats belong to trials, so an idle worker (waiting for a proposal) or a proposer leaves no
trace there. Each process therefore keeps one study system attribute, ``autopeft:<role>:<id>``, with its
host, pid, device, state and the time it last reported (UTC seconds; hosts are expected to keep their clocks
in sync). It is refreshed at the heartbeat interval; a process that stopped reporting for longer than the
grace period is not live. The study database stays the only shared state: no extra table, no second queue.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from autopeft.study.storage import grace_seconds
from autopeft.study.study import AutopeftStudy

PREFIX = "autopeft:"
ROLES = ("worker", "proposer")


@dataclass(frozen=True)
class WorkerPresence:
    role: str  # "worker" or "proposer"
    worker_id: str
    host: str
    pid: int
    device: str
    state: str  # "idle", "running", "proposing" or "stopped"
    trial_number: int | None
    last_seen: datetime  # UTC
    started: datetime  # UTC
    pack: int = 1  # trials a worker trains at once (its --pack)

    def age(self, now: float | None = None) -> float:
        """Seconds since the process last reported."""
        return (now if now is not None else time.time()) - self.last_seen.timestamp()


def new_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Presence:
    """One process's record in the study. ``report`` is cheap to call often: it writes at most once per
    ``min_interval`` seconds unless the state changed."""

    def __init__(self, study: AutopeftStudy, role: str, device: str = "cpu", worker_id: str | None = None,
                 min_interval: float | None = None, pack: int = 1):
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        self.storage = study.storage
        self.study_id = study.study._study_id
        self.role = role
        self.worker_id = worker_id or new_id()
        self.device = device
        self.pack = pack
        self.started = time.time()
        interval = self.storage.get_heartbeat_interval() or 10
        self.min_interval = interval if min_interval is None else min_interval
        self._last: tuple[str, int | None, float] | None = None

    @property
    def key(self) -> str:
        return f"{PREFIX}{self.role}:{self.worker_id}"

    def report(self, state: str, trial_number: int | None = None, *, force: bool = False) -> None:
        """Record ``state`` (and the trial being run). Written at once when the state changes; a new
        trial number in the same state waits for the interval (one database write less per trial)."""
        now = time.time()
        if (not force and self._last is not None and self._last[0] == state
                and now - self._last[2] < self.min_interval):
            return
        self.storage.set_study_system_attr(self.study_id, self.key, {
            "host": socket.gethostname(), "pid": os.getpid(), "device": self.device, "state": state,
            "trial": trial_number, "last_seen": now, "started": self.started, "pack": self.pack,
        })
        self._last = (state, trial_number, now)


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def all_presences(study: AutopeftStudy) -> list[WorkerPresence]:
    """Every process that ever reported on the study, newest report first."""
    attrs = study.storage.get_study_system_attrs(study.study._study_id)
    out = []
    for key, value in attrs.items():
        if not key.startswith(PREFIX) or not isinstance(value, dict):
            continue
        role, _, worker_id = key[len(PREFIX):].partition(":")
        if role not in ROLES:
            continue
        out.append(WorkerPresence(
            role=role, worker_id=worker_id, host=value.get("host", "?"), pid=int(value.get("pid", 0)),
            device=value.get("device", "?"), state=value.get("state", "?"), trial_number=value.get("trial"),
            last_seen=_utc(value.get("last_seen", 0.0)), started=_utc(value.get("started", 0.0)),
            pack=int(value.get("pack", 1)),
        ))
    return sorted(out, key=lambda p: p.last_seen, reverse=True)


def is_live(presence: WorkerPresence, within: float, now: float) -> bool:
    """Reported within ``within`` seconds of ``now`` and not stopped."""
    return presence.state != "stopped" and presence.age(now) <= within


def live(study: AutopeftStudy, role: str = "worker", within: float | None = None) -> list[WorkerPresence]:
    """Processes of ``role`` that reported within ``within`` seconds (default: the storage's grace
    period) and have not said they stopped."""
    within = grace_seconds(study.storage) if within is None else within
    now = time.time()
    return [p for p in all_presences(study) if p.role == role and is_live(p, within, now)]


def live_workers(study: AutopeftStudy, within: float | None = None) -> list[WorkerPresence]:
    return live(study, "worker", within)
