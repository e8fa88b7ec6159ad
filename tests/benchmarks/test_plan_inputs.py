"""benchmarks/plan_inputs.py: the encodings it compares, its ranking measure and its over-budget count."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import plan_inputs  # noqa: E402


def test_encodings_are_the_parameters_the_slots_and_both(tables):
    source, _ = tables
    scores, encoded = plan_inputs.encodings(str(source))
    assert len(scores) == 14
    params, slots, both = encoded["parameters"], encoded["slots"], encoded["slots + parameters"]
    assert params.shape == (14, 74) and slots.shape == (14, 144 + 4)
    assert torch.equal(both, torch.cat([slots, params], -1))


def test_rank_quality_sees_a_learnable_score_and_not_noise():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(60, 3, generator=gen, dtype=torch.double)
    learnable = plan_inputs.rank_quality(x, x[:, 0] + 0.01 * torch.randn(60, generator=gen, dtype=torch.double), 30, 2)
    noise = plan_inputs.rank_quality(x, torch.randn(60, generator=gen, dtype=torch.double), 30, 2)
    assert learnable["rho"] > 0.9 and abs(noise["rho"]) < 0.5
    assert learnable["top10"] > learnable["random"]


@pytest.mark.parametrize("slots", [True, False])
def test_over_budget_counts_model_proposals_only(slots):
    # every plan but the head-only anchor (never proposed twice) is over a budget of 1e-6 %; none is over 100 %
    assert plan_inputs.over_budget(0, slots=slots, budget=1e-6, startup=8, proposals=2) == 2
    assert plan_inputs.over_budget(0, slots=slots, budget=100.0, startup=8, proposals=2) == 0
