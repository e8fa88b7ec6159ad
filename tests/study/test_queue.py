"""The queue's building blocks on real storages: claims, retries with their cap, hand-backs, outages,
presence, the proposer's batches and the status view."""

import threading
import time

import optuna
import pytest
import sqlalchemy.exc
from optuna.trial import TrialState

from autopeft.errors import AutopeftError, StudyError
from autopeft.optimize.samplers import make_sampler
from autopeft.proxy.fidelity import Fidelity
from autopeft.space import ModelDims, load_space
from autopeft.study.presence import Presence, all_presences, live_workers
from autopeft.study.proposer import batch_size, queue_target, run_proposer
from autopeft.study.retry import is_transient, with_retries
from autopeft.study.status import study_status
from autopeft.study.storage import open_storage
from autopeft.study.study import create_or_load, load
from autopeft.study.worker import FAIL_REASON, claim, fail_stale, propose, run_one, run_worker

from fakes import ArithmeticEvaluator

DIMS = ModelDims(num_layers=6, hidden_size=384)
FID = Fidelity(steps=5, train_examples=64, eval_examples=32)


def make(url, name, sampler=None, **storage_kw):
    st, _ = create_or_load(open_storage(url, **storage_kw), name, load_space("autopeft"), DIMS, FID,
                           sampler=sampler or optuna.samplers.RandomSampler(seed=0))
    return st


def test_two_claims_never_get_the_same_trial(storage_url, study_name):
    st = make(storage_url, study_name)
    other = load(open_storage(storage_url), study_name)
    propose(st, 3)
    claimed = [claim(s, sample_if_empty=False) for s in (st, other, st, other, st)]
    numbers = [t.number for t in claimed if t is not None]
    assert sorted(numbers) == [0, 1, 2, 3] and claimed[-1] is None  # anchor + 3 proposals, then empty


def test_a_trial_that_keeps_killing_workers_stops_at_the_cap(storage_url, study_name):
    st = make(storage_url, study_name, heartbeat_interval=1, grace_period=1, max_retry=2)
    number = None
    for attempt in range(1, 4):
        trial = claim(st, sample_if_empty=False)  # the anchor, then its re-queued copies
        number = trial.number
        time.sleep(2.1)  # the worker "died": no more heartbeats
        assert fail_stale(st) == [number]
        reason = st.storage.get_trial(trial._trial_id).user_attrs[FAIL_REASON]
        assert "no heartbeat" in reason and f"attempt {attempt}" in reason
    assert "retry cap 2 reached" in reason
    assert st.count(TrialState.WAITING) == 0 and st.count(TrialState.FAIL) == 3
    last = next(t for t in st.trials() if t.number == number)
    assert len(last.system_attrs["retry_history"]) == 2
    failures = study_status(st).failures
    assert [f.attempt for f in failures] == [3, 2, 1] and failures[0].requeued_as is None
    assert failures[1].requeued_as == number


def test_a_trial_orphaned_before_its_first_heartbeat_is_recovered(storage_url, study_name):
    """A process that died between creating a trial and its first heartbeat: Optuna's stale check never
    sees such a trial; ours fails it after the grace period and re-queues it."""
    st = make(storage_url, study_name, heartbeat_interval=1, grace_period=1)
    orphan = st.storage.create_new_trial(st.study._study_id)  # RUNNING, no heartbeat row
    assert fail_stale(st) == []  # not yet past the grace period
    time.sleep(1.5)
    number = st.storage.get_trial(orphan).number
    assert fail_stale(st) == [number]
    assert "no heartbeat" in st.storage.get_trial(orphan).user_attrs[FAIL_REASON]
    assert [t.system_attrs["failed_trial"] for t in st.trials((TrialState.WAITING,)) if "failed_trial" in t.system_attrs] == [number]


def test_interrupt_hands_back_without_counting_a_retry(tmp_path, study_name):
    st = make(f"sqlite:///{tmp_path / 's.db'}", study_name, max_retry=0)

    class Interrupted:
        def run(self, plan):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_one(st, Interrupted())
    failed = st.trials((TrialState.FAIL,))[0]
    copy = st.trials((TrialState.WAITING,))[0]
    assert "handed back" in failed.user_attrs[FAIL_REASON]
    assert copy.system_attrs["failed_trial"] == failed.number and copy.system_attrs["retry_history"] == []
    assert FAIL_REASON not in copy.user_attrs and copy.params == failed.params  # max_retry=0 did not stop it


