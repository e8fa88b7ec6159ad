"""Every view of the Streamlit page, run by ``streamlit.testing`` against real SQLite studies made here."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import optuna
import plotly.io as pio
import torch
import yaml
from optuna.trial import TrialState, create_trial
from streamlit.testing.v1 import AppTest
from transformers import BertConfig, BertForSequenceClassification

from autopeft.artifacts import artifact_dir

from autopeft.dashboard import data as D
from autopeft.dashboard.source import open_readonly, open_study
from autopeft.export import plan_document
from autopeft.optimize.pareto import pareto_front
from autopeft.peft import adapter_state_dict, apply_plan
from autopeft.plan import ModuleSpec, PeftPlan
from autopeft.proxy.fidelity import Fidelity
from autopeft.space import ModelDims, parse_space
from autopeft.study.presence import Presence
from autopeft.study.storage import open_storage
from autopeft.study.study import create_or_load
from autopeft.study.worker import run_worker

from fakes import ArithmeticEvaluator

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
PLAN = "plan_trials"  # the plan view's trial picker


def page(monkeypatch, url: str, study: str | None = None) -> AppTest:
    monkeypatch.setenv("AUTOPEFT_STORAGE", url)
    at = AppTest.from_file(str(APP), default_timeout=60)
    if study is not None:
        at.query_params["study"] = study
    return at.run()


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.message for e in at.exception]
    return at


def figures(at: AppTest) -> dict[str, object]:
    """Plotly figures on the page by element key (``front_chart``, ``hv_chart``, ``plan_3``, ...)."""
    out = {}
    for el in at.get("plotly_chart"):
        key = el.proto.id.rsplit("-", 1)[-1] if el.proto.id.startswith("$$ID") else el.proto.id
        out[key] = pio.from_json(el.proto.spec)
    return out


def trace(fig, name_start: str):
    return next(t for t in fig.data if (t.name or "").startswith(name_start))


def array(value) -> list:
    """A trace array; Plotly 6+ ships numeric arrays base64-encoded (``{"dtype", "bdata"}``)."""
    if isinstance(value, dict) and "bdata" in value:
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).tolist()
    return list(value)


def numbers(tr) -> list[int]:
    return sorted(int(c[0]) for c in tr.customdata) if tr.customdata is not None else []


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_storage_without_studies_and_missing_file(monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    open_storage(url)  # Optuna's tables, no study
    at = ok(page(monkeypatch, url))
    assert "No study in sqlite:///" in at.info[0].value
    at = ok(page(monkeypatch, f"sqlite:///{tmp_path / 'missing.db'}"))
    assert "does not exist; run `autopeft run` first" in at.error[0].value


def test_empty_study_shows_the_queued_anchor_and_no_front(monkeypatch, sqlite_url, study_name, make_study):
    make_study(sqlite_url, study_name)
    at = ok(page(monkeypatch, sqlite_url))
    assert at.main.title[0].value == study_name
    assert metric(at, "waiting") == "1" and metric(at, "complete") == "0"
    assert any("No completed trials at this fidelity yet" in i.value for i in at.info)
    table = next(d.value for d in at.dataframe if "summary" in d.value.columns)
    assert table["state"].tolist() == ["WAITING"] and table["anchor"].tolist() == ["head only"]
    assert "front_chart" not in figures(at)


def test_two_objective_front_plan_view_and_export(monkeypatch, sqlite_url, study_name, make_study):
    st = make_study(sqlite_url, study_name, n_trials=14)
    at = ok(page(monkeypatch, sqlite_url, study_name))
    figs = figures(at)
    front = figs["front_chart"]
    expected = sorted(t.number for t in pareto_front(st.trials(), st.space.directions))
    assert numbers(trace(front, "Pareto front")) == expected
    complete = {t.number for t in st.trials((TrialState.COMPLETE,))}
    assert set(numbers(trace(front, "dominated"))) == complete - set(expected)
    baseline = trace(front, "baseline")
    assert numbers(baseline) == [0] and list(baseline.text) == ["head only"]
    assert front.layout.xaxis.type == "log" and front.layout.xaxis.title.text == D.LABELS["trainable_pct"]
    assert trace(front, "front (step line)").mode == "lines"
    hover = trace(front, "Pareto front").customdata[0]
    assert hover[1] == next(t for t in st.trials() if t.number == int(hover[0])).user_attrs["plan_summary"]
    # progress: hypervolume with its reference point, best score under the budget
    assert "reference point: score (validation) 0, trainable parameters (%) 100" in figs["hv_chart"].layout.title.text
    assert figs["budget_chart"].layout.title.text == "Best score within 1% trainable parameters"
    at.radio(key="progress_x").set_value("completed").run()  # along completion time instead of trial count
    figs = figures(ok(at))
    assert figs["hv_chart"].layout.xaxis.title.text == "completed at (UTC)"
    assert figs["budget_chart"].layout.xaxis.title.text == "completed at (UTC)"

    # pick two trials: both plans side by side, on shared columns, each with its YAML download
    a, b = expected[-1], expected[-2]
    at.multiselect(key=PLAN).set_value([a, b]).run()
    ok(at)
    assert [s.value for s in at.subheader][:2] == [f"Trial {a}", f"Trial {b}"]
    figs = figures(at)
    heat_a, heat_b = figs[f"plan_{a}"].data[0], figs[f"plan_{b}"].data[0]
    assert list(heat_a.x) == list(heat_b.x)  # same columns, so the plans compare cell by cell
    plan_a = st.plan_of(next(t for t in st.trials() if t.number == a))
    assert sorted(c for row in heat_a.text for c in row if c) == sorted(D.plan_grid(plan_a)["label"])
    assert len(heat_a.y) == plan_a.num_layers
    labels = [btn.proto.label for btn in at.get("download_button")]
    assert labels == [f"Download plan YAML (trial {a})", f"Download plan YAML (trial {b})"]
    assert any(list(d.value.columns) == [f"trial {a}", f"trial {b}"] for d in at.dataframe)  # metrics side by side
    if any(m.method == "lora_experts" for _, m in plan_a.modules()):
        assert f"experts_{a}" in figs


def test_known_and_recorded_baselines_are_marked(monkeypatch, sqlite_url, study_name, make_study):
    st = make_study(sqlite_url, study_name, n_trials=4)
    n = st.space.dims.num_layers
    lora_qv = PeftPlan.from_modules(n, {i: [ModuleSpec("lora", "q", 8), ModuleSpec("lora", "v", 8)] for i in range(n)})
    st.study.enqueue_trial(st.space.encode(lora_qv))  # the LoRA paper's setting, queued by hand
    run_worker(st, ArithmeticEvaluator(), n_trials=5)
    lora_trial = next(t.number for t in st.trials() if st.plan_of(t) == lora_qv)
    st.study.set_user_attr("baselines", {"full fine-tuning": {"score": 0.91, "trainable_pct": 100.0},
                                         "majority class": {"score": 0.5}})
    at = ok(page(monkeypatch, sqlite_url))
    front = figures(at)["front_chart"]
    stars = trace(front, "baseline")
    assert dict(zip((int(c[0]) for c in stars.customdata), stars.text)) == {0: "head only", lora_trial: "LoRA r=8 on q,v"}
    full = trace(front, "full fine-tuning (recorded)")
    assert (list(full.x), list(full.y)) == ([100.0], [0.91])
    assert [(s.y0, a.text) for s, a in zip(front.layout.shapes, front.layout.annotations)] == [(0.5, "majority class 0.5")]


def test_export_yaml_is_the_cli_export_document(sqlite_url, study_name, make_study):
    st = make_study(sqlite_url, study_name, n_trials=3)
    ro = open_study(open_readonly(sqlite_url), study_name)
    trial = st.trials((TrialState.COMPLETE,))[-1]
    doc = yaml.safe_load(D.export_yaml(ro, ro.storage.get_trial(trial._trial_id)))
    assert doc == json.loads(json.dumps(plan_document(st, trial)))
    assert PeftPlan.from_dict(doc["plan"]) == st.plan_of(trial) and doc["trial"] == trial.number


def test_failed_trials_are_listed_with_reasons_and_filterable(monkeypatch, sqlite_url, study_name, make_study):
    st = make_study(sqlite_url, study_name, n_trials=6, fail_every=3)
    failed = sorted(t.number for t in st.trials((TrialState.FAIL,)))
    assert failed
    at = ok(page(monkeypatch, sqlite_url))
    assert metric(at, "fail") == str(len(failed))
    expander = next(e for e in at.expander if e.label.startswith("Failed trials"))
    assert expander.label == f"Failed trials ({len(failed)})"
    reasons = expander.dataframe[0].value
    assert reasons["number"].tolist() == failed
    assert all("synthetic failure" in r for r in reasons["fail_reason"])
    at.multiselect(key="table_states").set_value(["FAIL"]).run()
    table = next(d.value for d in ok(at).dataframe if "fail_reason" in d.value.columns and "summary" in d.value.columns)
    assert table["number"].tolist() == failed and set(table["state"]) == {"FAIL"}


def test_table_filters_by_objective_range_and_module_type(monkeypatch, sqlite_url, study_name, make_study):
    st = make_study(sqlite_url, study_name, n_trials=10)
    at = ok(page(monkeypatch, sqlite_url))
    at.multiselect(key="table_modules").set_value(["prefix"]).run()
    table = next(d.value for d in ok(at).dataframe if "summary" in d.value.columns)
    with_prefix = sorted(t.number for t in st.trials() if any(
        m.method == "prefix" for _, m in st.plan_of(t).modules()))
    assert sorted(table["number"]) == with_prefix
    at.multiselect(key="table_modules").set_value([]).run()
    slider = at.slider(key="range:score")
    lo, hi = slider.value
    mid = (lo + hi) / 2
    slider.set_value((mid, hi)).run()
    table = next(d.value for d in ok(at).dataframe if "summary" in d.value.columns)
    assert len(table) and (table["score"] >= mid).all()


def test_three_objectives_pairwise_matrix_and_3d(monkeypatch, sqlite_url, study_name, make_study):
    st = make_study(sqlite_url, study_name, n_trials=10, objectives=("score", "trainable_pct", "step_time"))
    at = ok(page(monkeypatch, sqlite_url))
    assert at.radio(key="front_view").options == ["pair", "pairwise matrix", "3-D"]
    x_axis = next(s for s in at.selectbox if s.label == "x axis")
    assert len(x_axis.options) == 3
    at.radio(key="front_view").set_value("pairwise matrix").run()
    matrix = figures(ok(at))["matrix_chart"]
    assert {t.type for t in matrix.data} == {"splom"}
    assert [d.label for d in matrix.data[0].dimensions] == [D.LABELS[o] for o in st.objectives]
    full_front = sorted(t.number for t in pareto_front(st.trials(), st.space.directions))
    assert numbers(trace(matrix, "Pareto front")) == full_front
    at.radio(key="front_view").set_value("3-D").run()
    cube = figures(ok(at))["front_3d"]
    assert {t.type for t in cube.data} == {"scatter3d"}
    assert numbers(trace(cube, "Pareto front")) == full_front
    hv = figures(at)["hv_chart"]
    assert "step time (s)" in hv.layout.title.text  # the observed-worst reference for step time is shown


def test_fidelities_are_never_mixed(monkeypatch, sqlite_url, study_name, make_study):
    st = make_study(sqlite_url, study_name, n_trials=5)
    best = max(st.trials((TrialState.COMPLETE,)), key=lambda t: t.values[0])
    longer = {**best.user_attrs["fidelity"], "steps": 50}
    st.study.add_trial(create_trial(  # the best plan retrained longer: same plan, other fidelity
        params=best.params, distributions=best.distributions, values=[0.99, best.values[1]],
        user_attrs={**best.user_attrs, "fidelity": longer, "metrics": {**best.user_attrs["metrics"], "score": 0.99}}))
    retrained = st.trials()[-1].number
    at = ok(page(monkeypatch, sqlite_url))
    assert numbers(trace(figures(at)["front_chart"], "Pareto front")).count(retrained) == 0
    fid = next(s for s in at.selectbox if s.label.startswith("Fidelity of the front"))
    assert fid.options[0].startswith("study fidelity") and fid.options[1] == "steps=50 (1 complete)"
    fid.set_value("steps=50").run()
    figs = figures(ok(at))
    assert numbers(trace(figs["front_chart"], "Pareto front")) == [retrained]
    assert array(figs["hv_chart"].data[0].customdata) == [retrained]


def test_refresh_reads_new_trials(monkeypatch, sqlite_url, study_name, make_study):
    st = make_study(sqlite_url, study_name, n_trials=3)
    at = ok(page(monkeypatch, sqlite_url))
    assert metric(at, "complete") == "3"
    run_worker(st, ArithmeticEvaluator(), n_trials=5)
    at.run()
    assert metric(ok(at), "complete") == "5"
    assert at.sidebar.selectbox(key=f"refresh:{study_name}").value == 10  # small study: refresh on


def test_auto_refresh_starts_off_on_large_studies(monkeypatch, sqlite_url, study_name, make_study):
    import autopeft.dashboard.app as page_module

    make_study(sqlite_url, study_name, n_trials=5)
    monkeypatch.setattr(page_module, "LARGE_STUDY", 3)  # 5 trials count as large here
    at = ok(page(monkeypatch, sqlite_url))
    assert at.sidebar.selectbox(key=f"refresh:{study_name}").value == 0
    assert any("auto-refresh off" in c.value for c in at.main.caption)


def test_live_workers_are_shown(monkeypatch, sqlite_url, study_name, make_study):
    st = make_study(sqlite_url, study_name, n_trials=2)
    Presence(st, "worker", device="cpu", worker_id="box-1").report("running", trial_number=7, force=True)
    at = ok(page(monkeypatch, sqlite_url))
    assert metric(at, "live workers") == "1"
    workers = next(d.value for d in at.dataframe if "worker" in d.value.columns)
    assert workers["worker"].tolist() == ["box-1"] and workers["trial"].tolist() == [7]
    studies = next(e for e in at.expander if e.label.startswith("Studies in this storage")).dataframe[0].value
    assert studies.set_index("study").at[study_name, "live workers"] == 1


def test_the_page_never_writes_to_the_study_database(monkeypatch, tmp_path, study_name, make_study, sqlite_digest):
    db = tmp_path / "ro.db"
    url = f"sqlite:///{db}"
    make_study(url, study_name, n_trials=6, fail_every=4)
    make_study(url, "three", n_trials=4, objectives=("score", "trainable_pct", "step_time"))
    before = sqlite_digest(db)
    at = ok(page(monkeypatch, url, study_name))
    at.multiselect(key=PLAN).set_value([1, 2]).run()
    at.multiselect(key="table_states").set_value(["FAIL"]).run()
    at.sidebar.selectbox(key="study").set_value("three").run()
    for view in ("pairwise matrix", "3-D", "pair"):
        ok(at.radio(key="front_view").set_value(view).run())
    at.multiselect(key=PLAN).set_value([1]).run()
    ok(at)
    assert sqlite_digest(db) == before



class WeightsEvaluator(ArithmeticEvaluator):
    """The arithmetic metrics plus the plan's weights on a tiny BERT (randomly moved, as if trained), which the
    worker stores as the trial's artifact."""

    def run(self, plan):
        model = apply_plan(tiny_bert(), plan, seed=0)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(self.plans))))
        return dataclasses.replace(super().run(plan), adapter_state=adapter_state_dict(model))


