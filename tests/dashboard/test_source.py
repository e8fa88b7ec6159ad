"""The dashboard's read-only storage and incremental trial cache, on real SQLite and PostgreSQL studies."""

from __future__ import annotations

import re
import sqlite3

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from autopeft.analysis import trial_row
from autopeft.dashboard import source
from autopeft.dashboard.source import TrialCache, list_studies, open_readonly, open_study
from autopeft.errors import StudyError
from autopeft.study.storage import open_storage
from autopeft.study.worker import propose, run_worker

from fakes import ArithmeticEvaluator


def same_as_optuna(cache: TrialCache, st) -> None:
    records = cache.records
    trials = st.storage.get_all_trials(st.study._study_id)
    assert [r.number for r in records] == [t.number for t in trials]
    for r, t in zip(records, trials):
        assert (r.state, r.user_attrs, r.system_attrs) == (t.state, t.user_attrs, t.system_attrs)
        assert (list(r.values) if r.values else None) == t.values
        assert trial_row(r) == trial_row(t)
        assert r.datetime_complete == (t.datetime_complete.astimezone() if t.datetime_complete else None)


def test_cache_reads_new_and_unfinished_trials_only(storage_url, study_name, make_study):
    st = make_study(storage_url, study_name, n_trials=4, fail_every=3)
    ro = open_study(open_readonly(storage_url), study_name)
    cache = TrialCache(ro.storage, ro.study._study_id)
    first = cache.refresh()
    assert first.read == first.total == len(st.trials()) >= 5
    same_as_optuna(cache, st)
    assert cache.refresh().read == 0  # nothing changed: nothing read
    version = cache.version

    queued = propose(st, 2)  # two WAITING trials
    assert cache.refresh().read == 2 and cache.version == version + 1
    run_worker(st, ArithmeticEvaluator(), max_trials=1)  # one of them runs and finishes
    again = cache.refresh()
    assert again.read == 2  # the two trials that were unfinished at the last read
    assert {r.number: r.state for r in cache.records}[queued[0]] == TrialState.COMPLETE
    same_as_optuna(cache, st)


def test_large_reads_take_the_whole_study_path(monkeypatch, tmp_path, study_name, make_study):
    url = f"sqlite:///{tmp_path / 's.db'}"
    st = make_study(url, study_name, n_trials=5)
    make_study(url, "other", n_trials=2)  # trials of another study must not leak in
    monkeypatch.setattr(source, "_BY_ID_LIMIT", 2)
    ro = open_study(open_readonly(url), study_name)
    cache = TrialCache(ro.storage, ro.study._study_id)
    assert cache.refresh().read == len(st.trials()) == 5
    same_as_optuna(cache, st)


def test_the_dashboard_storage_refuses_writes(storage_url, study_name, make_study):
    make_study(storage_url, study_name, n_trials=1)
    ro = open_readonly(storage_url)
    study_id = ro.get_study_id_from_name(study_name)
    for write in (lambda: ro.set_study_user_attr(study_id, "note", "written by the dashboard"),
                  lambda: ro.set_study_system_attr(study_id, "autopeft:worker:x", {"state": "idle"})):
        with pytest.raises(Exception) as refused:
            write()
        # SQLite: "attempt to write a readonly database"; PostgreSQL: "... in a read-only transaction"
        cause = refused.value if isinstance(refused.value, sa.exc.DBAPIError) else refused.value.__cause__
        assert isinstance(cause, sa.exc.DBAPIError) and re.search("(?i)read-?only", str(cause))
    assert "note" not in open_storage(storage_url).get_study_user_attrs(study_id)


def test_study_list_counts_every_state(storage_url, study_name, make_study):
    make_study(storage_url, study_name, n_trials=3, fail_every=2)
    other = f"{study_name}-b"
    st_b = make_study(storage_url, other)
    propose(st_b, 2)
    entries = {e.name: e for e in list_studies(open_readonly(storage_url))}
    a, b = entries[study_name], entries[other]
    assert a.counts["COMPLETE"] == 3 and a.counts["FAIL"] >= 1 and a.is_autopeft
    assert b.counts["WAITING"] == 3 and b.counts["COMPLETE"] == 0  # the head-only anchor and two proposals
    assert a.label().startswith(f"{study_name} · 3 complete") and "failed" in a.label()
    assert b.label() == f"{other} · 0 complete, 3 waiting"


def test_bad_storage_and_study_names_say_what_to_do(tmp_path, study_name, make_study):
    with pytest.raises(StudyError, match=r"--storage: SQLite file .*nope.db' does not exist; run `autopeft run`"):
        open_readonly(f"sqlite:///{tmp_path / 'nope.db'}")
    with pytest.raises(StudyError, match="in-memory SQLite database"):
        open_readonly("sqlite://")
    sqlite3.connect(tmp_path / "plain.db").execute("create table notes (x int)").connection.close()
    with pytest.raises(StudyError, match="--storage: cannot read study tables from sqlite:///.*plain.db"):
        open_readonly(f"sqlite:///{tmp_path / 'plain.db'}")
    with pytest.raises(StudyError, match=r"--storage .*notadb://x: SQLAlchemy knows no database 'notadb'"):
        open_readonly("notadb://x")  # named as a database SQLAlchemy lacks, not as missing study tables

    url = f"sqlite:///{tmp_path / 's.db'}"
    make_study(url, study_name)
    optuna.create_study(study_name="foreign", storage=url)
    ro = open_readonly(url)
    with pytest.raises(StudyError, match=rf"study: no study named 'missing'; studies here: foreign, {study_name}"):
        open_study(ro, "missing")
    with pytest.raises(StudyError, match="'foreign' was not made by autopeft"):
        open_study(ro, "foreign")
    assert {e.name: e.is_autopeft for e in list_studies(ro)} == {study_name: True, "foreign": False}
