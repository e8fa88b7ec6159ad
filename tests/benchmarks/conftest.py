"""Fixtures of the benchmark scripts' tests: small hand-made replay tables of full.yaml, two on MiniLM and one
on its lower four blocks."""

import json
import random
from pathlib import Path

import pytest

from autopeft.proxy.fidelity import Fidelity
from autopeft.proxy.models import load_config, model_dims
from autopeft.proxy.synthetic import SyntheticEvaluator
from autopeft.space import SearchSpace, load_space
from autopeft.study.study import canonical_yaml


def make_table(path: Path, task: str, seed: int, n: int = 14, model: str = "minilm") -> Path:
    """``n`` seeded plans of full.yaml on ``model``, scored by the synthetic objective (exact parameter counts)."""
    dims = model_dims(load_config(model))
    space = SearchSpace(load_space("full"), dims)
    evaluator = SyntheticEvaluator(Fidelity(model=model, objective="synthetic"))
    header = {"kind": "header", "format": 1, "fidelity": Fidelity(model=model, task=task).model_dump(),
              "space_yaml": canonical_yaml(space.spec), "param_names": list(space.choices),
              "dims": {"num_layers": dims.num_layers, "hidden_size": dims.hidden_size, "sites": list(dims.sites)}}
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


@pytest.fixture(scope="session")
def shallow_table(tmp_path_factory):
    """A table of the movie-review task on MiniLM's lower four blocks (the synthetic objective reads only the
    model's config, so the folder holds just that)."""
    tmp = tmp_path_factory.mktemp("shallow")
    config = load_config("minilm")
    config.num_hidden_layers = 4
    config.save_pretrained(tmp / "minilm-l4")
    return make_table(tmp / "l4.jsonl", "rotten_tomatoes", 3, model=str(tmp / "minilm-l4"))
