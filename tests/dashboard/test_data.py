"""The dashboard's plot data, computed apart from drawing (no database, no Streamlit)."""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from autopeft.dashboard import data as D
from autopeft.errors import StudyError
from autopeft.optimize.pareto import ReferencePoint, hypervolume, pareto_front
from autopeft.plan import ModuleSpec, PeftPlan
from autopeft.proxy.fidelity import Fidelity

STUDY_FID = {"model": "minilm", "steps": 5}
OBJ = ["score", "trainable_pct"]
T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def trial(number, score=None, pct=None, state=TrialState.COMPLETE, *, fidelity=STUDY_FID, anchor=None, plan=None,
          over_budget=False, fail_reason=None, step_time=None, done_at=None):
    attrs = {}
    if score is not None:
        attrs["metrics"] = {"score": score, "test_score": score, "trainable_pct": pct, "trainable_params": int(pct * 1e4),
                            "step_time": step_time if step_time is not None else 0.1, "peak_memory": 5.0}
    if fidelity is not None and state != TrialState.WAITING:
        attrs["fidelity"] = fidelity
    if anchor:
        attrs["anchor"] = anchor
    if plan is not None:
        attrs["plan"] = plan.to_dict()
        attrs["plan_summary"] = plan.summary()
    if fail_reason:
        attrs["fail_reason"] = fail_reason
    t = create_trial(
        state=state, values=[score, pct] if state == TrialState.COMPLETE else None,
        params={"x": 0}, distributions={"x": IntDistribution(0, 1)}, user_attrs=attrs,
        system_attrs={"constraints": [1.0 if over_budget else -1.0]},
    )
    t.number = number
    if state.is_finished():
        t.datetime_complete = done_at or T0 + timedelta(minutes=number)
    return t


LORA = PeftPlan.from_modules(2, {0: [ModuleSpec("lora", "q", 8), ModuleSpec("lora", "v", 8)], 1: [ModuleSpec("prefix", "attn", 16)]})
EXPERTS = PeftPlan.from_modules(3, {1: [ModuleSpec("lora_experts", "q", 4, num_experts=4, top_k=2)],
                                    2: [ModuleSpec("lora_experts", "q", 4, num_experts=2, top_k=1), ModuleSpec("ia3", "k")]})


@pytest.fixture
def trials():
    return [
        trial(0, 0.60, 0.01, anchor="head only", plan=PeftPlan(2)),
        trial(1, 0.80, 1.0, plan=LORA),
        trial(2, 0.70, 2.0),                      # dominated by 1
        trial(3, 0.85, 3.0),
        trial(4, 0.90, 0.5, over_budget=True),    # best, but infeasible: never on the front
        trial(5, 0.75, 0.2),
        trial(6, state=TrialState.FAIL, fail_reason="RuntimeError: boom", plan=EXPERTS),
        trial(7, state=TrialState.RUNNING, plan=LORA),
        trial(8, state=TrialState.WAITING),
        trial(9, 0.99, 0.001, fidelity={"model": "minilm", "steps": 50}),  # other fidelity: its own curves
    ]


@pytest.fixture
def frame(trials):
    return D.trial_frame(trials, STUDY_FID, OBJ)


def test_frame_has_one_row_per_trial_with_metrics_reasons_and_fidelity(frame):
    assert frame["number"].tolist() == list(range(10))
    row = frame.set_index("number")
    assert row.at[1, "score"] == 0.8 and row.at[1, "trainable_pct"] == 1.0 and row.at[1, "modules"] == "lora, prefix"
    assert row.at[0, "anchor"] == "head only" and row.at[0, "summary"] == "head only"
    assert row.at[6, "state"] == "FAIL" and row.at[6, "fail_reason"] == "RuntimeError: boom"
    assert math.isnan(row.at[6, "score"]) and row.at[6, "modules"] == "lora_experts, ia3"
    assert not row.at[4, "feasible"] and row.at[3, "feasible"]
    assert row.at[8, "fidelity"] == D.STUDY_FIDELITY  # not run yet: it will run at the study's fidelity
    assert row.at[9, "fidelity"] == "steps=50"
    assert D.fidelities(frame) == [(D.STUDY_FIDELITY, 6), ("steps=50", 1)]


