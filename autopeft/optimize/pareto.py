"""Pareto fronts and hypervolume of a study's completed trials."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from botorch.utils.multi_objective.hypervolume import Hypervolume
from botorch.utils.multi_objective.pareto import is_non_dominated
from optuna.trial import FrozenTrial, TrialState

CONSTRAINTS_KEY = "constraints"


def is_feasible(trial: FrozenTrial) -> bool:
    """All of a trial's constraint values are <= 0 (trials without constraints are feasible)."""
    values = [v for k, v in trial.system_attrs.items() if k.startswith(CONSTRAINTS_KEY)]
    flat = [x for v in values for x in (v if isinstance(v, (list, tuple)) else [v])]
    return all(x <= 0 for x in flat)


def _as_maximisation(trials: Sequence[FrozenTrial], directions: Sequence[str]) -> torch.Tensor:
    sign = torch.tensor([1.0 if d == "maximize" else -1.0 for d in directions], dtype=torch.double)
    values = torch.tensor([t.values for t in trials], dtype=torch.double).reshape(len(trials), len(directions))
    return values * sign  # (N, M), larger is better in every column


def pareto_front(trials: Sequence[FrozenTrial], directions: Sequence[str], feasible_only: bool = True) -> list[FrozenTrial]:
    """Non-dominated COMPLETE trials (feasible ones only, by default), sorted by the first objective."""
    pool = [t for t in trials if t.state == TrialState.COMPLETE and (not feasible_only or is_feasible(t))]
    if not pool:
        return []
    mask = is_non_dominated(_as_maximisation(pool, directions), deduplicate=True)
    front = [t for t, keep in zip(pool, mask.tolist()) if keep]
    first_sign = -1 if directions[0] == "maximize" else 1
    return sorted(front, key=lambda t: first_sign * t.values[0])


@dataclass(frozen=True)
class ReferencePoint:
    """Hypervolume reference point in the objectives' own units and directions."""

    values: tuple[float, ...]


def default_reference_point(directions: Sequence[str], objectives: Sequence[str]) -> ReferencePoint:
    """Score 0, 100 % trainable parameters; for step time and memory, no default (pass one)."""
    defaults = {"score": 0.0, "trainable_pct": 100.0}
    missing = [o for o in objectives if o not in defaults]
    if missing:
        raise ValueError(f"reference point: no default for objective {missing[0]!r}; pass one explicitly")
    return ReferencePoint(tuple(defaults[o] for o in objectives))


def hypervolume(trials: Sequence[FrozenTrial], directions: Sequence[str], ref: ReferencePoint) -> float:
    """Hypervolume dominated by the feasible Pareto front, relative to ``ref``."""
    front = pareto_front(trials, directions)
    if not front:
        return 0.0
    sign = torch.tensor([1.0 if d == "maximize" else -1.0 for d in directions], dtype=torch.double)
    ref_max = torch.tensor(ref.values, dtype=torch.double) * sign
    return float(Hypervolume(ref_max).compute(_as_maximisation(front, directions)))
