"""``autopeft study compare`` through the real CLI on SQLite, with studies answered by the replay objective."""

import json

import pytest
from typer.testing import CliRunner

from autopeft.cli import app
from autopeft.compare import compare_studies
from autopeft.optimize.samplers import make_sampler
from autopeft.plan import ModuleSpec, PeftPlan
from autopeft.proxy.fidelity import Fidelity
from autopeft.proxy.replay import ReplayEvaluator
from autopeft.study.runner import prepare_study
from autopeft.study.storage import open_storage
from autopeft.study.study import load
from autopeft.study.worker import run_worker

L = 6
runner = CliRunner()
ENV = {"COLUMNS": "250"}


def every_layer(*modules):
    return PeftPlan.from_modules(L, {i: modules for i in range(L)})


def row(row_id, plan, score, params):
    return {"id": row_id, "plan": plan.to_dict(), "state": "COMPLETE", "score": score, "test_score": score,
            "metric": "accuracy", "trainable_params": params, "module_params": params - 770,
            "base_params": 22_713_986, "trainable_pct": 100 * params / 22_713_986, "step_time": 0.1,
            "peak_memory": 0.0, "train_loss": 0.4, "wall_time": 30.0}


ROWS = [row("head", PeftPlan(L), 0.57, 770),
        row("par12", every_layer(ModuleSpec("parallel_adapter", "ffn", 12)), 0.75, 60_000),
        row("pre8", every_layer(ModuleSpec("prefix", "attn", 8)), 0.70, 40_000),
        row("ser3", every_layer(ModuleSpec("serial_adapter", "ffn", 3)), 0.66, 20_000)]


def cli(*args):
    return runner.invoke(app, list(args), env=ENV)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("compare")
    table = d / "table.jsonl"
    header = {"kind": "header", "format": 1, "fidelity": Fidelity().model_dump()}
    table.write_text("\n".join(json.dumps(x) for x in [header, *ROWS]) + "\n")
    url = f"sqlite:///{d / 'studies.db'}"
    # Study "a": a whole replayed search through `autopeft run` (worker process, replay evaluator).
    r = cli("run", "--objective", "replay", "--table", str(table), "--space", "autopeft", "--trials", "6",
            "--workers", "1", "--sampler", "random", "--study", "a", "--storage", url)
    assert r.exit_code == 0, r.output
    # Study "b": the same settings, another sampler seed, run in this process.
    fid = Fidelity(objective="replay", table=str(table))
    prepare_study("autopeft", fid, storage=url, study_name="b", sampler="random")
    b = load(open_storage(url), "b", sampler=make_sampler("random", seed=7))
    run_worker(b, ReplayEvaluator(fid), n_trials=8, self_propose=True)
    return url, table


def test_a_replayed_search_records_the_tables_scores(setup):
    url, _ = setup
    a = load(open_storage(url), "a")
    complete = [t for t in a.trials() if t.state.name == "COMPLETE"]
    assert len(complete) == 6
    assert {t.user_attrs["metrics"]["score"] for t in complete} <= {r["score"] for r in ROWS}
    assert a.fidelity.objective == "replay"


def test_compare_prints_both_hypervolumes_and_fronts(setup):
    url, _ = setup
    r = cli("study", "compare", "a", "b", "--storage", url)
    assert r.exit_code == 0, r.output
    store = open_storage(url)
    c = compare_studies(load(store, "a"), load(store, "b"))
    assert "reference point: score 0, trainable_pct 100" in r.output
    for side in (c.a, c.b):
        assert f"{side.hypervolume:.4f}" in r.output
        for t, tr in zip(side.front, side.rows):
            assert f"{t.values[0]:.4f}" in r.output and tr.summary[:20] in r.output
    assert c.a.front and c.b.front and c.a.counts["COMPLETE"] == 6 and c.b.counts["COMPLETE"] == 8
    # The front holds exactly the non-dominated table rows a study reached; head only is always among them.
    assert "head only" in r.output


def test_an_explicit_reference_point_is_used_and_checked(setup):
    url, _ = setup
    r = cli("study", "compare", "a", "b", "--storage", url, "--reference", "0.5,10")
    assert r.exit_code == 0 and "reference point: score 0.5, trainable_pct 10" in r.output
    r = cli("study", "compare", "a", "b", "--storage", url, "--reference", "0.5")
    assert r.exit_code == 2 and "--reference" in r.output and "one per objective" in r.output


def test_a_missing_study_is_named(setup):
    url, _ = setup
    r = cli("study", "compare", "a", "nope", "--storage", url)
    assert r.exit_code == 2 and "'nope'" in r.output and "studies here" in r.output


def test_other_fidelities_and_objectives_are_refused_with_the_fix(setup, tmp_path):
    url, table = setup
    prepare_study("autopeft", Fidelity(objective="synthetic"), storage=url, study_name="syn")
    r = cli("study", "compare", "a", "syn", "--storage", url)
    assert r.exit_code == 2 and "'syn'" in r.output and "objective" in r.output and "fix:" in r.output
    space = tmp_path / "timed.yaml"
    space.write_text("name: timed\nplacement: shared\nmodules: {prefix: {sizes: [0, 8]}}\n"
                     "objectives: [score, step_time]\n")
    prepare_study(str(space), Fidelity(objective="replay", table=str(table)), storage=url, study_name="timed")
    r = cli("study", "compare", "a", "timed", "--storage", url)
    assert r.exit_code == 2 and "'timed'" in r.output and "step_time" in r.output and "same objectives" in r.output