def test_fidelity_fields_added_later_take_their_defaults():
    study = Fidelity(steps=5).model_dump()
    recorded_before = {k: v for k, v in study.items() if k != "seed"}  # as if "seed" were added since
    assert D.fidelity_key(recorded_before, study) == D.STUDY_FIDELITY
    assert D.fidelity_key({**study, "steps": 50, "max_length": 128}, study) == "max_length=128, steps=50"
    assert D.fidelity_key(None, study) == D.STUDY_FIDELITY


def test_frame_builder_converts_finished_trials_once(trials):
    builder = D.TrialFrame(STUDY_FID, OBJ)
    first = builder.frame(trials)
    running = trials[7]
    done = trial(7, 0.95, 0.05, plan=LORA)  # the running trial finished
    second = builder.frame(trials[:7] + [done] + trials[8:])
    assert first.set_index("number").at[7, "state"] == "RUNNING"
    assert second.set_index("number").at[7, "state"] == "COMPLETE" and second.set_index("number").at[7, "score"] == 0.95
    assert running.number == 7 and len(second) == len(first)


def test_front_matches_the_analysis_pareto_front(trials, frame):
    view = D.front_view(frame, ["trainable_pct", "score"])
    status = view.points.set_index("number")["status"].to_dict()
    expected = {t.number for t in pareto_front([t for t in trials if t.number != 9], ["maximize", "minimize"])}
    assert set(view.front["number"]) == expected == {0, 1, 3, 5}
    assert status[2] == D.DOMINATED and status[4] == D.OVER_BUDGET
    assert 9 not in status and 6 not in status and 7 not in status  # other fidelity, failed, running


def test_step_line_turns_at_the_worse_corner(frame):
    view = D.front_view(frame, ["trainable_pct", "score"])
    steps = list(view.steps.itertuples(index=False, name=None))
    # x minimised, y maximised: from (0.2, 0.75) to (1.0, 0.80) the line runs right, then up.
    assert steps == [(0.01, 0.6), (0.2, 0.6), (0.2, 0.75), (1.0, 0.75), (1.0, 0.8), (3.0, 0.8), (3.0, 0.85)]
    # both maximised: the corner between (1, 3) and (2, 2) is (1, 2).
    front = pd.DataFrame({"a": [3.0, 1.0, 2.0], "b": [1.0, 3.0, 2.0]})
    line = D._step_line(front, ("a", "b"), ("maximize", "maximize"))
    assert list(line.itertuples(index=False, name=None)) == [(1, 3), (1, 2), (2, 2), (2, 1), (3, 1)]


def test_other_fidelity_gets_its_own_front(frame):
    view = D.front_view(frame, ["trainable_pct", "score"], fidelity="steps=50")
    assert view.points["number"].tolist() == [9] and view.front["number"].tolist() == [9]


def test_bad_objective_names_the_value_and_the_choices(frame):
    with pytest.raises(StudyError, match=r"objective: 'accuracy' is not an objective; choose from score"):
        D.front_view(frame, ["accuracy", "score"])
    with pytest.raises(StudyError, match="names one objective twice"):
        D.front_view(frame, ["score", "score"])


def test_non_dominated_keeps_ties_and_respects_directions():
    values = np.array([[1.0, 1.0], [1.0, 1.0], [2.0, 0.5], [0.5, 0.5]])
    assert D.non_dominated(values, ["maximize", "maximize"]).tolist() == [True, True, True, False]
    assert D.non_dominated(values, ["minimize", "minimize"]).tolist() == [False, False, False, True]
    assert D.non_dominated(np.zeros((0, 2)), ["maximize", "minimize"]).tolist() == []


def test_hypervolume_series_ends_at_the_study_hypervolume(trials, frame):
    ref = D.reference_point(frame, OBJ)
    assert ref == (0.0, 100.0)
    series = D.hypervolume_series(frame, OBJ, ref)
    assert series["number"].tolist() == [0, 1, 2, 3, 4, 5]  # completion order, study fidelity only
    study_trials = [t for t in trials if t.number != 9]
    for k in range(1, 7):  # after each completed trial: the hypervolume of the trials so far
        done = [t for t in study_trials if t.state == TrialState.COMPLETE][:k]
        assert series["hypervolume"].iloc[k - 1] == pytest.approx(
            hypervolume(done, ["maximize", "minimize"], ReferencePoint(ref)), rel=1e-12)
    assert series["improved"].tolist() == [True, True, False, True, False, True]
    assert series["hypervolume"].is_monotonic_increasing


