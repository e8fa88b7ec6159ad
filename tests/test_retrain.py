"""Retraining a chosen trial at another fidelity, into the companion study <study>@<preset>.

The source studies are filled with the arithmetic stand-in (fast); the retrains train the packaged MiniLM for
real, at a tiny budget.
"""

from __future__ import annotations

import json
import sqlite3

import optuna
import pytest
from optuna.trial import TrialState

from autopeft.artifacts import load_trial_state
from autopeft.errors import StudyError
from autopeft.export import export_trial
from autopeft.proxy.fidelity import Fidelity
from autopeft.proxy.models import load_config, model_dims
from autopeft.proxy.train import ProxyTrainer
from autopeft.retrain import SOURCE_ATTR, _start_trial, companion_name, linked_trials, prepare_retrain, retrain
from autopeft.space import parse_space
from autopeft.study.storage import open_storage
from autopeft.study.study import CONFIG_ATTR, create_or_load, load
from autopeft.study.worker import FAIL_REASON, run_worker
from fakes import ArithmeticEvaluator

TINY = {"steps": 3, "train_examples": 32, "eval_examples": 16, "batch_size": 8, "max_length": 32}
LORA = "name: l\nplacement: all\nmodules: {lora: {sizes: [0, 4], sites: [q, v]}}"


def make_source(db, name="s", fidelity=None, n=3):
    """A study on MiniLM's shape, at the default (search) fidelity, filled by the arithmetic stand-in."""
    st, _ = create_or_load(open_storage(f"sqlite:///{db}"), name, parse_space(LORA), model_dims(load_config("minilm")),
                           fidelity or Fidelity(), sampler=optuna.samplers.RandomSampler(seed=0))
    run_worker(st, ArithmeticEvaluator(), n_trials=n)
    return st


def lora_trial(st):
    return next(t for t in st.trials((TrialState.COMPLETE,)) if not st.plan_of(t).is_empty)


def study_rows(db, name):
    """Every stored row of study ``name`` and its trials, as text: equal means byte-for-byte unchanged."""
    with sqlite3.connect(db) as con:
        (study_id,) = con.execute("select study_id from studies where study_name = ?", (name,)).fetchone()
        ids = [r[0] for r in con.execute("select trial_id from trials where study_id = ? order by trial_id", (study_id,))]
        rows = {}
        for table in ("study_directions", "study_user_attributes", "study_system_attributes", "trials"):
            rows[table] = con.execute(f"select * from {table} where study_id = ? order by 1", (study_id,)).fetchall()
        marks = ",".join("?" * len(ids))
        for table in ("trial_params", "trial_values", "trial_user_attributes", "trial_system_attributes",
                      "trial_intermediate_values", "trial_heartbeats"):
            rows[table] = con.execute(f"select * from {table} where trial_id in ({marks}) order by 1", ids).fetchall()
    return json.dumps(rows, default=str)


def db_dump(db):
    with sqlite3.connect(db) as con:
        return list(con.iterdump())


