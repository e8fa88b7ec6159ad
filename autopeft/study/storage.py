"""The study database: an Optuna RDB storage (SQLAlchemy; SQLite by default, PostgreSQL at scale)."""

from __future__ import annotations

import os
import re

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

#: Default storage: a SQLite file in the working directory.
DEFAULT_STORAGE = "sqlite:///autopeft.db"
STORAGE_ENV = "AUTOPEFT_STORAGE"

#: Seconds between a running trial's heartbeats, and how long one may be silent before the trial
#: counts as dead (failed, then re-queued up to ``max_retry`` times).
HEARTBEAT_INTERVAL = 10
GRACE_PERIOD = 60
MAX_RETRY = 2


def storage_url(storage: str | None) -> str:
    """``--storage`` value, else ``$AUTOPEFT_STORAGE``, else the default; a bare file path means SQLite."""
    url = storage or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE
    if "://" not in url:
        url = f"sqlite:///{url}"
    return url


def redact(url: str) -> str:
    """The URL with any password replaced by ``***`` (for printing and logs)."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def open_storage(
    storage: str | None,
    *,
    heartbeat_interval: int = HEARTBEAT_INTERVAL,
    grace_period: int = GRACE_PERIOD,
    max_retry: int = MAX_RETRY,
) -> RDBStorage:
    """An RDB storage with heartbeats and retry of trials whose worker died."""
    url = storage_url(storage)
    engine_kwargs: dict = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        # Several worker processes share one SQLite file: wait for the write lock instead of failing.
        engine_kwargs["connect_args"] = {"timeout": 60}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return RDBStorage(
        url,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
    )