def test_hypervolume_2d_sweep_equals_botorch_on_random_fronts():
    rng = np.random.default_rng(0)
    for _ in range(20):
        pts = rng.random((rng.integers(1, 30), 2))
        ref = np.array([0.1, 0.05])
        assert D._hypervolume_2d(pts, ref) == pytest.approx(D._hypervolume_exact(pts, ref), rel=1e-9, abs=1e-12)


def test_three_objective_series_and_reference_from_observed_worst():
    ts = [trial(i, 0.5 + 0.1 * i, 1.0 + i, step_time=0.3 - 0.1 * i) for i in range(3)]
    for t in ts:
        t.values = [t.user_attrs["metrics"][k] for k in ("score", "trainable_pct", "step_time")]
    frame = D.trial_frame(ts, STUDY_FID, ["score", "trainable_pct", "step_time"])
    ref = D.reference_point(frame, ["score", "trainable_pct", "step_time"])
    assert ref[:2] == (0.0, 100.0) and ref[2] == pytest.approx(0.33)  # worst step time + 10 %
    series = D.hypervolume_series(frame, ["score", "trainable_pct", "step_time"], ref)
    assert len(series) == 3 and series["hypervolume"].is_monotonic_increasing and series["hypervolume"].iloc[-1] > 0
    with pytest.raises(StudyError, match="reference point: .* 2 values for 3 objectives"):
        D.hypervolume_series(frame, ["score", "trainable_pct", "step_time"], ref[:2])


def test_best_score_under_budget_over_time(frame):
    series = D.best_under_budget_series(frame, 1.0)
    assert series["number"].tolist() == [0, 1, 2, 3, 4, 5]
    # trial 4 (0.90 at 0.5 %) fits the budget; trial 3 (3 %) does not.
    assert series["best_score"].tolist() == [0.6, 0.8, 0.8, 0.8, 0.9, 0.9]
    assert series["best_trial"].tolist() == [0, 1, 1, 1, 4, 4]
    tiny = D.best_under_budget_series(frame, 0.001)
    assert tiny["best_score"].isna().all()
    with pytest.raises(StudyError, match=r"budget: 0 must be a percentage of parameters in \(0, 100\]"):
        D.best_under_budget_series(frame, 0)


def test_completion_order_follows_finish_time_not_number():
    late = trial(0, 0.6, 1.0, done_at=T0 + timedelta(hours=2))
    early = trial(1, 0.7, 2.0, done_at=T0)
    frame = D.trial_frame([late, early], STUDY_FID, OBJ)
    assert D.completion_order(frame)["number"].tolist() == [1, 0]


def test_filters_by_state_range_modules_and_fidelity(frame):
    assert D.filter_trials(frame, states=["FAIL"])["number"].tolist() == [6]
    assert D.filter_trials(frame, ranges={"score": (0.7, 0.85)})["number"].tolist() == [1, 2, 3, 5]
    assert D.filter_trials(frame, modules=["prefix"])["number"].tolist() == [1, 7]
    assert D.filter_trials(frame, modules=["head only"])["number"].tolist() == [0]
    assert D.filter_trials(frame, modules=["lora_experts", "prefix"])["number"].tolist() == [1, 6, 7]
    assert D.filter_trials(frame, fidelity="steps=50")["number"].tolist() == [9]
    assert len(D.filter_trials(frame)) == len(frame)


@pytest.mark.parametrize("kwargs, message", [
    ({"states": ["DONE"]}, r"state: 'DONE' is not a trial state; use COMPLETE"),
    ({"ranges": {"accuracy": (0, 1)}}, r"range: 'accuracy' is not a metric column"),
    ({"ranges": {"score": (0.9, 0.1)}}, r"range: score from 0.9 to 0.1 is empty"),
    ({"modules": ["adapter"]}, r"modules: 'adapter' is not a module type; use lora"),
])
def test_bad_filters_name_field_value_and_fix(frame, kwargs, message):
    with pytest.raises(StudyError, match=message):
        D.filter_trials(frame, **kwargs)


def test_plan_grid_places_each_module_with_its_size():
    grid = D.plan_grid(LORA)
    assert sorted(zip(grid["layer"], grid["slot"], grid["label"])) == [
        (0, "q · LoRA", "r8"), (0, "v · LoRA", "r8"), (1, "attn · prefix", "16")]
    slots = D.slot_order(grid)
    assert slots == ["q · LoRA", "v · LoRA", "attn · prefix"]
    values, labels = D.grid_matrix(grid, LORA.num_layers, slots)
    assert labels.tolist() == [["r8", "r8", ""], ["", "", "16"]]
    assert values[0, 0] == 1 + math.log2(8) and math.isnan(values[1, 0]) and values[1, 2] == 1 + math.log2(16)
    assert D.plan_grid(PeftPlan(4)).empty


