"""Read-only access to a study database for the dashboard, with an incremental trial cache.

The dashboard never writes: SQLite is opened in read-only mode (``mode=ro``) and PostgreSQL sessions
default to read-only transactions, so a write would fail in the database itself, not only by convention.

Reading 5,000 trials through Optuna's ``get_all_trials`` takes about 10 s on a 2-core machine with the
``full`` space (most of it building one ORM object per trial parameter). The dashboard needs no parameters
for finished trials (their plan is a user attribute), so :class:`TrialCache` reads Optuna's tables directly
with SQLAlchemy Core: trial rows, objective values, user and system attributes. Finished trials never change
in Optuna (their attributes can no longer be set), so a refresh reads the light ``(trial_id, state)`` list
and then only the trials that are new or were unfinished at the last read.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Sequence

import optuna
import sqlalchemy as sa
from optuna.storages import RDBStorage
from optuna.storages._rdb import models  # Optuna's table definitions (one class per table)
from optuna.trial import TrialState

from autopeft.errors import StudyError
from autopeft.study.storage import GRACE_PERIOD, HEARTBEAT_INTERVAL, cannot_open, redact, storage_url
from autopeft.study.study import CONFIG_ATTR, AutopeftStudy, load

STATES: tuple[str, ...] = ("COMPLETE", "RUNNING", "WAITING", "FAIL", "PRUNED")

_TRIALS = models.TrialModel.__table__
_VALUES = models.TrialValueModel.__table__
_USER_ATTRS = models.TrialUserAttributeModel.__table__
_SYSTEM_ATTRS = models.TrialSystemAttributeModel.__table__
#: Above this many trials to (re)read, attributes are fetched for the whole study instead of by id list
#: (keeps SQL ``IN`` lists short; the first load of a large study takes this path).
_BY_ID_LIMIT = 500


# ----------------------------------------------------------------------------- storage
def readonly_engine_args(url: str) -> tuple[str, dict[str, Any]]:
    """(url, engine kwargs) that open ``url`` so the database refuses writes.

    SQLite files open through a ``file:...?mode=ro`` URI; PostgreSQL sessions start with
    ``default_transaction_read_only=on``. Other backends are read through the same calls, none of which
    write.
    """
    parsed = sa.engine.make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        path = parsed.database
        if not path or path == ":memory:":
            raise StudyError(f"--storage: {redact(url)} is an in-memory SQLite database, which holds no study; "
                             "pass the SQLite file the study was written to, e.g. sqlite:///autopeft.db")
        if path.startswith("file:"):
            raise StudyError(f"--storage: {redact(url)} is already a SQLite URI; pass the plain file URL, "
                             "e.g. sqlite:///autopeft.db (the dashboard adds mode=ro itself)")
        if not os.path.isfile(path):
            raise StudyError(f"--storage: SQLite file {path!r} does not exist; run `autopeft run` first or pass "
                             "the file your study was written to")
        query = {**parsed.query, "mode": "ro", "uri": "true"}
        ro = parsed.set(database=f"file:{path}", query=query)
        # Workers may hold the write lock for a moment: wait for it rather than failing a read.
        return ro.render_as_string(hide_password=False), {"connect_args": {"timeout": 30}}
    if backend == "postgresql":
        return url, {"pool_pre_ping": True, "connect_args": {"options": "-c default_transaction_read_only=on"}}
    return url, {"pool_pre_ping": True}


def open_readonly(storage: str | None) -> RDBStorage:
    """The study database named by ``--storage`` / ``$AUTOPEFT_STORAGE`` (see ``storage_url``), read-only.

    Heartbeat interval and grace period match the workers' (``open_storage``), so liveness reads the same.
    """
    url = storage_url(storage)
    ro_url, engine_kwargs = readonly_engine_args(url)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(ro_url, engine_kwargs=engine_kwargs, skip_table_creation=True,
                              heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=GRACE_PERIOD)
    except (ImportError, sa.exc.NoSuchModuleError, sa.exc.ArgumentError) as exc:  # no such driver or dialect
        raise cannot_open(url, exc) from None
    except (sa.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError, RuntimeError) as exc:
        cause = exc.__cause__ if isinstance(exc, optuna.exceptions.StorageInternalError) else exc
        detail = getattr(cause, "orig", None) or cause
        raise StudyError(f"--storage: cannot read study tables from {redact(url)} ({detail}); pass the URL of "
                         "a database made by `autopeft run` (or any Optuna RDB storage)") from None


# ----------------------------------------------------------------------------- studies
@dataclass(frozen=True)
class StudyEntry:
    """One study of the storage, for the picker."""

    study_id: int
    name: str
    counts: dict[str, int]  # trial state name -> number of trials
    is_autopeft: bool  # made by autopeft (has the ``autopeft`` config attribute)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def label(self) -> str:
        c = self.counts
        parts = [f"{c.get('COMPLETE', 0)} complete"]
        parts += [f"{c[s]} {word}" for s, word in (("RUNNING", "running"), ("WAITING", "waiting"), ("FAIL", "failed"))
                  if c.get(s)]
        return f"{self.name} · " + ", ".join(parts)


def list_studies(storage: RDBStorage) -> list[StudyEntry]:
    """Every study with its trial counts per state (one grouped query, whatever the trial count)."""
    counts: dict[int, dict[str, int]] = {}
    query = sa.select(_TRIALS.c.study_id, _TRIALS.c.state, sa.func.count()).group_by(_TRIALS.c.study_id,
                                                                                      _TRIALS.c.state)
    with storage.engine.connect() as conn:
        for study_id, state, n in conn.execute(query):
            counts.setdefault(study_id, {s: 0 for s in STATES})[_state(state).name] = n
    return [
        StudyEntry(s._study_id, s.study_name, counts.get(s._study_id, {s: 0 for s in STATES}), CONFIG_ATTR in s.user_attrs)
        for s in storage.get_all_studies()
    ]


def open_study(storage: RDBStorage, name: str) -> AutopeftStudy:
    """Open an autopeft study without reading its trials (``load`` reads the study list only)."""
    return load(storage, name)


# ----------------------------------------------------------------------------- trials
@dataclass(frozen=True)
class TrialRecord:
    """What the dashboard reads of one trial. Its attribute names match ``optuna.trial.FrozenTrial``'s, so
    ``autopeft.analysis.trial_row`` and ``autopeft.optimize.pareto.is_feasible`` accept it."""

    trial_id: int
    number: int
    state: TrialState
    datetime_start: datetime | None  # UTC
    datetime_complete: datetime | None  # UTC
    values: tuple[float, ...] | None
    user_attrs: dict[str, Any] = field(default_factory=dict)
    system_attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def _trial_id(self) -> int:  # FrozenTrial's spelling
        return self.trial_id


@dataclass(frozen=True)
class RefreshStats:
    read: int  # trials (re)read by this refresh
    total: int  # trials in the study


def _state(value: Any) -> TrialState:
    return value if isinstance(value, TrialState) else TrialState[str(value)]


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=timezone.utc)  # stored as naive UTC


class TrialCache:
    """The trials of one study, kept in memory and brought up to date by :meth:`refresh`.

    ``version`` grows whenever a refresh read anything, so derived data can be cached on
    ``(study, version)``.
    """

    def __init__(self, storage: RDBStorage, study_id: int):
        self.storage = storage
        self.study_id = study_id
        self._records: dict[int, TrialRecord] = {}  # trial_id -> record
        self.version = 0

    @property
    def records(self) -> list[TrialRecord]:
        """Every trial, by number."""
        return sorted(self._records.values(), key=lambda r: r.number)

    def refresh(self) -> RefreshStats:
        with self.storage.engine.connect() as conn:
            rows = conn.execute(
                sa.select(_TRIALS.c.trial_id, _TRIALS.c.number, _TRIALS.c.state, _TRIALS.c.datetime_start,
                          _TRIALS.c.datetime_complete).where(_TRIALS.c.study_id == self.study_id)
            ).all()
            stale = [r for r in rows if (old := self._records.get(r.trial_id)) is None or not old.state.is_finished()]
            if stale:
                ids = [r.trial_id for r in stale]
                values, user, system = self._attributes(conn, ids)
                for r in stale:
                    vals = values.get(r.trial_id)
                    self._records[r.trial_id] = TrialRecord(
                        trial_id=r.trial_id, number=r.number, state=_state(r.state),
                        datetime_start=_utc(r.datetime_start), datetime_complete=_utc(r.datetime_complete),
                        values=tuple(v for _, v in sorted(vals.items())) if vals else None,
                        user_attrs=user.get(r.trial_id, {}), system_attrs=system.get(r.trial_id, {}),
                    )
                self.version += 1
        present = {r.trial_id for r in rows}
        if len(present) != len(self._records):  # the study was deleted and made again under its id
            self._records = {k: v for k, v in self._records.items() if k in present}
            self.version += 1
        return RefreshStats(read=len(stale), total=len(rows))

    def _attributes(self, conn, ids: Sequence[int]):
        """Objective values, user and system attributes of the trials ``ids``."""
        if len(ids) > _BY_ID_LIMIT:  # read the whole study, keep the asked trials
            in_study = sa.select(_TRIALS.c.trial_id).where(_TRIALS.c.study_id == self.study_id)
            match = lambda col: col.in_(in_study)  # noqa: E731
        else:
            match = lambda col: col.in_(list(ids))  # noqa: E731
        wanted = set(ids)
        values: dict[int, dict[int, float]] = {}
        query = sa.select(_VALUES.c.trial_id, _VALUES.c.objective, _VALUES.c.value, _VALUES.c.value_type)
        for tid, objective, value, vtype in conn.execute(query.where(match(_VALUES.c.trial_id))):
            if tid in wanted:
                values.setdefault(tid, {})[objective] = models.TrialValueModel.stored_repr_to_value(value, vtype)
        attrs: list[dict[int, dict[str, Any]]] = []
        for table in (_USER_ATTRS, _SYSTEM_ATTRS):
            out: dict[int, dict[str, Any]] = {}
            query = sa.select(table.c.trial_id, table.c.key, table.c.value_json)
            for tid, key, value_json in conn.execute(query.where(match(table.c.trial_id))):
                if tid in wanted:
                    out.setdefault(tid, {})[key] = json.loads(value_json)
            attrs.append(out)
        return values, attrs[0], attrs[1]
