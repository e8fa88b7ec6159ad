"""Read-only views of a study: trial rows, the Pareto front, and trial selection for export.

The CLI, the dashboard and export all read studies through these functions.
"""

from __future__ import annotations

from dataclasses import dataclass

from optuna.trial import FrozenTrial, TrialState

from autopeft.errors import StudyError
from autopeft.optimize.pareto import is_feasible, pareto_front
from autopeft.study.study import AutopeftStudy
from autopeft.study.worker import FAIL_REASON


@dataclass(frozen=True)
class TrialRow:
    number: int
    state: str
    score: float | None
    test_score: float | None
    trainable_pct: float | None
    trainable_params: int | None
    step_time: float | None
    peak_memory: float | None
    feasible: bool
    summary: str
    fail_reason: str | None


def trial_row(trial: FrozenTrial) -> TrialRow:
    m = trial.user_attrs.get("metrics") or {}
    return TrialRow(
        number=trial.number,
        state=trial.state.name,
        score=m.get("score"),
        test_score=m.get("test_score"),
        trainable_pct=m.get("trainable_pct"),
        trainable_params=m.get("trainable_params"),
        step_time=m.get("step_time"),
        peak_memory=m.get("peak_memory"),
        feasible=is_feasible(trial),
        summary=trial.user_attrs.get("plan_summary", ""),
        fail_reason=trial.user_attrs.get(FAIL_REASON),
    )


def pareto_rows(study: AutopeftStudy) -> list[TrialRow]:
    """The feasible Pareto front, best score first."""
    front = pareto_front(study.trials(), study.space.directions)
    return [trial_row(t) for t in front]


def state_counts(study: AutopeftStudy, trials: list[FrozenTrial] | None = None) -> dict[str, int]:
    """Trials per state name (the four queue states always present); ``trials`` when already read."""
    counts = {s.name: 0 for s in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL)}
    for t in study.trials() if trials is None else trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def parse_budget(text: str) -> float:
    """``'1%'`` or ``'1'`` -> 1.0 (percent of the base model's parameters)."""
    raw = text.strip().removesuffix("%")
    try:
        value = float(raw)
    except ValueError:
        raise StudyError(f"--max-params: {text!r} is not a percentage; write e.g. 1% or 0.5") from None
    if not 0 < value <= 100:
        raise StudyError(f"--max-params: {text!r} must lie in (0, 100]%")
    return value


def select_trial(study: AutopeftStudy, *, trial: int | None = None, max_params_pct: float | None = None) -> FrozenTrial:
    """Trial by number, or the best-scoring COMPLETE trial whose trainable % is within the budget."""
    if trial is not None:
        matches = [t for t in study.trials() if t.number == trial]
        if not matches:
            raise StudyError(f"--trial: study {study.name!r} has no trial {trial}")
        if matches[0].state != TrialState.COMPLETE:
            raise StudyError(f"--trial: trial {trial} is {matches[0].state.name}, not COMPLETE; pick a finished one")
        return matches[0]
    complete = [t for t in study.trials((TrialState.COMPLETE,)) if "metrics" in t.user_attrs]
    if max_params_pct is not None:
        complete = [t for t in complete if t.user_attrs["metrics"]["trainable_pct"] <= max_params_pct]
    if not complete:
        within = f" within {max_params_pct}% trainable parameters" if max_params_pct is not None else ""
        raise StudyError(f"--max-params: study {study.name!r} has no completed trial{within}; raise the budget or run more trials")
    # Best score; among equal scores, fewer trainable parameters.
    return max(complete, key=lambda t: (t.user_attrs["metrics"]["score"], -t.user_attrs["metrics"]["trainable_pct"]))
