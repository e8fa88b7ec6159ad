"""Retrain a chosen trial's plan at another fidelity (``autopeft retrain``), into a companion study.

Fidelities are never mixed: trial N of study S retrained at preset P (``quick``, ``default``, ``full``: see
:data:`~autopeft.proxy.fidelity.FIDELITY_PRESETS`) becomes a trial of the companion study ``S@P`` -- the same
space and model shape, the resolved fidelity, and no head-only anchor. The new trial has the source trial's
parameters (hence its plan) and the user attribute ``source = {"study": S, "trial": N}``; plan, fidelity,
metrics and trained weights are recorded as a worker records them, because the worker's own
:func:`~autopeft.study.worker.run_one` runs it (the worker loop stays the only code that both talks to the
database and trains). The source study is only read.

:func:`prepare_retrain` checks everything and writes nothing; :func:`retrain` then trains and records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from autopeft.errors import AutopeftError, StudyError
from autopeft.proxy.fidelity import Fidelity, TaskProfile, resolve_preset
from autopeft.proxy.tasks import TaskData
from autopeft.study.study import AutopeftStudy, create_or_load, load, study_names

#: User attribute linking a retrained trial to the trial it retrains.
SOURCE_ATTR = "source"


class RetrainFailed(AutopeftError, RuntimeError):
    """Training the plan at the new fidelity failed; the failed trial is recorded in the companion study."""


def companion_name(study: str, preset: str) -> str:
    """The study that holds the retrains of ``study``'s trials at ``preset``."""
    return f"{study}@{preset}"


@dataclass(frozen=True)
class RetrainRequest:
    """A checked retrain: what to train, at which fidelity, into which study. Nothing is written yet."""

    source: AutopeftStudy
    trial: FrozenTrial  # the source trial (COMPLETE)
    preset: str
    fidelity: Fidelity  # resolved: the study's fidelity, the preset's overrides, then the caller's
    companion: str  # name of the companion study
    task: TaskData  # loaded at the resolved fidelity's seed, handed to the trainer
    # A linked trial to take over: one handed back to the queue (WAITING, after Ctrl-C) is run again; one left
    # RUNNING by a retrain that died (no heartbeat within the grace period) is failed and trained anew.
    resume: FrozenTrial | None = None

    @property
    def link(self) -> dict[str, Any]:
        return {"study": self.source.name, "trial": self.trial.number}


@dataclass(frozen=True)
class RetrainResult:
    request: RetrainRequest
    study: AutopeftStudy  # the companion study
    trial: FrozenTrial  # the retrained trial, COMPLETE
    created: bool  # the companion study was made by this call


def linked_trials(study: AutopeftStudy, source: str, number: int) -> list[FrozenTrial]:
    """Trials of ``study`` that retrain trial ``number`` of study ``source``."""
    link = {"study": source, "trial": number}
    return [t for t in study.trials() if t.user_attrs.get(SOURCE_ATTR) == link]


def _source_trial(study: AutopeftStudy, number: int) -> FrozenTrial:
    trials = study.trials()
    found = [t for t in trials if t.number == number]
    if not found:
        last = f"0..{trials[-1].number}" if trials else "none"
        raise StudyError(f"--trial: study {study.name!r} has no trial {number} (its trials: {last}); "
                         f"pick one from `autopeft study show {study.name} --all`")
    trial = found[0]
    if trial.state != TrialState.COMPLETE:
        reason = trial.user_attrs.get("fail_reason")
        raise StudyError(f"--trial: trial {number} of {study.name!r} is {trial.state.name}"
                         + (f" ({reason})" if reason else "")
                         + f"; only a COMPLETE trial can be retrained: pick one from `autopeft study show {study.name}`")
    return trial


def _profile(fidelity: Fidelity, task: TaskData) -> TaskProfile:
    from autopeft.proxy.models import load_config, load_tokenizer

    limit = getattr(load_config(fidelity.model), "max_position_embeddings", None)
    return TaskProfile.measure(task, load_tokenizer(fidelity.model), limit, seed=fidelity.seed)