def test_two_plans_share_columns_for_comparison():
    slots = D.slot_order(D.plan_grid(LORA), D.plan_grid(EXPERTS))
    assert slots == ["q · LoRA", "q · LoRA experts", "k · (IA)3", "v · LoRA", "attn · prefix"]
    values, labels = D.grid_matrix(D.plan_grid(EXPERTS), EXPERTS.num_layers, slots)
    assert labels.tolist() == [["", "", "", "", ""], ["", "4×r4 k2", "", "", ""], ["", "2×r4 k1", "on", "", ""]]


def test_experts_per_layer_counts_every_layer():
    bars = D.experts_per_layer(EXPERTS)
    assert bars[["layer", "site", "num_experts", "top_k"]].values.tolist() == [
        [0, "q", 0, 0], [1, "q", 4, 2], [2, "q", 2, 1]]
    assert D.experts_per_layer(LORA).empty


def test_metrics_table_puts_trials_side_by_side(frame):
    table = D.metrics_table(frame, [1, 3], OBJ)
    assert list(table.columns) == ["trial 1", "trial 3"]
    assert table.loc[D.LABELS["score"]].tolist() == ["0.8", "0.85"]
    assert table.loc["state"].tolist() == ["COMPLETE", "COMPLETE"]


def test_random_frames_keep_invariants():
    rng = random.Random(0)
    ts = [trial(i, rng.random(), rng.uniform(0.001, 10), over_budget=rng.random() < 0.2) for i in range(200)]
    frame = D.trial_frame(ts, STUDY_FID, OBJ)
    view = D.front_view(frame, ["trainable_pct", "score"])
    front = view.front.sort_values("trainable_pct")
    assert front["score"].is_monotonic_increasing  # cheaper front points score lower
    assert view.points.loc[view.points["status"] == D.FRONT, "feasible"].all()
    series = D.hypervolume_series(frame, OBJ, (0.0, 100.0))
    assert series["hypervolume"].iloc[-1] == pytest.approx(
        hypervolume(ts, ["maximize", "minimize"], ReferencePoint((0.0, 100.0))), rel=1e-12)
    assert isinstance(series, pd.DataFrame)


def test_known_baselines_are_recognised_by_their_plan():
    qv = [ModuleSpec("lora", "q", 8), ModuleSpec("lora", "v", 8)]
    assert D.known_baseline(PeftPlan(3)) == "head only"
    assert D.known_baseline(PeftPlan.from_modules(3, {i: qv for i in range(3)})) == "LoRA r=8 on q,v"
    assert D.known_baseline(PeftPlan.from_modules(3, {0: qv, 1: qv})) == ""  # not on every layer
    r4 = [ModuleSpec("lora", "q", 4), ModuleSpec("lora", "v", 4)]
    assert D.known_baseline(PeftPlan.from_modules(3, {i: r4 for i in range(3)})) == ""
    plan = PeftPlan.from_modules(2, {i: qv for i in range(2)})
    row = D.record_row(trial(3, 0.8, 0.3, plan=plan), STUDY_FID, OBJ)
    assert row["anchor"] == "LoRA r=8 on q,v" and row["modules"] == "lora"


def test_recorded_baselines_from_the_study_attribute():
    table = D.recorded_baselines({"baselines": {"full fine-tuning": {"score": 0.88, "trainable_pct": 100},
                                                "majority class": {"score": 0.5}}})
    assert table["name"].tolist() == ["full fine-tuning", "majority class"]
    assert table["score"].tolist() == [0.88, 0.5] and table["trainable_pct"].iloc[0] == 100
    assert math.isnan(table["trainable_pct"].iloc[1])
    assert D.recorded_baselines({}).empty
    with pytest.raises(StudyError, match=r"baselines.full.accuracy: not a metric; use score"):
        D.recorded_baselines({"baselines": {"full": {"accuracy": 0.9}}})
    with pytest.raises(StudyError, match=r"baselines.full: 0.9 is not a mapping"):
        D.recorded_baselines({"baselines": {"full": 0.9}})
    with pytest.raises(StudyError, match=r"baselines.full: values must be numbers"):
        D.recorded_baselines({"baselines": {"full": {"score": "high"}}})