class FlakyDatabase:
    """Raises a connection error for the first ``n`` calls, like a restarting PostgreSQL."""

    def __init__(self, n):
        self.n = n
        self.calls = 0

    def __call__(self):
        self.calls += 1
        if self.calls <= self.n:
            orig = Exception("server closed the connection unexpectedly")
            try:
                raise sqlalchemy.exc.OperationalError("SELECT 1", {}, orig)
            except sqlalchemy.exc.OperationalError as exc:
                raise optuna.exceptions.StorageInternalError("commit failed") from exc
        return "done"


def test_with_retries_rides_out_connection_errors_only():
    waits = []
    flaky = FlakyDatabase(3)
    assert with_retries(flaky, "a test", sleep=waits.append) == "done"
    assert flaky.calls == 4 and waits == [0.5, 1.0, 2.0]
    with pytest.raises(optuna.exceptions.StorageInternalError):
        with_retries(FlakyDatabase(10), "a test", deadline=3, sleep=lambda s: None)
    assert not is_transient(ValueError("bad value"))
    with pytest.raises(ValueError):
        with_retries(lambda: int("x"), "a test", sleep=waits.append)


def test_presence_live_and_stopped(storage_url, study_name):
    st = make(storage_url, study_name, heartbeat_interval=1, grace_period=2)
    a, b = Presence(st, "worker", device="cuda:1"), Presence(st, "worker")
    a.report("running", 3)
    b.report("idle")
    Presence(st, "proposer").report("idle")
    live = {p.worker_id: p for p in live_workers(st)}
    assert set(live) == {a.worker_id, b.worker_id}
    assert live[a.worker_id].device == "cuda:1" and live[a.worker_id].trial_number == 3
    b.report("stopped", force=True)
    assert [p.worker_id for p in live_workers(st)] == [a.worker_id]
    assert queue_target(st, None) == 2 and queue_target(st, 5) == 5
    packing = Presence(st, "worker", pack=4)
    packing.report("idle")
    assert queue_target(st, None) == 6  # a --pack 4 worker takes four trials at a time
    packing.report("stopped", force=True)
    time.sleep(2.2)
    assert live_workers(st) == [] and len(all_presences(st)) == 4  # silent past the grace period


def test_proposer_fills_to_depth_and_never_past_the_total(storage_url, study_name):
    st = make(storage_url, study_name)
    assert batch_size(st, queue_depth=4, n_trials=None, max_batch=8) == 3  # the anchor already waits
    assert batch_size(st, queue_depth=4, n_trials=3, max_batch=8) == 2
    assert batch_size(st, queue_depth=20, n_trials=None, max_batch=8) == 8
    stats = run_proposer(st, n_trials=3, queue_depth=10, poll_seconds=0.01,
                         stop=_stop_after(lambda: st.count(TrialState.WAITING) >= 3))
    assert st.count(TrialState.WAITING) == 3 and len(stats.proposed) == 2
    run_worker(st, ArithmeticEvaluator(), n_trials=3)
    assert run_proposer(st, n_trials=3).exit_reason == "the study holds 3 complete trials"


def _stop_after(condition):
    stop = threading.Event()

    def watch():
        while not condition():
            time.sleep(0.01)
        stop.set()

    threading.Thread(target=watch, daemon=True).start()
    return stop


def test_worker_waits_for_a_live_proposer_and_times_out_idle(tmp_path, study_name):
    st = make(f"sqlite:///{tmp_path / 's.db'}", study_name)
    run_worker(st, ArithmeticEvaluator(), max_trials=1)  # the anchor
    Presence(st, "proposer").report("idle")
    stats = run_worker(st, ArithmeticEvaluator(), idle_timeout=0.3, poll_seconds=0.1)
    assert stats.completed == 0 and "idle for 0.3 s" in stats.exit_reason and stats.idle_seconds >= 0.3
    assert st.count(TrialState.COMPLETE) == 1  # it did not propose for itself