def tiny_bert():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64)
        return BertForSequenceClassification(config).eval()


def test_stored_weights_download_as_a_peft_adapter(monkeypatch, tmp_path, study_name):
    url = f"sqlite:///{tmp_path / 'w.db'}"
    spec = parse_space("name: w\nplacement: all\nmodules: {lora: {sizes: [0, 4], sites: [q, v]}}")
    st, _ = create_or_load(open_storage(url), study_name, spec, ModelDims(2, 32), Fidelity(steps=5),
                           sampler=optuna.samplers.RandomSampler(seed=0))
    run_worker(st, WeightsEvaluator(), n_trials=4)
    lora = next(t for t in st.trials((TrialState.COMPLETE,)) if not st.plan_of(t).is_empty)
    at = ok(page(monkeypatch, url))
    at.multiselect(key=PLAN).set_value([0, lora.number]).run()
    labels = [b.proto.label for b in ok(at).get("download_button")]
    assert f"Download adapter (trial {lora.number}, peft format, zip)" in labels
    ro = open_study(open_readonly(url), study_name)
    blob = D.export_adapter_zip(ro, ro.storage.get_trial(lora._trial_id), artifact_dir(url), model_factory=tiny_bert)
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        assert sorted(zf.namelist()) == ["adapter_config.json", "adapter_model.safetensors"]
        config = json.loads(zf.read("adapter_config.json"))
    assert config["peft_type"] == "LORA" and config["r"] == 4
    assert sorted(m.rsplit(".", 1)[-1] for m in config["target_modules"]) == ["query", "query", "value", "value"]
    (tmp_path / "autopeft-artifacts" / lora.user_attrs["artifact"]["id"]).unlink()  # pruned weights: no button
    at.run()
    labels = [b.proto.label for b in ok(at).get("download_button")]
    assert f"Download plan YAML (trial {lora.number})" in labels
    assert not any(label.startswith(f"Download adapter (trial {lora.number},") for label in labels)
    assert any(f"No stored weights for trial {lora.number}" in c.value for c in at.caption)
