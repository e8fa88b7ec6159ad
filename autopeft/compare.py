"""Compare two studies: hypervolume against one reference point, trial counts, and both Pareto fronts.

``autopeft study compare A B`` prints this. Two studies are comparable when they optimise the same
objectives at the same fidelity (the spaces may differ: comparing spaces is one use); anything else is
refused with the setting that differs, since their numbers would not measure the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from optuna.trial import FrozenTrial

from autopeft.analysis import TrialRow, state_counts, trial_row
from autopeft.errors import StudyError
from autopeft.optimize.pareto import ReferencePoint, default_reference_point, hypervolume, pareto_front
from autopeft.study.study import AutopeftStudy

#: Fidelity fields that change how long a trial takes, not what it measures.
TIMING_FIELDS = ("trial_seconds",)


@dataclass(frozen=True)
class StudySide:
    """One study's half of a comparison."""

    name: str
    space: str
    counts: dict[str, int]
    hypervolume: float
    front: list[FrozenTrial]  # feasible Pareto front, sorted by the first objective (best first)

    @property
    def rows(self) -> list[TrialRow]:
        return [trial_row(t) for t in self.front]


@dataclass(frozen=True)
class Comparison:
    a: StudySide
    b: StudySide
    objectives: list[str]
    directions: list[str]
    reference: ReferencePoint
    fidelity: str  # the shared fidelity, described


def check_comparable(a: AutopeftStudy, b: AutopeftStudy) -> None:
    """Refuse studies of different objectives or fidelities, naming the study, the difference and the fix."""
    if a.objectives != b.objectives:
        raise StudyError(
            f"study {b.name!r} optimises {', '.join(b.objectives)} but {a.name!r} optimises "
            f"{', '.join(a.objectives)}; compare studies whose spaces list the same objectives")
    fa = {k: v for k, v in a.fidelity.model_dump().items() if k not in TIMING_FIELDS}
    fb = {k: v for k, v in b.fidelity.model_dump().items() if k not in TIMING_FIELDS}
    diffs = [f"{k}: {a.name!r} has {fa[k]!r}, {b.name!r} has {fb[k]!r}" for k in fa if fa[k] != fb[k]]
    if diffs:
        raise StudyError(
            f"study {b.name!r} was run at another fidelity than {a.name!r}, so their scores do not compare:\n  "
            + "\n  ".join(diffs)
            + f"\nfix: compare studies run with the same fidelity flags, or retrain one study's front at the "
            f"other's fidelity (autopeft retrain {b.name} --trial N) and compare the companion studies")


def parse_reference(text: str, objectives: Sequence[str]) -> ReferencePoint:
    """``'0,100'`` -> a reference point with one value per objective, in the objectives' own units."""
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise StudyError(f"--reference: {text!r} is not a comma list of numbers; write e.g. 0,100") from None
    if len(values) != len(objectives):
        raise StudyError(f"--reference: {text!r} gives {len(values)} value(s), the studies have "
                         f"{len(objectives)} objectives ({', '.join(objectives)}); give one per objective")
    return ReferencePoint(values)


def _side(study: AutopeftStudy, ref: ReferencePoint) -> StudySide:
    trials = study.trials()
    directions = study.space.directions
    return StudySide(study.name, study.space.spec.name, state_counts(study, trials),
                     hypervolume(trials, directions, ref), pareto_front(trials, directions))


def compare_studies(a: AutopeftStudy, b: AutopeftStudy, reference: ReferencePoint | None = None) -> Comparison:
    """Both studies' hypervolume (one reference point: ``reference``, else the objectives' default) and fronts."""
    check_comparable(a, b)
    directions = a.space.directions
    if reference is None:
        try:
            reference = default_reference_point(directions, a.objectives)
        except ValueError as exc:
            raise StudyError(f"--reference: {exc}; e.g. --reference "
                             f"{','.join('0' for _ in a.objectives)} in the objectives' units") from None
    return Comparison(_side(a, reference), _side(b, reference), a.objectives, directions, reference,
                      a.fidelity.describe())
