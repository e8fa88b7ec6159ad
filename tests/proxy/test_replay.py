import json
import random

import pytest

from autopeft.errors import StudyError
from autopeft.plan import ModuleSpec, PeftPlan
from autopeft.proxy.fidelity import Fidelity
from autopeft.proxy.replay import ReplayEvaluator, ReplayTable, load_table, module_distance, plan_distance
from autopeft.proxy.synthetic import make_evaluator
from autopeft.proxy.train import TrialFailed
from autopeft.space import ModelDims, SearchSpace, load_space

L = 6  # the packaged MiniLM's layers


def every_layer(*modules, layers=range(L)):
    return PeftPlan.from_modules(L, {i: modules for i in layers})


def metrics(score, params, wall=10.0):
    return {"score": score, "test_score": score - 0.01, "metric": "accuracy", "trainable_params": params,
            "module_params": max(0, params - 770), "base_params": 22_713_986, "trainable_pct": 100 * params / 22_713_986,
            "step_time": 0.2, "peak_memory": 50.0, "train_loss": 0.5, "wall_time": wall}


PARALLEL_12 = every_layer(ModuleSpec("parallel_adapter", "ffn", 12))
PREFIX_8 = every_layer(ModuleSpec("prefix", "attn", 8))
SERIAL_48 = every_layer(ModuleSpec("serial_adapter", "ffn", 48))


def write_table(path, fidelity=None, extra_rows=()):
    """A hand-made table of four plans on the MiniLM shape (one recorded as failed)."""
    header = {"kind": "header", "format": 1, "fidelity": (fidelity or Fidelity()).model_dump()}
    rows = [
        {"id": "t0", "plan": PeftPlan(L).to_dict(), "state": "COMPLETE", **metrics(0.57, 770)},
        {"id": "t1", "plan": PARALLEL_12.to_dict(), "state": "COMPLETE", **metrics(0.75, 60_000)},
        {"id": "t2", "plan": PREFIX_8.to_dict(), "state": "COMPLETE", **metrics(0.70, 40_000)},
        {"id": "t3", "plan": SERIAL_48.to_dict(), "state": "FAIL", "reason": "TrialFailed: loss became nan"},
        *extra_rows,
    ]
    path.write_text("\n".join(json.dumps(r) for r in [header, *rows]) + "\n")
    return path


@pytest.fixture
def table(tmp_path):
    return write_table(tmp_path / "table.jsonl")


def replay(path, **fields):
    return Fidelity(objective="replay", table=str(path), **fields)


def test_plan_distance_counts_slots_and_log_sizes():
    assert plan_distance(PARALLEL_12, PARALLEL_12) == 0
    one_less = every_layer(ModuleSpec("parallel_adapter", "ffn", 12), layers=range(L - 1))
    assert plan_distance(PARALLEL_12, one_less) == plan_distance(one_less, PARALLEL_12) == 1
    assert plan_distance(PARALLEL_12, PeftPlan(L)) == L
    a, b = ModuleSpec("lora", "q", 7), ModuleSpec("lora", "q", 15)  # log2(8) -> log2(16): one doubling
    assert module_distance(a, b) == pytest.approx(0.25)
    assert module_distance(a, ModuleSpec("lora", "q", 7, variant="dora")) == pytest.approx(0.25)
    assert module_distance(ModuleSpec("lora", "q", 1), ModuleSpec("lora", "q", 1023)) == 1  # capped


def test_exact_lookup_returns_the_recorded_metrics(table):
    ev = make_evaluator(replay(table))
    assert isinstance(ev, ReplayEvaluator)
    m = ev.run(every_layer(ModuleSpec("parallel_adapter", "ffn", 12)))
    assert (m.score, m.trainable_params, m.wall_time) == (0.75, 60_000, 10.0)
    assert ev.last_match.row_id == "t1" and ev.last_match.exact
    assert ev.run(PeftPlan(L)).score == 0.57 and ev.last_match.row_id == "t0"


def test_unrecorded_plans_get_the_nearest_recorded_plan(table):
    ev = ReplayEvaluator(replay(table))
    near = every_layer(ModuleSpec("parallel_adapter", "ffn", 12), layers=range(L - 1))
    assert ev.run(near).score == 0.75
    assert ev.last_match.row_id == "t1" and ev.last_match.distance == 1 and not ev.last_match.exact
    bigger = every_layer(ModuleSpec("parallel_adapter", "ffn", 24))  # six modules, each one doubling off
    assert ev.run(bigger).score == 0.75 and ev.last_match.distance < 2
    prefix_4 = every_layer(ModuleSpec("prefix", "attn", 4), layers=range(L - 1))  # 1.8 from t2, 5 from t0
    assert ev.run(prefix_4).score == 0.70 and ev.last_match.row_id == "t2"


