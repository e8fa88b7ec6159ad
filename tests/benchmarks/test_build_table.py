"""benchmarks/build_table.py: the plan set is fixed by its seed, the file resumes, and what it writes replays."""

import json
import sys
from pathlib import Path

import pytest

from autopeft.plan import PeftPlan
from autopeft.proxy.fidelity import Fidelity
from autopeft.proxy.replay import ReplayEvaluator, plan_key
from autopeft.proxy.train import TrialFailed, TrialMetrics
from autopeft.space import ModelDims, SearchSpace, load_space
from autopeft.study.study import canonical_yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import build_table  # noqa: E402

DIMS = ModelDims(6, 384)  # the packaged MiniLM's shape


@pytest.fixture(scope="module")
def space():
    return SearchSpace(load_space("full"), DIMS)


def test_the_plan_set_is_seeded_distinct_and_prefix_stable(space):
    few, more = build_table.jobs(space, 5, seed=0), build_table.jobs(space, 12, seed=0)
    assert [j[0] for j in few] == [j[0] for j in more[:len(few)]]
    assert [j[3] for j in build_table.jobs(space, 5, seed=1)][7:] != [j[3] for j in few][7:]
    assert [j[3] for j in build_table.jobs(space, 5, seed=0)] == [j[3] for j in few]
    sampled = more[7:]
    assert len(sampled) == 12 and len({plan_key(PeftPlan.from_dict(j[3])) for j in sampled}) == 12
    for _, _, params, plan in sampled:  # the stored parameters decode to the plan, as a trial's would
        assert space.decode(dict(zip(space.choices, params))).to_dict() == plan


def test_the_baselines_are_in_the_space_where_it_can_express_them(space):
    baselines = build_table.baseline_plans(DIMS.num_layers)
    assert len(baselines) == 7 and baselines["head only"].is_empty
    mola = baselines["MoLA 2-4-6-8 r=8 q,v"]
    assert [layer[0].num_experts for layer in mola.layers] == [2, 2, 4, 6, 6, 8]
    by_name = {j[1]: j[2] for j in build_table.jobs(space, 0, seed=0)}
    assert by_name["MoLA 2-4-6-8 r=8 q,v"] is None  # 6 experts is not a choice of full.yaml
    assert all(params is not None for name, params in by_name.items() if not name.startswith("MoLA"))
    assert space.decode(dict(zip(space.choices, by_name["LoRA r=8 q,v"]))) == baselines["LoRA r=8 q,v"]


class FakeTrainer:
    """Scores by module count; fails plans with a prefix (a recorded failure)."""

    def run(self, plan):
        if any(m.method == "prefix" for _, m in plan.modules()):
            raise TrialFailed("loss became nan at step 3")
        n = sum(1 for _ in plan.modules())
        return TrialMetrics(score=0.5 + n / 1000, test_score=0.5, metric="accuracy", trainable_params=770 + n,
                            module_params=n, base_params=10_000, trainable_pct=(770 + n) / 100, step_time=0.1,
                            peak_memory=1.0, train_loss=0.3, wall_time=2.0)


def test_a_written_table_resumes_and_replays(space, tmp_path, monkeypatch):
    out = tmp_path / "table.jsonl"
    header = build_table.make_header(Fidelity(), canonical_yaml(space.spec), DIMS, 0, list(space.choices))
    out.write_text(json.dumps(header) + "\n")
    monkeypatch.setattr(build_table, "_TRAINER", FakeTrainer())
    todo = build_table.jobs(space, 3, seed=0)
    with out.open("a") as f:
        for job in todo[:5]:
            f.write(json.dumps(build_table._train(job)) + "\n")
    done = build_table.read_existing(out, header)
    assert done == {j[0] for j in todo[:5]}
    rows = [json.loads(line) for line in out.read_text().splitlines()[1:]]
    assert [r["state"] for r in rows] == ["COMPLETE"] * 4 + ["FAIL"]  # the fifth baseline is prefix 16
    assert all("plan" not in r for r in rows)  # parameters only: the space in the header decodes them
    ev = ReplayEvaluator(Fidelity(objective="replay", table=str(out)))
    plans = {j[0]: PeftPlan.from_dict(j[3]) for j in todo}
    assert ev.run(plans[rows[1]["id"]]).score == rows[1]["score"] and ev.last_match.exact
    with pytest.raises(TrialFailed, match="nan"):
        ev.run(plans[rows[4]["id"]])
    mola = build_table._train(todo[6])  # outside the space: the row keeps its plan
    assert mola["params"] is None and PeftPlan.from_dict(mola["plan"]) == plans[todo[6][0]]


def test_a_table_of_another_fidelity_seed_or_device_is_not_continued(space, tmp_path):
    out = tmp_path / "table.jsonl"
    header = build_table.make_header(Fidelity(), canonical_yaml(space.spec), DIMS, 0, list(space.choices))
    out.write_text(json.dumps(header) + "\n")
    with pytest.raises(SystemExit, match="plan_seed"):
        build_table.read_existing(out, {**header, "plan_seed": 1})
    with pytest.raises(SystemExit, match="fidelity"):
        build_table.read_existing(out, {**header, "fidelity": Fidelity(steps=300).model_dump()})
    # cost columns are the device's seconds: a GPU build never continues a CPU table, nor the other way round
    with pytest.raises(SystemExit, match="device"):
        build_table.read_existing(out, {**header, "device": "cuda: NVIDIA H200"})
    with pytest.raises(SystemExit, match="kernels"):
        build_table.read_existing(out, {**header, "kernels": "reference"})
    old = {k: v for k, v in header.items() if k not in ("device", "kernels")}  # a header from before these keys
    out.write_text(json.dumps(old) + "\n")
    assert build_table.read_existing(out, header) == set()
    with pytest.raises(SystemExit, match="device"):
        build_table.read_existing(out, {**header, "device": "cuda: NVIDIA H200"})
