from autopeft.plan import PeftPlan
from autopeft.proxy.fidelity import Fidelity
from autopeft.proxy.synthetic import SyntheticEvaluator, make_evaluator
from autopeft.space import ModelDims, SearchSpace, load_space

import random


def test_synthetic_objective_is_deterministic_and_rises_with_size():
    fid = Fidelity(objective="synthetic")
    ev = make_evaluator(fid)
    assert isinstance(ev, SyntheticEvaluator)
    space = SearchSpace(load_space("autopeft"), ModelDims(6, 384))
    plans = [space.decode(space.sample(random.Random(i))) for i in range(20)]
    first = [ev.run(p) for p in plans]
    assert [m.score for m in first] == [ev.run(p).score for p in plans]
    assert all(m.metric == "synthetic" for m in first)
    empty = ev.run(PeftPlan(6))
    assert empty.trainable_params == 0
    big = max(first, key=lambda m: m.trainable_params)
    assert big.score > empty.score + 0.2


def test_synthetic_is_part_of_the_fidelity():
    assert Fidelity(objective="synthetic").model_dump() != Fidelity().model_dump()
    assert "synthetic objective" in Fidelity(objective="synthetic", trial_seconds=2).describe()
