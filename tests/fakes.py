"""A deterministic stand-in for proxy training, for tests of the queue, storage and analysis layers."""

from __future__ import annotations

import math

from autopeft.plan import PeftPlan
from autopeft.proxy.train import TrialMetrics

BASE_PARAMS = 1_000_000


def plan_size(plan: PeftPlan) -> int:
    return sum(max(m.size, 1) * max(m.num_experts, 1) * 100 for _, m in plan.modules())


class ArithmeticEvaluator:
    """Score rises with the log of the plan's size: a smooth trade-off with a known front."""

    def __init__(self, fail_when=None):
        self.fail_when = fail_when
        self.plans: list[PeftPlan] = []

    def run(self, plan: PeftPlan) -> TrialMetrics:
        self.plans.append(plan)
        if self.fail_when is not None and self.fail_when(plan):
            raise RuntimeError("synthetic failure for this plan")
        n = plan_size(plan)
        score = 0.5 + 0.4 * (1 - math.exp(-math.log1p(n) / 6))
        return TrialMetrics(
            score=score, test_score=score, metric="accuracy", trainable_params=n, module_params=n,
            base_params=BASE_PARAMS, trainable_pct=100 * n / BASE_PARAMS, step_time=0.01, peak_memory=1.0,
            train_loss=0.1, wall_time=0.01,
        )