def test_retrain_adds_a_linked_trial_to_the_companion_study(tmp_path, monkeypatch):
    db = tmp_path / "s.db"
    st = make_source(db)
    src = lora_trial(st)
    before = study_rows(db, "s")

    request = prepare_retrain(st.storage, "s", src.number, "full", TINY)
    assert request.companion == companion_name("s", "full") == "s@full"
    assert request.fidelity == Fidelity(**TINY)  # the preset's fields, all overridden here
    result = retrain(request)
    assert result.created

    companion = load(st.storage, "s@full")
    assert companion.fidelity == Fidelity(**TINY) != st.fidelity
    assert companion.study.user_attrs[CONFIG_ATTR]["space_yaml"] == st.space_yaml
    assert companion.study.user_attrs[CONFIG_ATTR]["dims"] == st.study.user_attrs[CONFIG_ATTR]["dims"]
    (trial,) = companion.trials()  # no head-only anchor: only the retrain
    assert trial.number == result.trial.number and trial.state == TrialState.COMPLETE
    assert trial.params == src.params
    assert trial.user_attrs["plan"] == src.user_attrs["plan"] and trial.user_attrs["plan_summary"] == "lora r4 q,v @L0-5"
    assert trial.user_attrs[SOURCE_ATTR] == {"study": "s", "trial": src.number}
    assert trial.user_attrs["fidelity"] == Fidelity(**TINY).model_dump()
    metrics = trial.user_attrs["metrics"]
    assert trial.values == [metrics["score"], metrics["trainable_pct"]]
    assert 0 <= metrics["score"] <= 1 and metrics["base_params"] > 20_000_000  # MiniLM, really trained
    state = load_trial_state(companion, trial)
    assert state and any("lora" in k for k in state)
    assert study_rows(db, "s") == before  # the source study is only read

    # Again: refused (naming the existing trial) without writing, unless --again.
    dump = db_dump(db)
    with pytest.raises(StudyError) as err:
        prepare_retrain(st.storage, "s", src.number, "full", TINY)
    assert f"trial {trial.number} of 's@full'" in str(err.value) and "--again" in str(err.value)
    # Other overrides would mix fidelities in the companion: refused, naming the difference.
    with pytest.raises(StudyError) as err:
        prepare_retrain(st.storage, "s", src.number, "full", {**TINY, "steps": 4}, again=True)
    assert "--fidelity" in str(err.value) and "steps: stored 3, asked 4" in str(err.value)
    assert db_dump(db) == dump
    again = retrain(prepare_retrain(st.storage, "s", src.number, "full", TINY, again=True))
    assert not again.created and again.trial.number == trial.number + 1 and again.trial.params == src.params
    assert [t.number for t in linked_trials(load(st.storage, "s@full"), "s", src.number)] == [0, 1]
    assert study_rows(db, "s") == before

    # Export in peft's format uses the stored weights: nothing is trained.
    def no_training(*args, **kwargs):
        raise AssertionError("export trained the plan")

    monkeypatch.setattr(ProxyTrainer, "run", no_training)
    out = export_trial(companion, trial, tmp_path / "peft", "peft")
    assert out.format == "peft" and out.weights and all(p.is_file() for p in out.paths)
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["r"] == 4


