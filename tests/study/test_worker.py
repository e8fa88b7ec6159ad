import time

import optuna
import pytest
from optuna.trial import TrialState

from autopeft.errors import StudyError
from autopeft.plan import PeftPlan
from autopeft.proxy.fidelity import Fidelity
from autopeft.space import ModelDims, load_space, parse_space
from autopeft.study.storage import open_storage
from autopeft.study.study import create_or_load, load
from autopeft.study.worker import FAIL_REASON, WorkerGaveUp, propose, run_worker

from fakes import ArithmeticEvaluator

DIMS = ModelDims(num_layers=6, hidden_size=384)
FID = Fidelity(steps=5, train_examples=64, eval_examples=32)


def make(storage_url, name, sampler=None, space="autopeft", **storage_kw):
    storage = open_storage(storage_url, **storage_kw)
    st, _ = create_or_load(storage, name, load_space(space), DIMS, FID, sampler=sampler)
    return st


def test_worker_completes_trials_and_records_plans(storage_url, study_name):
    st = make(storage_url, study_name, optuna.samplers.RandomSampler(seed=0))
    ev = ArithmeticEvaluator()
    stats = run_worker(st, ev, n_trials=5)
    assert stats.completed == 5 and st.count(TrialState.COMPLETE) == 5
    for t in st.trials():
        plan = PeftPlan.from_dict(t.user_attrs["plan"])
        assert plan == st.space.decode(t.params)
        assert t.user_attrs["fidelity"] == FID.model_dump()
        assert t.values == [t.user_attrs["metrics"]["score"], t.user_attrs["metrics"]["trainable_pct"]]
    assert ev.plans == [st.plan_of(t) for t in st.trials()]
    anchor = st.trials()[0]
    assert anchor.user_attrs["anchor"] == "head only" and st.plan_of(anchor).is_empty


def test_failures_keep_reason_and_worker_goes_on(storage_url, study_name):
    st = make(storage_url, study_name, optuna.samplers.RandomSampler(seed=1))
    calls = {"n": 0}

    def every_other(plan):
        calls["n"] += 1
        return calls["n"] % 2 == 0

    stats = run_worker(st, ArithmeticEvaluator(fail_when=every_other), n_trials=3)
    assert st.count(TrialState.COMPLETE) == 3
    failed = st.trials((TrialState.FAIL,))
    assert stats.failed == len(failed) >= 2
    assert all("synthetic failure" in t.user_attrs[FAIL_REASON] for t in failed)


def test_worker_gives_up_when_every_trial_fails(tmp_path, study_name):
    st = make(f"sqlite:///{tmp_path / 's.db'}", study_name, optuna.samplers.RandomSampler(seed=2))
    with pytest.raises(WorkerGaveUp, match="synthetic failure"):
        run_worker(st, ArithmeticEvaluator(fail_when=lambda p: True), n_trials=10, max_consecutive_failures=3)
    assert st.count(TrialState.FAIL) == 3


def test_proposed_trials_are_claimed_in_order(storage_url, study_name):
    st = make(storage_url, study_name, optuna.samplers.RandomSampler(seed=3))
    numbers = propose(st, 3)
    waiting = st.trials((TrialState.WAITING,))
    assert [t.number for t in waiting] == [0] + numbers  # the head-only anchor is queued first
    proposed_params = {t.number: t.params for t in waiting}
    run_worker(st, ArithmeticEvaluator(), max_trials=4)
    done = {t.number: t for t in st.trials((TrialState.COMPLETE,))}
    assert sorted(done) == [0] + numbers
    assert all(done[n].params == proposed_params[n] for n in numbers)


def test_dead_worker_trial_is_failed_and_retried(storage_url, study_name):
    st = make(storage_url, study_name, optuna.samplers.RandomSampler(seed=4), heartbeat_interval=1, grace_period=1)
    # A worker claims a trial, beats once, then dies without reporting.
    orphan = st.study.ask(st.space.distributions())  # pops the queued head-only anchor
    st.storage.record_heartbeat(orphan._trial_id)
    # Another worker finishes one trial; with the orphan still "running", 1 + 1 trials would reach the
    # target, so the worker waits until the orphan goes stale, then runs its re-queued copy.
    started = time.monotonic()
    run_worker(st, ArithmeticEvaluator(), n_trials=2, poll_seconds=0.2)
    assert time.monotonic() - started >= 1.0  # it waited out the grace period
    trials = {t.number: t for t in st.trials()}
    assert trials[orphan.number].state == TrialState.FAIL
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == orphan.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == orphan.params
    assert st.count(TrialState.COMPLETE) == 2


def test_resume_with_other_fidelity_is_refused_and_changes_nothing(storage_url, study_name):
    st = make(storage_url, study_name, optuna.samplers.RandomSampler(seed=5))
    run_worker(st, ArithmeticEvaluator(), n_trials=2)
    before = [(t.number, t.state, t.values) for t in st.trials()]
    storage = open_storage(storage_url)
    with pytest.raises(StudyError, match="steps: stored 5, asked 50"):
        create_or_load(storage, study_name, load_space("autopeft"), DIMS, Fidelity(steps=50, train_examples=64, eval_examples=32))
    with pytest.raises(StudyError, match="space"):
        create_or_load(storage, study_name, load_space("mola"), DIMS, FID)
    again = load(storage, study_name)
    assert [(t.number, t.state, t.values) for t in again.trials()] == before


