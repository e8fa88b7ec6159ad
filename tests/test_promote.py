"""Promotion across fidelities (successive halving): which trials, where they go, and the agreement report.

Both studies are filled by the arithmetic stand-in: what is tested is the selection, the queue and the links.
"""

import math
import subprocess
import sys

import optuna
import pytest
import torch
from fakes import ArithmeticEvaluator
from optuna.trial import TrialState

from autopeft.errors import StudyError
from autopeft.promote import fidelity_agreement, front_ranks, promote, promotion_order
from autopeft.proxy.fidelity import Fidelity
from autopeft.proxy.models import load_config, model_dims
from autopeft.retrain import SOURCE_ATTR
from autopeft.space import load_space
from autopeft.study.storage import open_storage
from autopeft.study.study import create_or_load
from autopeft.study.worker import run_worker


def test_front_ranks_peel_fronts():
    values = torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, 2.0], [0.5, 0.5], [0.0, 0.0], [0.5, 0.5]])
    assert front_ranks(values) == [0, 0, 0, 1, 2, 1]


class Distinct(ArithmeticEvaluator):
    """The stand-in, with a score that also depends on where the modules sit (few ties); ``reverse`` scores in
    the opposite order: a higher fidelity that disagrees with the cheap one."""

    def __init__(self, reverse=False):
        super().__init__()
        self.reverse = reverse

    def run(self, plan):
        m = super().run(plan)
        score = m.score + 1e-3 * sum((i + 1) * (1 if spec.site == "q" else 7) for i, spec in plan.modules())
        return type(m)(**{**m.to_dict(), "score": 2 - score if self.reverse else score})


def _source(db, n):
    """A study of the `autopeft` preset on MiniLM's shape (many distinct plans), filled by :class:`Distinct`."""
    src, _ = create_or_load(open_storage(f"sqlite:///{db}"), "s", load_space("autopeft"),
                            model_dims(load_config("minilm")), Fidelity(), sampler=optuna.samplers.RandomSampler(seed=0))
    run_worker(src, Distinct(), n_trials=n)
    return src


def _drain(companion, evaluator):
    run_worker(companion, evaluator, self_propose=False, idle_timeout=0)


def test_promote_queues_the_best_trials_once_and_reports_agreement(tmp_path):
    db = tmp_path / "s.db"
    src = _source(db, 8)
    order = promotion_order(src)
    assert len(order) == 8 and order[0].values[0] == max(t.values[0] for t in order)  # the front comes first
    storage = open_storage(f"sqlite:///{db}")

    first = promote(storage, "s", "quick", top=3)
    comp = first.companion
    assert comp.name == "s@quick" and first.created and first.candidates == 8
    assert [s for s, _ in first.queued] == [t.number for t in order[:3]]
    waiting = {t.number: t for t in comp.trials((TrialState.WAITING,))}
    assert sorted(waiting) == sorted(c for _, c in first.queued)  # no head-only anchor in a companion
    for s, c in first.queued:
        assert waiting[c].user_attrs[SOURCE_ATTR] == {"study": "s", "trial": s}
    assert comp.fidelity.steps != src.fidelity.steps  # trained at the preset's budget

    again = promote(storage, "s", "quick", top=3)
    assert again.queued == [] and not again.created  # already queued: never twice
    more = promote(storage, "s", "quick", top=4)
    assert [s for s, _ in more.queued] == [order[3].number]

    _drain(comp, Distinct())
    done = comp.trials((TrialState.COMPLETE,))
    assert len(done) == 4
    for t in done:  # the same plan as its source trial
        assert t.params == src.study.trials[t.user_attrs[SOURCE_ATTR]["trial"]].params
    agreement = fidelity_agreement(src, comp)
    assert len(agreement.pairs) == 4 and agreement.tau == pytest.approx(1.0)


def test_agreement_sees_a_fidelity_that_reverses_the_order(tmp_path):
    db = tmp_path / "s.db"
    src = _source(db, 6)
    result = promote(open_storage(f"sqlite:///{db}"), "s", "quick", fraction=0.5)
    assert len(result.queued) == math.ceil(0.5 * 6)
    _drain(result.companion, Distinct(reverse=True))
    assert fidelity_agreement(src, result.companion).tau == pytest.approx(-1.0)


def test_bad_promotions_are_refused_and_write_nothing(tmp_path):
    db = tmp_path / "s.db"
    _source(db, 2)
    storage = open_storage(f"sqlite:///{db}")
    with pytest.raises(StudyError, match="--top/--fraction: give exactly one"):
        promote(storage, "s", top=2, fraction=0.5)
    with pytest.raises(StudyError, match=r"--fraction: must be in \(0, 1\] \(got 1.5\)"):
        promote(storage, "s", fraction=1.5)
    with pytest.raises(StudyError, match="--fidelity: 'huge' is not a fidelity preset"):
        promote(storage, "s", "huge", top=1)
    assert "s@huge" not in [s.study_name for s in storage.get_all_studies()]
    assert len(storage.get_all_studies()) == 1


def test_cli_promote(tmp_path):
    db = tmp_path / "s.db"
    _source(db, 4)
    out = subprocess.run([sys.executable, "-m", "autopeft", "promote", "s", "--to", "quick", "--top", "2",
                          "--storage", f"sqlite:///{db}"], check=False, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "queued 2 of 4 completed trials of s in s@quick" in out.stdout
    assert "autopeft worker --study s@quick" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "autopeft", "promote", "s", "--storage", f"sqlite:///{db}"],
                         check=False, capture_output=True, text=True)
    assert bad.returncode != 0 and "--top/--fraction: give exactly one" in bad.stderr + bad.stdout
