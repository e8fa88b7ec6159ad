"""Warm start: seed a new study with the best plans of a finished one (``autopeft run --warm-start S``).

The source study may search another task or another model (of another depth or width). Its plans are carried
over in the optimizer's own coordinates, the parameters of the space:

* a per-layer parameter (a layer's on/off switch, its expert count) of destination layer ``j`` takes the value
  of the source layer at the same relative depth, ``i = round(j * (L_src - 1) / (L_dst - 1))`` -- a plan that
  adapts the top third of a 6-layer model adapts the top third of a 24-layer one;
* any other parameter keeps its value (a size, a site switch, a variant); a size that the destination does not
  offer (its sizes follow its hidden width) becomes the nearest one it does, on a log scale;
* a parameter the source space lacks is an error: warm starts need the same space preset (e.g. both studies
  searched `autopeft.yaml`), possibly bound to other models.

The mapped plans are queued as the first trials of the new study (after its head-only anchor), most promising
first (:func:`autopeft.promote.promotion_order`), each with ``warm_start = {study, trial}``; the sampler then
sees them as ordinary results.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

from optuna.trial import TrialState

from autopeft.errors import StudyError
from autopeft.space import SearchSpace
from autopeft.study.study import AutopeftStudy

#: User attribute of a queued warm-start trial: where its plan came from.
WARM_START_ATTR = "warm_start"
#: a per-layer parameter of a space ("layer.3", "lora.layer.3", "lora_experts.layer.3.experts"): prefix, layer, rest
LAYER_PARAM = re.compile(r"^(.*\blayer\.)(\d+)(\b.*)$")


def source_layer(j: int, n_src: int, n_dst: int) -> int:
    """The source layer at destination layer ``j``'s relative depth."""
    if n_dst == 1 or n_src == 1:
        return 0 if n_src == 1 else n_src - 1
    return round(j * (n_src - 1) / (n_dst - 1))


def _nearest(value: Any, choices: list[Any]) -> int:
    """Index of ``value`` in ``choices``, or of the nearest number there (log scale; 0 only matches 0)."""
    if value in choices:
        return choices.index(value)
    if not isinstance(value, (int, float)) or value <= 0:
        raise StudyError(f"--warm-start: value {value!r} has no counterpart among {choices}")
    positive = [k for k, c in enumerate(choices) if isinstance(c, (int, float)) and c > 0]
    return min(positive, key=lambda k: abs(math.log(choices[k]) - math.log(value)))


def map_params(src: SearchSpace, dst: SearchSpace, params: Mapping[str, int]) -> dict[str, int]:
    """``params`` of a trial of ``src``, as parameters of ``dst`` (see the module docstring)."""
    n_src, n_dst = src.dims.num_layers, dst.dims.num_layers
    out: dict[str, int] = {}
    missing = []
    for name, choices in dst.choices.items():
        match = LAYER_PARAM.match(name)
        src_name = f"{match[1]}{source_layer(int(match[2]), n_src, n_dst)}{match[3]}" if match else name
        if src_name not in src.choices:
            missing.append(src_name)
            continue
        out[name] = _nearest(src.choices[src_name][int(params[src_name])], choices)
    if missing:
        raise StudyError(
            f"--warm-start: the source study's space lacks {', '.join(missing[:4])}"
            + (f" (+{len(missing) - 4} more)" if len(missing) > 4 else "")
            + "; warm starts need the same space preset (--space) in both studies")
    return out


def _check_source(study: AutopeftStudy, source: AutopeftStudy) -> None:
    """Refuse a source that is ``study`` itself or optimises other objectives."""
    if source.name == study.name:
        raise StudyError(f"--warm-start: {source.name!r} is this study itself; name another, finished study")
    if list(source.objectives) != list(study.objectives):
        raise StudyError(f"--warm-start: {source.name!r} optimises {source.objectives}, this study {study.objectives}; "
                         "warm starts need the same objectives (the same space preset)")


def warm_start(study: AutopeftStudy, source: AutopeftStudy, top: int = 8) -> list[tuple[int, int]]:
    """Queue the ``top`` most promising COMPLETE trials of ``source`` in ``study``, mapped to its space.
    Plans already in ``study`` (any trial with the same parameters) are skipped, so a second call queues nothing
    new. Returns (source trial, new trial) pairs. Everything is mapped and checked before anything is queued."""
    from autopeft.promote import promotion_order

    if top < 1:
        raise StudyError(f"--warm-start-top: must be at least 1 (got {top})")
    _check_source(study, source)
    order = promotion_order(source)
    if not order:
        raise StudyError(f"--warm-start: {source.name!r} has no COMPLETE feasible trial to start from")
    mapped = [(t.number, map_params(source.space, study.space, t.params)) for t in order[:top]]
    for _, params in mapped:
        study.space.decode(params)  # a valid plan of the destination model, or SpaceError before anything is queued
    numbers = enqueue_new(study, [(params, {WARM_START_ATTR: {"study": source.name, "trial": number}})
                                  for number, params in mapped])
    return [(source_number, new) for (source_number, _), new in zip(mapped, numbers) if new is not None]


def prior_observations(study: AutopeftStudy, source: AutopeftStudy) -> list[tuple[dict[str, int], list[float]]]:
    """Every COMPLETE trial of ``source`` as ``(parameters of study's space, objective values)``, mapped by relative
    depth as :func:`warm_start` maps plans: what the default sampler's transferred prior mean is fitted to
    (:class:`autopeft.optimize.mobo.MOBOSampler`'s ``prior``). Nothing is queued."""
    _check_source(study, source)
    return [(map_params(source.space, study.space, t.params), list(t.values))
            for t in source.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]


def enqueue_new(study: AutopeftStudy, items: list[tuple[dict[str, int], dict]]) -> list[int | None]:
    """Queue each (parameters, user attributes) whose parameters no trial of ``study`` has (finished, running or
    queued); the new trial's number, or None for one skipped."""
    seen = [dict(t.params) for t in study.trials()] + [t.system_attrs.get("fixed_params", {}) for t in
                                                       study.trials((TrialState.WAITING,))]
    numbers: list[int | None] = []
    for params, attrs in items:
        if params in seen:
            numbers.append(None)
            continue
        seen.append(params)
        study.study.enqueue_trial(params, user_attrs=attrs)
        numbers.append(study.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))[-1].number)
    return numbers


__all__ = ["WARM_START_ATTR", "enqueue_new", "map_params", "prior_observations", "source_layer", "warm_start"]
