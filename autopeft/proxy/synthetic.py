"""The synthetic objective: a closed-form stand-in for proxy training (``--objective synthetic``).

It scores a plan in microseconds (after an optional ``--trial-seconds`` wait), so the queue, workers,
storage and dashboard can be exercised at scale without training anything: CI's concurrency tests and
``benchmarks/queue_overhead.py`` use it, and users can dry-run a cluster set-up with it. Its numbers are
labelled ``metric: synthetic`` and are not model quality. Being part of the fidelity, a synthetic study
never mixes with a real one.

The score saturates with the log of the plan's trainable parameters (as proxy scores do), with a small
deterministic per-plan offset so equal-sized plans differ; parameter counts are the exact analytic
counts for the fidelity's model shape.
"""

from __future__ import annotations

import hashlib
import math
import time

from autopeft.plan import PeftPlan
from autopeft.proxy.fidelity import Fidelity
from autopeft.proxy.train import TrialMetrics


class SyntheticEvaluator:
    def __init__(self, fidelity: Fidelity):
        from autopeft.proxy.models import load_config

        self.fidelity = fidelity
        self.config = load_config(fidelity.model)
        h, n_layers = self.config.hidden_size, self.config.num_hidden_layers
        ffn = getattr(self.config, "intermediate_size", 4 * h)
        # Attention (4 h^2) and feed-forward (2 h ffn) weights per layer: the base model's bulk.
        self.base_params = n_layers * (4 * h * h + 2 * h * ffn)

    def run(self, plan: PeftPlan) -> TrialMetrics:
        from autopeft.peft.params import plan_parameter_count

        started = time.monotonic()
        if self.fidelity.trial_seconds:
            time.sleep(self.fidelity.trial_seconds)  # a signal (SIGTERM, Ctrl-C) interrupts it
        n = plan_parameter_count(plan, self.config)
        digest = hashlib.sha256(repr(plan.to_dict()).encode()).digest()
        offset = (int.from_bytes(digest[:4], "big") / 2**32 - 0.5) * 0.02
        score = 0.5 + 0.4 * (1 - math.exp(-math.log1p(n) / 6)) + offset
        return TrialMetrics(
            score=score, test_score=score, metric="synthetic", trainable_params=n, module_params=n,
            base_params=self.base_params, trainable_pct=100 * n / self.base_params, step_time=0.0,
            peak_memory=0.0, train_loss=0.0, wall_time=time.monotonic() - started,
        )


def make_evaluator(fidelity: Fidelity, device: str = "cpu"):
    """The evaluator a worker uses for ``fidelity``: proxy training, the synthetic or the replay objective."""
    if fidelity.objective == "synthetic":
        return SyntheticEvaluator(fidelity)
    if fidelity.objective == "replay":
        from autopeft.proxy.replay import ReplayEvaluator

        return ReplayEvaluator(fidelity)
    from autopeft.proxy.train import ProxyTrainer

    return ProxyTrainer(fidelity, device)