def test_distinct_replay_answers_each_recorded_plan_once_except_exact_matches(table):
    ev = ReplayEvaluator(replay(table), distinct=True)
    near = every_layer(ModuleSpec("parallel_adapter", "ffn", 12), layers=range(L - 1))
    assert ev.run(near).score == 0.75 and ev.last_match.row_id == "t1"
    # the same neighbourhood again: t1 is taken, so the next nearest recorded plan answers
    again = every_layer(ModuleSpec("parallel_adapter", "ffn", 12), layers=range(L - 2))
    assert ev.last_match.index == 1
    ev.run(again)
    assert ev.last_match.row_id != "t1" and ev.last_match.distance > 0
    # a recorded plan is always answered by its own row, taken or not
    assert ev.run(PARALLEL_12).score == 0.75 and ev.last_match.row_id == "t1" and ev.last_match.exact
    # with every row taken, the nearest of all answers
    for plan in (PeftPlan(L), PREFIX_8):
        ev.run(plan)
    with pytest.raises(TrialFailed):  # t3 (recorded as failed) was the only row left
        ev.run(every_layer(ModuleSpec("serial_adapter", "ffn", 24)))
    assert ev.run(near).score == 0.75 and ev.last_match.row_id == "t1"
    plain = ReplayEvaluator(replay(table))  # without distinct, the nearest row answers every time
    assert [plain.run(p).score for p in (near, again)] == [0.75, 0.75]


def test_a_recorded_failure_replays_as_a_failure(table):
    ev = ReplayEvaluator(replay(table))
    with pytest.raises(TrialFailed, match="t3.*nan"):
        ev.run(every_layer(ModuleSpec("serial_adapter", "ffn", 48)))


def test_every_sampled_plan_is_answered_by_a_table_row(table):
    ev = ReplayEvaluator(replay(table))
    space = SearchSpace(load_space("autopeft"), ModelDims(L, 384))
    rng = random.Random(0)
    ids = set()
    for _ in range(30):
        try:
            ev.run(space.decode(space.sample(rng)))
        except TrialFailed:
            pass
        ids.add(ev.last_match.row_id)
    assert ids <= {"t0", "t1", "t2", "t3"} and len(ids) >= 2


def test_the_table_is_part_of_the_fidelity(table, tmp_path):
    assert replay(table).model_dump() != Fidelity().model_dump()
    assert replay(table).model_dump() != replay(tmp_path / "other.jsonl").model_dump()
    assert str(table) in replay(table).describe()
    with pytest.raises(StudyError, match="--table.*needs a table"):
        Fidelity.build({"objective": "replay"})
    with pytest.raises(StudyError, match="--table.*replay objective only"):
        Fidelity.build({"table": str(table)})


def test_a_table_of_another_fidelity_is_refused(tmp_path):
    path = write_table(tmp_path / "t.jsonl", fidelity=Fidelity(steps=300))
    with pytest.raises(StudyError, match="--steps.*steps=300"):
        ReplayEvaluator(replay(path))
    assert ReplayEvaluator(replay(path, steps=300)).run(PeftPlan(L)).score == 0.57


def test_bad_tables_are_refused_with_the_fix(tmp_path):
    with pytest.raises(StudyError, match="--table.*not a file.*build_table"):
        ReplayTable.load(tmp_path / "missing.jsonl")
    junk = tmp_path / "junk.jsonl"
    junk.write_text('{"id": "x"}\n')
    with pytest.raises(StudyError, match="--table.*not a replay table"):
        ReplayTable.load(junk)
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"kind": "header", "fidelity": Fidelity().model_dump()}) + "\n")
    with pytest.raises(StudyError, match="no plan yet"):
        ReplayTable.load(empty)


def test_a_line_cut_short_by_a_killed_build_is_skipped(table):
    with table.open("a") as f:
        f.write('{"id": "t4", "plan": {"num_la')
    assert [r["id"] for r in load_table(table).rows] == ["t0", "t1", "t2", "t3"]
