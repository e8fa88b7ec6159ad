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


@pytest.mark.parametrize("prior", sorted(plan_inputs.PRIORS))
def test_every_prior_learns_a_sparse_score(prior):
    """One input of ten drives the score: every prior's GP ranks unseen points by it."""
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(60, 10, generator=gen, dtype=torch.double)
    q = plan_inputs.rank_quality(x, x[:, 3] + 0.01 * torch.randn(60, generator=gen, dtype=torch.double), 30, 2, prior)
    assert q["rho"] > 0.8


def test_the_saas_priors_are_what_they_say():
    x, y = torch.rand(8, 5, dtype=torch.double), torch.rand(8, 1, dtype=torch.double)
    def priors(name):
        return {n.rsplit(".", 1)[-1]: type(p).__name__ for n, _, p, *_ in plan_inputs.gp(x, y, name).named_priors()}

    assert priors("default")["lengthscale_prior"] == "LogNormalPrior" and "tau_prior" not in priors("default")
    for prior in ("saas-rbf", "map-saas"):  # half-Cauchy shrinkage, global scale inferred, no log-normal length-scales
        got = priors(prior)
        assert got["inv_lengthscale_prior"] == got["tau_prior"] == "HalfCauchyPrior" and "lengthscale_prior" not in got
    with pytest.raises(ValueError, match="prior"):
        plan_inputs.gp(x, y, "nope")