def test_queued_trials_are_pending_for_the_default_sampler(tmp_path, study_name):
    """A batch proposed while an earlier one waits in the queue keeps away from it. Without the pending
    view the second batch lands next to the first (one or two index steps away, seen with this seed)."""
    st = make(f"sqlite:///{tmp_path / 's.db'}", study_name, sampler=make_sampler("botorch", seed=0, n_startup_trials=3))
    run_worker(st, ArithmeticEvaluator(), n_trials=4)  # past the Sobol start-up
    before = st.study.sampler.relative_calls["main"]
    first, second = propose(st, 2), propose(st, 2)
    assert st.study.sampler.relative_calls["main"] == before + 4  # all four from the GP
    params = {t.number: t.params for t in st.trials((TrialState.WAITING,))}

    def distance(a, b):  # L1 in index steps
        return sum(abs(params[a][k] - params[b][k]) for k in params[a])

    assert min(distance(a, b) for a in second for b in first) >= 3


def test_status_counts_and_throughput(tmp_path, study_name):
    st = make(f"sqlite:///{tmp_path / 's.db'}", study_name)
    run_worker(st, ArithmeticEvaluator(fail_when=lambda plan: plan.is_empty), n_trials=3)
    s = study_status(st)
    assert s.counts["COMPLETE"] == 3 and s.counts["FAIL"] == 1
    assert s.completed_last_hour == 3 and s.mean_trial_seconds is not None
    assert "synthetic failure" in s.failures[0].reason and s.failures[0].requeued_as is None


def test_unknown_study_name_is_a_clear_error(tmp_path):
    with pytest.raises(StudyError, match="no study named"):
        load(open_storage(f"sqlite:///{tmp_path / 'none.db'}"), "missing")


class PackingEvaluator(ArithmeticEvaluator):
    """Records the packs it was given; ``interrupt`` stops in the middle of a pack like SIGTERM does."""

    def __init__(self, interrupt=False):
        super().__init__()
        self.packs: list[int] = []
        self.interrupt = interrupt

    def run_many(self, plans):
        self.packs.append(len(plans))
        if self.interrupt:
            raise KeyboardInterrupt
        return [self.run(p) for p in plans]


def test_a_pack_worker_claims_several_trials_and_reports_each(storage_url, study_name):
    st = make(storage_url, study_name)
    propose(st, 6)  # with the anchor: 7 queued
    ev = PackingEvaluator()
    stats = run_worker(st, ev, n_trials=7, pack=3, self_propose=False)
    assert ev.packs == [3, 3] and stats.completed == 7  # the seventh ran alone: a pack starts with what is queued
    done = st.trials((TrialState.COMPLETE,))
    assert len(done) == 7 and st.count(TrialState.WAITING) == 0
    packed = [t for t in done if "packed_with" in t.user_attrs]
    assert len(packed) == 6
    assert sorted(t.user_attrs["packed_with"] for t in packed)[0] == [0, 1, 2]
    assert all(t.number in t.user_attrs["packed_with"] for t in packed)


def test_a_pack_never_claims_past_the_study_total(tmp_path, study_name):
    st = make(f"sqlite:///{tmp_path / 's.db'}", study_name)
    propose(st, 5)
    ev = PackingEvaluator()
    run_worker(st, ev, n_trials=2, pack=4, self_propose=False)
    assert ev.packs == [2] and st.count(TrialState.COMPLETE) == 2 and st.count(TrialState.WAITING) == 4


def test_interrupting_a_pack_hands_every_trial_back(tmp_path, study_name):
    st = make(f"sqlite:///{tmp_path / 's.db'}", study_name, max_retry=0)
    propose(st, 2)
    with pytest.raises(KeyboardInterrupt):
        run_worker(st, PackingEvaluator(interrupt=True), pack=3, self_propose=False)
    failed = st.trials((TrialState.FAIL,))
    assert len(failed) == 3 and all("handed back" in t.user_attrs[FAIL_REASON] for t in failed)
    copies = st.trials((TrialState.WAITING,))
    assert sorted(t.system_attrs["failed_trial"] for t in copies) == [t.number for t in failed]


def test_pack_needs_an_evaluator_that_trains_several_plans(tmp_path, study_name):
    st = make(f"sqlite:///{tmp_path / 's.db'}", study_name)
    with pytest.raises(AutopeftError, match="--pack: this objective trains one trial at a time"):
        run_worker(st, ArithmeticEvaluator(), pack=2)
    assert st.count(TrialState.RUNNING) == 0
