"""Warm starts: plans of a finished study mapped to another model by relative layer depth, queued first."""

import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from autopeft.errors import StudyError
from autopeft.proxy.fidelity import Fidelity
from autopeft.space import ModelDims, SearchSpace, load_space, parse_space
from autopeft.study.storage import open_storage
from autopeft.study.study import create_or_load
from autopeft.study.worker import run_worker
from autopeft.transfer import WARM_START_ATTR, map_params, prior_observations, source_layer, warm_start

from fakes import ArithmeticEvaluator

SMALL = ModelDims(num_layers=6, hidden_size=384)  # MiniLM's shape
DEEP = ModelDims(num_layers=12, hidden_size=768)  # a BERT-base-like model


def test_layers_map_by_relative_depth():
    assert [source_layer(j, 6, 12) for j in range(12)] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert [source_layer(j, 12, 6) for j in range(6)] == [0, 2, 4, 7, 9, 11]
    assert [source_layer(j, 6, 6) for j in range(6)] == list(range(6))


def test_a_plan_keeps_its_shape_on_a_deeper_wider_model():
    src, dst = SearchSpace(load_space("autopeft"), SMALL), SearchSpace(load_space("autopeft"), DEEP)
    params = {n: 0 for n in src.choices}
    params.update({f"layer.{i}": 1 for i in (3, 4, 5)})  # the top half of the model
    params["serial_adapter.size"] = src.choices["serial_adapter.size"].index(96)
    params["prefix.size"] = src.choices["prefix.size"].index(8)
    plan = dst.decode(map_params(src, dst, params))
    assert {i for i, _ in plan.modules()} == set(range(6, 12))  # the top half of the deeper model
    assert {(m.method, m.size) for _, m in plan.modules()} == {("serial_adapter", 96), ("prefix", 8)}


def test_a_size_the_destination_lacks_becomes_the_nearest():
    src = SearchSpace(parse_space("name: a\nplacement: all\nmodules: {lora: {sizes: [0, 6, 24], sites: [q]}}"), SMALL)
    dst = SearchSpace(parse_space("name: a\nplacement: all\nmodules: {lora: {sizes: [0, 4, 8, 16], sites: [q]}}"), SMALL)
    for size, expected in ((24, 16), (6, 8), (0, 0)):  # log scale: 6 is nearer 8 than 4
        params = {"lora.size": src.choices["lora.size"].index(size)}
        assert dst.choices["lora.size"][map_params(src, dst, params)["lora.size"]] == expected


def _study(db, name, dims, space="autopeft", n=0):
    st, _ = create_or_load(open_storage(f"sqlite:///{db}"), name, load_space(space), dims, Fidelity(),
                           sampler=optuna.samplers.RandomSampler(seed=0))
    if n:
        run_worker(st, ArithmeticEvaluator(), n_trials=n)
    return st


def test_warm_start_queues_the_best_plans_first_once(tmp_path):
    db = tmp_path / "s.db"
    src = _study(db, "src", SMALL, n=10)
    dst = _study(db, "dst", DEEP)
    queued = warm_start(dst, src, top=3)
    assert len(queued) == 3
    waiting = dst.trials((TrialState.WAITING,))
    assert waiting[0].user_attrs.get("anchor") == "head only"  # the anchor stays first
    seeded = {t.number: t.user_attrs[WARM_START_ATTR] for t in waiting if WARM_START_ATTR in t.user_attrs}
    assert [seeded[b]["trial"] for a, b in queued] == [a for a, b in queued]
    assert all(link["study"] == "src" for link in seeded.values())
    assert warm_start(dst, src, top=3) == []  # resuming with the same flags queues nothing twice
    run_worker(dst, ArithmeticEvaluator(), n_trials=4, self_propose=False)
    done = dst.trials((TrialState.COMPLETE,))
    assert {t.user_attrs.get(WARM_START_ATTR, {}).get("trial") for t in done} >= {a for a, _ in queued}


def test_warm_start_refuses_what_cannot_map(tmp_path):
    db = tmp_path / "s.db"
    src = _study(db, "src", SMALL, n=3)
    other = _study(db, "lora", SMALL, space="mola", n=0)
    with pytest.raises(StudyError, match="--warm-start: .*lacks"):
        warm_start(other, src)
    with pytest.raises(StudyError, match="is this study itself"):
        warm_start(src, src)
    with pytest.raises(StudyError, match="--warm-start-top: must be at least 1"):
        warm_start(_study(db, "dst", DEEP), src, top=0)
    with pytest.raises(StudyError, match="no COMPLETE feasible trial"):
        warm_start(_study(db, "dst2", DEEP), _study(db, "empty", SMALL))


def test_prior_observations_map_every_result_and_queue_nothing(tmp_path):
    db = tmp_path / "s.db"
    src = _study(db, "src", SMALL, n=6)
    dst = _study(db, "dst", DEEP)
    before = len(dst.trials())
    obs = prior_observations(dst, src)
    done = src.trials((TrialState.COMPLETE,))
    assert len(obs) == len(done) == 6 and len(dst.trials()) == before
    for (params, values), t in zip(obs, done):
        assert params == map_params(src.space, dst.space, t.params) and values == list(t.values)
        dst.space.decode(params)  # a plan of the deeper model
    with pytest.raises(StudyError, match="is this study itself"):
        prior_observations(src, src)


def test_cli_run_with_warm_start(tmp_path):
    db = tmp_path / "s.db"
    _study(db, "src", SMALL, n=6)
    out = subprocess.run([sys.executable, "-m", "autopeft", "run", "--workers", "0", "--objective", "synthetic",
                          "--study", "dst", "--storage", f"sqlite:///{db}", "--warm-start", "src",
                          "--warm-start-top", "2"], check=False, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "warm start: queued 2 plans of src" in out.stdout
