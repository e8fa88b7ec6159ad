"""An autopeft study: an Optuna study plus the space, fidelity and objectives it was made with.

The study's user attribute ``autopeft`` records everything needed to decode and compare its trials
(space YAML, model shape, fidelity, objectives). Re-opening a study with a different fidelity or
space is refused: results from different fidelities are never mixed silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
import yaml
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from autopeft.errors import SpaceError, StudyError
from autopeft.plan import PeftPlan
from autopeft.proxy.fidelity import Fidelity
from autopeft.space import ModelDims, SearchSpace, SpaceSpec, parse_space

CONFIG_ATTR = "autopeft"
CONFIG_VERSION = 1


@dataclass
class AutopeftStudy:
    study: optuna.Study
    space: SearchSpace
    fidelity: Fidelity
    space_yaml: str
    storage: RDBStorage  # the storage the study was opened on (URL, heartbeats, raw trial access)

    @property
    def name(self) -> str:
        return self.study.study_name

    @property
    def objectives(self) -> list[str]:
        return self.space.objectives

    @property
    def budget_pct(self) -> float | None:
        return self.space.spec.budget.max_trainable_pct if self.space.spec.budget else None

    def trials(self, states: tuple[TrialState, ...] | None = None) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=states)

    def count(self, *states: TrialState) -> int:
        return len(self.trials(states=states))

    def plan_of(self, trial: FrozenTrial) -> PeftPlan:
        if "plan" in trial.user_attrs:
            return PeftPlan.from_dict(trial.user_attrs["plan"])
        return self.space.decode({k: int(v) for k, v in trial.params.items()})


def _config(spec_yaml: str, dims: ModelDims, fidelity: Fidelity) -> dict[str, Any]:
    return {
        "version": CONFIG_VERSION,
        "space_yaml": spec_yaml,
        "dims": {"num_layers": dims.num_layers, "hidden_size": dims.hidden_size, "sites": list(dims.sites)},
        "fidelity": fidelity.model_dump(),
    }


def canonical_yaml(spec: SpaceSpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json", exclude_defaults=False), sort_keys=False)


def default_study_name(spec: SpaceSpec, fidelity: Fidelity) -> str:
    model = fidelity.model.rstrip("/").split("/")[-1]
    task = fidelity.task.rstrip("/").split("/")[-1].split(".")[0].replace("hf:", "")
    return f"{spec.name}-{task}-{model}"


def create_or_load(
    storage: RDBStorage,
    name: str,
    spec: SpaceSpec,
    dims: ModelDims,
    fidelity: Fidelity,
    sampler: optuna.samplers.BaseSampler | None = None,
    anchors: bool = True,
) -> tuple[AutopeftStudy, bool]:
    """Open study ``name``, creating it if absent. Returns (study, created).

    ``anchors``: queue the head-only anchor on creation (:func:`enqueue_anchors`). A retrain companion
    study (``<study>@<preset>``) holds only the trials retrained into it and is created without it.
    Everything is validated before anything is written, so bad input never leaves a half-made study.
    """
    space = SearchSpace(spec, dims, source=spec.name)  # raises SpaceError before any write
    text = canonical_yaml(spec)
    config = _config(text, dims, fidelity)
    if name in study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        stored = study.user_attrs.get(CONFIG_ATTR)
        if stored is None:
            raise StudyError(f"--study: {name!r} exists but was not made by autopeft; choose another name")
        # Read the stored fidelity through the model, so fields added since the study was made take
        # their defaults instead of counting as differences.
        stored_fidelity = Fidelity(**stored["fidelity"]).model_dump()
        diffs = [
            f"{key}: stored {stored_fidelity.get(key)!r}, asked {value!r}"
            for key, value in config["fidelity"].items()
            if stored_fidelity.get(key) != value
        ]
        # Compare spaces as the current schema reads them: defaults added since the study was made
        # (new module options) are not differences.
        if canonical_yaml(parse_space(stored["space_yaml"], source=f"study {name}")) != text:
            diffs.append("space: the search space differs from the one the study was made with")
        if stored["dims"] != config["dims"]:
            diffs.append(f"model shape: stored {stored['dims']}, asked {config['dims']}")
        if diffs:
            raise StudyError(
                f"--study: {name!r} was made with other settings, and fidelities are never mixed:\n  "
                + "\n  ".join(diffs)
                + "\nfix: rerun with the study's settings, or pass a new --study name"
            )
        return AutopeftStudy(study, space, fidelity, text, storage), False
    study = optuna.create_study(study_name=name, storage=storage, directions=space.directions, sampler=sampler)
    study.set_user_attr(CONFIG_ATTR, config)
    study.set_metric_names(space.objectives)
    if anchors:
        enqueue_anchors(study, space)
    return AutopeftStudy(study, space, fidelity, text, storage), True


def enqueue_anchors(study: optuna.Study, space: SearchSpace) -> None:
    """Queue the head-only plan (a linear probe: no PEFT module at all) as the study's first trial.

    It anchors the cheap end of the cost axis, so every front shows what the modules buy over training
    the task head alone. Spaces that cannot express it get no anchor.
    """
    try:
        params = space.encode(PeftPlan(space.dims.num_layers))
    except SpaceError:
        return
    study.enqueue_trial(params, user_attrs={"anchor": "head only"})


def study_names(storage: RDBStorage) -> set[str]:
    """Names of the studies in the storage. ``optuna.get_all_study_summaries`` would also read every
    trial of every study (seconds at thousands of trials)."""
    return {s.study_name for s in storage.get_all_studies()}


def load(storage: RDBStorage, name: str, sampler: optuna.samplers.BaseSampler | None = None) -> AutopeftStudy:
    """Open an existing autopeft study by name."""
    names = sorted(study_names(storage))
    if name not in names:
        raise StudyError(f"study: no study named {name!r}; studies here: {', '.join(names) or 'none'}")
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    config = study.user_attrs.get(CONFIG_ATTR)
    if config is None:
        raise StudyError(f"study: {name!r} was not made by autopeft")
    spec = parse_space(config["space_yaml"], source=f"study {name}")
    d = config["dims"]
    dims = ModelDims(d["num_layers"], d["hidden_size"], tuple(d["sites"]))
    return AutopeftStudy(study, SearchSpace(spec, dims, source=spec.name), Fidelity(**config["fidelity"]), config["space_yaml"], storage)
