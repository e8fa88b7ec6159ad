"""Riding out database outages: retry an operation while the database is unreachable.

SQLAlchemy's ``pool_pre_ping`` replaces dead pooled connections at checkout, but an operation that is
running when PostgreSQL restarts (or that finds SQLite locked for longer than its timeout) still fails.
Workers and the proposer wrap each of their database steps in :func:`with_retries`, which backs off and
tries again for up to ``deadline`` seconds. Only connection-level errors are retried; anything else (a
constraint violation, a programming error) is raised at once.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, TypeVar

import sqlalchemy.exc

from autopeft.study.signals import stop_held

T = TypeVar("T")
log = logging.getLogger("autopeft.study")

#: How long a worker or proposer waits for the database to come back before giving up (seconds).
DEFAULT_OUTAGE_DEADLINE = 600.0


def is_transient(exc: BaseException) -> bool:
    """A lost, refused or locked connection (directly, or wrapped by Optuna's storage)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return True
        if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def with_retries(fn: Callable[[], T], what: str, *, deadline: float = DEFAULT_OUTAGE_DEADLINE,
                 first_wait: float = 0.5, max_wait: float = 8.0, sleep: Callable[[float], None] = time.sleep) -> T:
    """``fn()``, retried with exponential back-off while the database is unreachable."""
    start = time.monotonic()
    wait = first_wait
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            attempt += 1
            elapsed = time.monotonic() - start
            if not is_transient(exc) or elapsed + wait > deadline or stop_held():  # stopping: no more waiting
                raise
            log.warning("database unreachable during %s (attempt %d, %.0f s so far): %s; retrying in %.1f s",
                        what, attempt, elapsed, type(exc).__name__, wait)
            sleep(wait)
            wait = min(max_wait, wait * 2)
