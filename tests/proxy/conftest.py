"""Fixtures of the trainer tests that train several plans: a toy task and tiny BERT and LLaMA classifiers."""

import pytest
from tiny_proxy import save_tiny, write_toy_task


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return write_toy_task(tmp_path_factory.mktemp("task") / "toy.csv", n=160)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(kind, dropout) -> a saved tiny classifier, for kind bert or llama and dropout 0.0 or 0.1."""
    root = tmp_path_factory.mktemp("models")
    return {(kind, p): save_tiny(kind, root / f"{kind}-{p}", dropout=p) for kind in ("bert", "llama") for p in (0.0, 0.1)}
