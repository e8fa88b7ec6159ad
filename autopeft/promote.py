"""Multi-fidelity promotion (``autopeft promote``): successive halving over a study and its companions.

Search many plans at a cheap fidelity, then re-run only the promising ones at a higher one:

    autopeft run --study S --steps 40 --trials 60        # rung 0: cheap
    autopeft promote S --to default --fraction 0.33      # rung 1: the best third, trained at `default`
    autopeft promote S@default --to full --top 5         # rung 2: the best five of those, at `full`

"Promising" is multi-objective: the completed, feasible trials are sorted by non-dominated front (NSGA-II's
ranking: first the Pareto front, then the front of what is left, ...), and within a front by score. Promoted
trials are queued in the companion study ``S@<preset>`` (see :mod:`autopeft.retrain`: same space, resolved
fidelity, fidelities never mixed) with the source trial's parameters and the link ``source = {study, trial}``;
any worker of the companion study trains them (``--train`` runs one here). A trial already promoted (queued,
running or done) is never queued twice.

:func:`fidelity_agreement` reports how far the cheap fidelity can be trusted: Kendall's tau between the scores
of the linked trials at both fidelities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import optuna
import torch
from botorch.utils.multi_objective.pareto import is_non_dominated
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from autopeft.errors import StudyError
from autopeft.optimize.pareto import _as_maximisation, is_feasible
from autopeft.retrain import SOURCE_ATTR, prepare_retrain
from autopeft.study.study import AutopeftStudy, create_or_load, load, study_names


def front_ranks(values: torch.Tensor) -> list[int]:
    """Non-dominated sorting of ``values`` (N, M), larger is better in every column: 0 for the Pareto front, 1 for
    the front of the rest, and so on. O(N^2) per front, which is nothing next to training one trial."""
    ranks = [-1] * values.shape[0]
    left = list(range(values.shape[0]))
    rank = 0
    while left:
        mask = is_non_dominated(values[left], deduplicate=False).tolist()
        for i, keep in zip(list(left), mask):
            if keep:
                ranks[i] = rank
        left = [i for i, keep in zip(left, mask) if not keep]
        rank += 1
    return ranks


def promotion_order(study: AutopeftStudy) -> list[FrozenTrial]:
    """The study's COMPLETE, feasible trials, most promising first: by front, then by the first objective."""
    pool = [t for t in study.trials((TrialState.COMPLETE,)) if is_feasible(t)]
    if not pool:
        return []
    directions = [d.name.lower() for d in study.study.directions]
    values = _as_maximisation(pool, directions)  # (N, M)
    ranks = front_ranks(values)
    return [pool[i] for i in sorted(range(len(pool)), key=lambda i: (ranks[i], -float(values[i, 0]), pool[i].number))]


def _promoted(companion: AutopeftStudy | None, source: str) -> set[int]:
    """Source trial numbers already queued, running or done in the companion (a FAIL may be promoted again)."""
    if companion is None:
        return set()
    linked = [t.user_attrs.get(SOURCE_ATTR) for t in companion.trials() if t.state != TrialState.FAIL]
    return {link["trial"] for link in linked if isinstance(link, dict) and link.get("study") == source}


@dataclass(frozen=True)
class Promotion:
    companion: AutopeftStudy
    queued: list[tuple[int, int]]  # (source trial, companion trial) pairs queued by this call
    candidates: int  # completed, feasible trials of the source study
    created: bool  # the companion study was made by this call


def promote(storage: RDBStorage, study: str, preset: str = "default", *, top: int | None = None,
            fraction: float | None = None) -> Promotion:
    """Queue the ``top`` most promising trials of ``study`` (or that ``fraction`` of its completed trials, rounded
    up) not yet promoted, in the companion study at fidelity ``preset``. Checks everything before writing."""
    if (top is None) == (fraction is None):
        raise StudyError("--top/--fraction: give exactly one (e.g. --top 5 or --fraction 0.33)")
    if top is not None and top < 1:
        raise StudyError(f"--top: must be at least 1 (got {top})")
    if fraction is not None and not 0 < fraction <= 1:
        raise StudyError(f"--fraction: must be in (0, 1] (got {fraction}); e.g. 0.33 promotes the best third")
    source = load(storage, study)
    order = promotion_order(source)
    if not order:
        raise StudyError(f"study: {study!r} has no COMPLETE feasible trial to promote; run trials first "
                         f"(`autopeft run --study {study}`)")
    want = top if top is not None else math.ceil(fraction * len(order))
    request = prepare_retrain(storage, study, order[0].number, preset, again=True)  # fidelity and companion checks
    existing = load(storage, request.companion) if request.companion in study_names(storage) else None
    done = _promoted(existing, study)
    chosen = [t for t in order[:want] if t.number not in done]
    companion, created = create_or_load(storage, request.companion, source.space.spec, source.space.dims,
                                        request.fidelity, anchors=False)
    dists = companion.space.distributions()
    queued = []
    for trial in chosen:
        # What Study.enqueue_trial writes (a WAITING trial with fixed parameters), made here to learn its number.
        params = {n: int(trial.params[n]) for n in dists}
        template = optuna.trial.create_trial(state=TrialState.WAITING, system_attrs={"fixed_params": params},
                                             user_attrs={SOURCE_ATTR: {"study": study, "trial": trial.number}})
        trial_id = storage.create_new_trial(companion.study._study_id, template_trial=template)
        queued.append((trial.number, storage.get_trial_number_from_id(trial_id)))
    return Promotion(companion, queued, len(order), created)


@dataclass(frozen=True)
class Agreement:
    tau: float | None  # Kendall's tau-b of the scores at the two fidelities (None with fewer than 2 pairs)
    pairs: list[tuple[int, float, float]]  # (source trial, source score, companion score)


def fidelity_agreement(source: AutopeftStudy, companion: AutopeftStudy) -> Agreement:
    """How well the cheap fidelity ranks plans: Kendall's tau of the scores of trials linked across the two
    studies (both COMPLETE). 1: same order; 0: unrelated; negative: reversed."""
    from scipy.stats import kendalltau

    scores = {t.number: t.values[0] for t in source.trials((TrialState.COMPLETE,))}
    pairs = []
    for t in companion.trials((TrialState.COMPLETE,)):
        link = t.user_attrs.get(SOURCE_ATTR)
        if isinstance(link, dict) and link.get("study") == source.name and link.get("trial") in scores:
            pairs.append((link["trial"], scores[link["trial"]], t.values[0]))
    if len(pairs) < 2:
        return Agreement(None, pairs)
    tau = kendalltau([p[1] for p in pairs], [p[2] for p in pairs]).statistic
    return Agreement(None if math.isnan(tau) else float(tau), pairs)


__all__ = ["Agreement", "Promotion", "fidelity_agreement", "front_ranks", "promote", "promotion_order"]