def prepare_retrain(storage: RDBStorage, study: str, trial: int, preset: str = "full",
                    overrides: Mapping[str, Any] | None = None, *, again: bool = False) -> RetrainRequest:
    """Check a retrain of trial ``trial`` of ``study`` at ``preset`` (plus budget ``overrides``, named as
    :class:`Fidelity` fields). Raises :class:`StudyError` naming the flag, the value and the fix; writes nothing.

    A linked trial already COMPLETE (or RUNNING, alive) in the companion study is refused unless ``again``; one
    handed back (WAITING, after Ctrl-C) or left RUNNING by a retrain that died is taken over (``resume``).
    """
    from autopeft.proxy.tasks import load_task

    source = load(storage, study)
    if source.fidelity.objective != "proxy":
        raise StudyError(f"study: {study!r} uses the {source.fidelity.objective} objective, which trains nothing; "
                         "retrain needs a proxy study (one run with --objective proxy, the default)")
    chosen = _source_trial(source, trial)
    base = source.fidelity
    task = load_task(base.task, seed=base.seed)
    fidelity = resolve_preset(base, preset, _profile(base, task), overrides)
    if fidelity.seed != base.seed:
        task = load_task(fidelity.task, seed=fidelity.seed)  # the trainer splits the data at its own seed
    name = companion_name(study, preset)
    resume = None
    if name in study_names(storage):
        companion = load(storage, name)
        diffs = [f"{key}: stored {value!r}, asked {getattr(fidelity, key)!r}"
                 for key, value in companion.fidelity.model_dump().items() if getattr(fidelity, key) != value]
        if diffs:
            raise StudyError(
                f"--fidelity: the companion study {name!r} holds retrains at another fidelity, and fidelities are "
                "never mixed:\n  " + "\n  ".join(diffs)
                + "\nfix: give the flags it was made with, or retrain at another --fidelity preset")
        linked = linked_trials(companion, study, trial)
        dead = set(storage._get_stale_trial_ids(companion.study._study_id)) if storage.get_heartbeat_interval() else set()
        waiting = [t for t in linked if t.state == TrialState.WAITING
                   or (t.state == TrialState.RUNNING and t._trial_id in dead)]
        done = [t for t in linked if t.state == TrialState.COMPLETE
                or (t.state == TrialState.RUNNING and t._trial_id not in dead)]
        if waiting:
            resume = waiting[0]
        elif done and not again:
            t = done[-1]
            what = "was already retrained" if t.state == TrialState.COMPLETE else "is being retrained now"
            raise StudyError(f"--trial: trial {trial} of {study!r} {what} at --fidelity {preset}: trial {t.number} "
                             f"of {name!r} ({t.state.name}); see `autopeft study show {name}`, or pass --again to "
                             "retrain it once more")
    return RetrainRequest(source, chosen, preset, fidelity, name, task, resume)


def _start_trial(companion: AutopeftStudy, request: RetrainRequest) -> optuna.Trial:
    """The companion trial to run: the handed-back one (claimed from the queue), or a new RUNNING trial
    with the source trial's parameters and the link."""
    from autopeft.study.worker import FAIL_REASON

    storage = companion.study._storage  # the study's cached view of the RDB storage; Trial reads through it
    trial_id = None
    if request.resume is not None and request.resume.state == TrialState.RUNNING:
        reason = "no heartbeat: the retrain running it stopped; trained again as a new trial"
        try:
            storage.set_trial_user_attr(request.resume._trial_id, FAIL_REASON, reason)
            storage.set_trial_state_values(request.resume._trial_id, state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            pass  # failed as stale by a worker meanwhile
    elif request.resume is not None:
        try:
            if storage.set_trial_state_values(request.resume._trial_id, state=TrialState.RUNNING):
                trial_id = request.resume._trial_id
        except UpdateFinishedTrialError:
            pass  # a worker on the companion study claimed it meanwhile: start a new one
    if trial_id is None:
        dists = companion.space.distributions()
        params = {name: int(request.trial.params[name]) for name in dists}
        template = optuna.trial.create_trial(state=TrialState.RUNNING, params=params, distributions=dists,
                                             user_attrs={SOURCE_ATTR: request.link})
        trial_id = storage.create_new_trial(companion.study._study_id, template_trial=template)
    if companion.storage.get_heartbeat_interval():
        companion.storage.record_heartbeat(trial_id)  # a retrain killed now leaves a trial that can be failed
    return optuna.Trial(companion.study, trial_id)


def retrain(request: RetrainRequest, device: str = "cpu") -> RetrainResult:
    """Train the request's plan at its fidelity as a trial of the companion study (created when absent).

    The trainer (model, tokenised data) is built before anything is written. Raises :class:`RetrainFailed`
    when training fails (the failed trial stays in the companion study with its reason). Ctrl-C hands the
    trial back to the companion's queue, where the next retrain of the same trial picks it up.
    """
    from autopeft.proxy.train import ProxyTrainer
    from autopeft.study.worker import FAIL_REASON, run_one

    trainer = ProxyTrainer(request.fidelity, device, task=request.task)
    src = request.source
    companion, created = create_or_load(src.storage, request.companion, src.space.spec, src.space.dims,
                                        request.fidelity, anchors=False)
    finished = run_one(companion, trainer, _start_trial(companion, request))
    if finished.state != TrialState.COMPLETE:
        raise RetrainFailed(f"retraining trial {request.trial.number} of {src.name!r} failed: "
                            f"{finished.user_attrs.get(FAIL_REASON, finished.state.name)} "
                            f"(recorded as trial {finished.number} of {companion.name!r})")
    return RetrainResult(request, companion, finished, created)


__all__ = ["SOURCE_ATTR", "RetrainFailed", "RetrainRequest", "RetrainResult", "companion_name", "linked_trials",
           "prepare_retrain", "retrain"]
