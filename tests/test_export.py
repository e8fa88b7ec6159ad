"""Export a trial's plan to YAML, read it back, apply it to a model: the round trip is exact."""

import optuna
import pytest
from transformers import BertConfig, BertForSequenceClassification

from autopeft.analysis import parse_budget, select_trial
from autopeft.errors import PlanError, StudyError
from autopeft.export import apply_plan_file, plan_document, read_plan, write_plan
from autopeft.peft import apply_plan, count_parameters
from autopeft.proxy.fidelity import Fidelity
from autopeft.space import ModelDims, load_space
from autopeft.study.storage import open_storage
from autopeft.study.study import create_or_load
from autopeft.study.worker import run_worker
from fakes import ArithmeticEvaluator


@pytest.fixture
def study(tmp_path):
    st, _ = create_or_load(open_storage(f"sqlite:///{tmp_path / 'e.db'}"), "e", load_space("full"),
                           ModelDims(2, 32), Fidelity(steps=5), sampler=optuna.samplers.RandomSampler(seed=7))
    run_worker(st, ArithmeticEvaluator(), n_trials=6)
    return st


def test_yaml_round_trip_and_apply(study, tmp_path):
    trial = select_trial(study, max_params_pct=parse_budget("100%"))
    path = write_plan(plan_document(study, trial), tmp_path / "plan.yaml")
    plan, doc = read_plan(path)
    assert plan == study.plan_of(trial)
    assert doc["study"] == "e" and doc["trial"] == trial.number and doc["fidelity"]["steps"] == 5
    assert doc["metrics"]["score"] == trial.values[0]

    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    a = apply_plan_file(BertForSequenceClassification(cfg), path, seed=0)
    b = apply_plan(BertForSequenceClassification(cfg), plan, seed=0)
    assert count_parameters(a) == count_parameters(b)


def test_selection_by_budget_and_number(study):
    best = select_trial(study)
    assert best.values[0] == max(t.values[0] for t in study.trials((optuna.trial.TrialState.COMPLETE,)))
    cheap = select_trial(study, max_params_pct=0.001)  # the head-only anchor always fits
    assert cheap.user_attrs["metrics"]["trainable_pct"] <= 0.001
    assert select_trial(study, trial=2).number == 2
    with pytest.raises(StudyError, match="no trial 99"):
        select_trial(study, trial=99)
    with pytest.raises(StudyError, match="--max-params"):
        parse_budget("0%")


def test_bad_plan_files(tmp_path):
    with pytest.raises(PlanError, match="does not exist"):
        read_plan(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("plan: {num_layers: 2, layers: [{index: 0, modules: [{method: lora, site: attn, size: 4}]}]}")
    with pytest.raises(PlanError, match="lora cannot sit on 'attn'"):
        read_plan(bad)