def test_budget_is_a_constraint(tmp_path, study_name):
    spec = parse_space("name: b\nmodules: {prefix: {sizes: [0, 1, 8, 32]}}\nbudget: {max_trainable_pct: 0.5}")
    st, _ = create_or_load(open_storage(f"sqlite:///{tmp_path / 'b.db'}"), study_name, spec, DIMS, FID,
                           sampler=optuna.samplers.RandomSampler(seed=6))
    run_worker(st, ArithmeticEvaluator(), n_trials=8)
    from autopeft.optimize.pareto import is_feasible

    for t in st.trials((TrialState.COMPLETE,)):
        assert is_feasible(t) == (t.user_attrs["metrics"]["trainable_pct"] <= 0.5)


def test_botorch_sampler_proposes_after_startup(tmp_path, study_name):
    from autopeft.optimize.samplers import make_sampler

    st = make(f"sqlite:///{tmp_path / 'g.db'}", study_name, make_sampler("botorch", seed=0, n_startup_trials=3))
    run_worker(st, ArithmeticEvaluator(), n_trials=5)
    trials = st.trials((TrialState.COMPLETE,))
    assert len(trials) == 5
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 5  # no repeated proposal
    # Trial 0 is the queued head-only anchor; Sobol proposes trials 1-2 (until 3 trials are complete),
    # the GP (qLogNEHVI) trials 3-4.
    assert st.study.sampler.relative_calls == {"startup": 2, "main": 2}


def test_unknown_study_lists_existing(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(StudyError, match="no study named 'nope'"):
        load(storage, "nope")


def test_a_queued_extra_trial_is_not_run_while_the_running_ones_finish_the_study(tmp_path, study_name):
    from autopeft.study.worker import next_step

    st = make(f"sqlite:///{tmp_path / 's.db'}", study_name, optuna.samplers.RandomSampler(seed=0))
    run_worker(st, ArithmeticEvaluator(), n_trials=3)  # the anchor and two more, COMPLETE
    running = st.study.ask(fixed_distributions=st.space.distributions())  # another worker's trial
    propose(st, 1)  # and a proposal queued in the same moment
    assert next_step(st, 4) == "wait"  # 3 complete + 1 running finish it: the queued one would be a 5th
    assert next_step(st, 5) == "run"
    st.study.tell(running, state=TrialState.FAIL)  # that worker died: its trial no longer counts
    assert next_step(st, 4) == "run"
    assert next_step(st, 3) == "stop"


def test_of_two_trials_claimed_for_the_last_place_the_later_one_goes_back_to_the_queue(tmp_path, study_name):
    from autopeft.study.worker import _within_target, claim

    st = make(f"sqlite:///{tmp_path / 's.db'}", study_name, optuna.samplers.RandomSampler(seed=0))
    run_worker(st, ArithmeticEvaluator(), n_trials=3)
    propose(st, 2)
    first, second = claim(st), claim(st)  # two workers, each deciding on the same count
    assert st.count(TrialState.RUNNING) == 2
    assert _within_target(st, [second], 4, deadline=5.0) == []  # the later one is not needed
    assert [t.number for t in _within_target(st, [first], 4, deadline=5.0)] == [first.number]
    assert st.count(TrialState.RUNNING) == 1 and st.count(TrialState.WAITING) == 1
    assert claim(st).number == second.number  # back in the queue, with its parameters, for a later run


class _Packing(ArithmeticEvaluator):
    def run_many(self, plans):
        return [self.run(p) for p in plans]


@pytest.mark.parametrize("pack", [1, 2])
def test_ctrl_c_while_a_trial_is_being_claimed_hands_it_back(tmp_path, study_name, monkeypatch, pack):
    """The signal lands after the database made a trial RUNNING and before the worker could hand it back (with
    --pack 2: while the pack's second trial is claimed). Every claimed trial goes back to the queue at once, instead
    of waiting RUNNING for its heartbeat to go stale."""
    import os
    import signal

    from autopeft.study import worker

    st = make(f"sqlite:///{tmp_path / 's.db'}", study_name, optuna.samplers.RandomSampler(seed=4))
    run_worker(st, ArithmeticEvaluator(), n_trials=2)
    with_params, calls = worker._with_params, []

    def interrupted(study, trial_id, deadline):
        trial = with_params(study, trial_id, deadline)
        calls.append(trial_id)
        if len(calls) == pack:  # the pack's last claim
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        return trial

    monkeypatch.setattr(worker, "_with_params", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_worker(st, _Packing(), n_trials=5, pack=pack)
    assert st.count(TrialState.RUNNING) == 0 and st.count(TrialState.COMPLETE) == 2
    handed = st.trials((TrialState.FAIL,))
    assert len(handed) == pack and all(t.user_attrs[FAIL_REASON] == worker.HANDED_BACK for t in handed)
    assert sorted(map(str, (t.params for t in st.trials((TrialState.WAITING,))))) == sorted(
        map(str, (t.params for t in handed)))  # queued again


def test_ctrl_c_while_a_result_is_written_keeps_the_result(tmp_path, study_name, monkeypatch):
    """The trial trained; the signal lands while its weights and metrics are being stored. The result is stored
    in full, then the worker stops."""
    import os
    import signal

    import autopeft.artifacts as artifacts

    st = make(f"sqlite:///{tmp_path / 's.db'}", study_name, optuna.samplers.RandomSampler(seed=5))
    save = artifacts.save_trial_artifact

    def interrupted(study, trial, metrics):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        return save(study, trial, metrics)

    monkeypatch.setattr(artifacts, "save_trial_artifact", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_worker(st, ArithmeticEvaluator(), n_trials=3)
    assert st.count(TrialState.COMPLETE) == 1 and st.count(TrialState.RUNNING) == 0