def test_an_interrupted_or_dead_retrain_is_taken_over(tmp_path, monkeypatch):
    db = tmp_path / "s.db"
    st = make_source(db)
    src = lora_trial(st)
    real_run = ProxyTrainer.run

    def interrupted(self, plan, on_step=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(ProxyTrainer, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        retrain(prepare_retrain(st.storage, "s", src.number, "full", TINY))
    companion = load(st.storage, "s@full")
    states = [(t.number, t.state) for t in linked_trials(companion, "s", src.number)]
    assert states == [(0, TrialState.FAIL), (1, TrialState.WAITING)]

    monkeypatch.setattr(ProxyTrainer, "run", real_run)
    request = prepare_retrain(st.storage, "s", src.number, "full", TINY)
    assert request.resume is not None and request.resume.number == 1
    result = retrain(request)
    assert result.trial.number == 1 and result.trial.state == TrialState.COMPLETE
    assert result.trial.params == src.params and result.trial.user_attrs[SOURCE_ATTR]["trial"] == src.number
    assert len(load(st.storage, "s@full").trials()) == 2

    # A retrain that died (killed) leaves its trial RUNNING. While its heartbeat is fresh it counts as running
    # elsewhere; once the heartbeat is older than the grace period, the next retrain fails it and starts anew.
    companion = load(st.storage, "s@full")
    template = optuna.trial.create_trial(state=TrialState.RUNNING, params=src.params, distributions=src.distributions,
                                         user_attrs={SOURCE_ATTR: {"study": "s", "trial": src.number}})
    dead_id = companion.study._storage.create_new_trial(companion.study._study_id, template_trial=template)
    st.storage.record_heartbeat(dead_id)
    with pytest.raises(StudyError) as err:
        prepare_retrain(st.storage, "s", src.number, "full", TINY)
    assert "is being retrained now" in str(err.value) and "trial 2 of 's@full' (RUNNING)" in str(err.value)
    with sqlite3.connect(db) as con:  # as if the process had died an hour ago
        con.execute("update trial_heartbeats set heartbeat = datetime(heartbeat, '-1 hour') where trial_id = ?",
                    (dead_id,))
    request = prepare_retrain(st.storage, "s", src.number, "full", TINY)
    assert request.resume is not None and request.resume.number == 2 and request.resume.state == TrialState.RUNNING
    new = _start_trial(companion, request)  # what retrain() runs; training it again is covered above
    dead = st.storage.get_trial(dead_id)
    assert dead.state == TrialState.FAIL and "no heartbeat" in dead.user_attrs[FAIL_REASON]
    assert new.number == 3 and new.params == src.params
    assert st.storage.get_trial(new._trial_id).user_attrs[SOURCE_ATTR] == {"study": "s", "trial": src.number}


def test_bad_input_is_refused_and_writes_nothing(tmp_path):
    db = tmp_path / "s.db"
    st = make_source(db)
    failed = st.study.ask()
    failed.set_user_attr(FAIL_REASON, "loss became nan at step 2")
    st.study.tell(failed, state=TrialState.FAIL)
    st.study.enqueue_trial({name: 0 for name in st.space.choices})
    waiting = st.trials((TrialState.WAITING,))[0].number
    make_source(db, "syn", Fidelity(objective="synthetic"), n=1)
    dump = db_dump(db)
    good = lora_trial(st).number

    cases = [
        (("nope", good, "full", None), ["study", "'nope'", "studies here: s, syn"]),
        (("s", 99, "full", None), ["--trial", "no trial 99", "autopeft study show s"]),
        (("s", failed.number, "full", None), ["--trial", f"trial {failed.number}", "FAIL", "loss became nan",
                                              "only a COMPLETE trial"]),
        (("s", waiting, "full", None), ["--trial", "WAITING"]),
        (("syn", 0, "full", None), ["'syn'", "synthetic", "retrain needs a proxy study"]),
        (("s", good, "everything", None), ["--fidelity", "'everything'", "quick, default, full"]),
        (("s", good, "full", {"steps": -1}), ["--steps", "got -1"]),
        (("s", good, "full", {"task": "bbc_news"}), ["--task", "bbc_news"]),
    ]
    for args, needles in cases:
        with pytest.raises(StudyError) as err:
            prepare_retrain(st.storage, *args)
        for needle in needles:
            assert needle in str(err.value), (args, str(err.value))
    assert db_dump(db) == dump


@pytest.mark.slow
def test_cli_retrain_then_export_in_peft_format(tmp_path):
    from test_cli import TINY as TINY_FLAGS
    from test_cli import cli

    db = tmp_path / "s.db"
    st = make_source(db)
    src = lora_trial(st)
    store = ["--storage", f"sqlite:///{db}"]
    out = cli("retrain", "s", "--trial", str(src.number), *store, *TINY_FLAGS).stdout
    assert f"s #{src.number}" in out and "s@full #0" in out and "created study s@full: trial 0" in out
    for row in ("score", "test score", "trainable %", "step s"):
        assert row in out
    score = load(st.storage, "s@full").trials()[0].user_attrs["metrics"]["score"]
    assert f"{score:.4f}" in out

    again = cli("retrain", "s", "--trial", str(src.number), *store, *TINY_FLAGS, check=False)
    assert again.returncode == 2 and "trial 0 of 's@full'" in again.stderr and "--again" in again.stderr

    peft_dir = tmp_path / "peft"
    out = cli("export", "s@full", "--trial", "0", "--format", "peft", "-o", str(peft_dir), *store).stdout
    assert "(peft): trial 0," in " ".join(out.split())  # rich wraps long lines
    assert (peft_dir / "adapter_model.safetensors").is_file()
    from peft import PeftConfig

    config = PeftConfig.from_pretrained(str(peft_dir))
    assert config.r == 4 and len(config.target_modules) == 12  # q and v of 6 layers
    assert {name.rsplit(".", 1)[1] for name in config.target_modules} == {"query", "value"}
