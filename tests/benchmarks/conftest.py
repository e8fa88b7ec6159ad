"""Fixtures of the benchmark scripts' tests: two small hand-made replay tables of full.yaml on MiniLM's shape."""

import json
import random
from pathlib import Path

import pytest

from autopeft.proxy.fidelity import Fidelity
from autopeft.proxy.synthetic import SyntheticEvaluator
from autopeft.space import ModelDims, SearchSpace, load_space
from autopeft.study.study import canonical_yaml

DIMS = ModelDims(6, 384)  # the packaged MiniLM's shape


def make_table(path: Path, task: str, seed: int, n: int = 14) -> Path:
    """``n`` seeded plans of full.yaml, scored by the synthetic objective (exact parameter counts)."""
    space = SearchSpace(load_space("full"), DIMS)
    evaluator = SyntheticEvaluator(Fidelity(objective="synthetic"))
    header = {"kind": "header", "format": 1, "fidelity": Fidelity(task=task).model_dump(),
              "space_yaml": canonical_yaml(space.spec), "param_names": list(space.choices),
              "dims": {"num_layers": DIMS.num_layers, "hidden_size": DIMS.hidden_size, "sites": list(DIMS.sites)}}
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        params = space.sample(rng)
        metrics = evaluator.run(space.decode(params)).to_dict()
        rows.append({"id": f"p{i}", "params": [params[k] for k in space.choices], "state": "COMPLETE", **metrics})
    path.write_text("\n".join(json.dumps(r) for r in [header, *rows]) + "\n")
    return path


@pytest.fixture(scope="session")
def tables(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tables")
    return make_table(tmp / "source.jsonl", "rotten_tomatoes", 1), make_table(tmp / "target.jsonl", "bbc_news", 2)
