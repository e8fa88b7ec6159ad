"""Real studies for the dashboard tests, filled quickly by the fake evaluator (no training)."""

from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
import zlib

import optuna
import pytest

from autopeft.plan import PeftPlan
from autopeft.proxy.fidelity import Fidelity
from autopeft.space import ModelDims, parse_space
from autopeft.study.storage import open_storage
from autopeft.study.study import create_or_load
from autopeft.study.worker import run_worker

from fakes import ArithmeticEvaluator

DIMS = ModelDims(num_layers=6, hidden_size=384)
FID = Fidelity(steps=5, train_examples=64, eval_examples=32)

#: A small space with LoRA, adapters, prefix and LoRA experts (so every plan-view part has something to show).
SPACE = """
name: dash
placement: per_module
modules:
  lora: {sizes: [0, 4, 8], sites: [q, v], choose_sites: true}
  serial_adapter: {sizes: [0, 8, 64], sites: [ffn]}
  prefix: {sizes: [0, 4]}
  lora_experts: {sizes: [4], experts: [0, 2, 4], top_k: [1, 2], per_layer: true, sites: [q, v]}
objectives: [%s]
"""


HEAD_PARAMS = 770  # a classifier head always trains (MiniLM, 2 labels), so no trial has 0 % trainable


class NoisyEvaluator(ArithmeticEvaluator):
    """The arithmetic trade-off plus a deterministic per-plan wobble (so some trials are dominated), the task
    head's parameters, and a step time that falls with the number of modules (a third objective that
    conflicts with the other two)."""

    def run(self, plan: PeftPlan):
        m = super().run(plan)
        wobble = (zlib.crc32(plan.summary().encode()) % 1000) / 1000 - 0.5  # in [-0.5, 0.5)
        n_modules = sum(1 for _ in plan.modules())
        params = m.trainable_params + HEAD_PARAMS
        return dataclasses.replace(
            m, score=m.score + 0.05 * wobble, test_score=m.test_score + 0.05 * wobble, trainable_params=params,
            trainable_pct=100 * params / m.base_params, step_time=0.01 + 0.001 * (24 - n_modules) ** 2 / 24)


def _make_study(url: str, name: str, n_trials: int = 0, objectives=("score", "trainable_pct"), fail_every: int = 0,
               seed: int = 0):
    """A real study in ``url``: the head-only anchor plus random trials until ``n_trials`` are COMPLETE;
    with ``fail_every`` k, every k-th evaluation fails with a reason."""
    spec = parse_space(SPACE % ", ".join(objectives))
    st, _ = create_or_load(open_storage(url), name, spec, DIMS, FID, sampler=optuna.samplers.RandomSampler(seed=seed))
    if n_trials:
        calls = {"n": 0}

        def fails(plan):
            calls["n"] += 1
            return bool(fail_every) and calls["n"] % fail_every == 0

        run_worker(st, NoisyEvaluator(fail_when=fails), n_trials=n_trials, max_consecutive_failures=50)
    return st


def _sqlite_digest(path) -> tuple[str, list]:
    """(sha256 of the file, every trial row with its values and attributes): both must not change."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
        rows = con.execute(
            "select t.trial_id, t.number, t.state, t.datetime_complete, "
            "(select group_concat(key || '=' || value_json) from trial_user_attributes u where u.trial_id = t.trial_id), "
            "(select group_concat(objective || '=' || value) from trial_values v where v.trial_id = t.trial_id) "
            "from trials t order by t.trial_id").fetchall()
    return digest, rows


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"


@pytest.fixture
def make_study():
    """``make_study(url, name, n_trials=0, objectives=(...), fail_every=0, seed=0)`` -> AutopeftStudy."""
    return _make_study


@pytest.fixture
def sqlite_digest():
    """``sqlite_digest(path)`` -> (file sha256, trial rows with values and attributes)."""
    return _sqlite_digest
