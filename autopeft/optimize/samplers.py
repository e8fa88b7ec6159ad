"""Proposers: autopeft's multi-objective BO sampler (the default) and the baselines, all Optuna samplers.

Every sampler reads the parameter budget through Optuna's trial constraints (``trial.set_constraint``):
a trial is feasible when its trainable-parameter % is at most the budget.
"""

from __future__ import annotations

import copy
import warnings

import optuna
from optuna.trial import FrozenTrial, TrialState

from autopeft.errors import StudyError

SAMPLERS = ("botorch", "random", "tpe", "nsga2", "optuna-botorch", "optuna-gp")
DEFAULT_SAMPLER = "botorch"


def make_sampler(name: str, *, seed: int = 0, n_startup_trials: int = 8, space=None) -> optuna.samplers.BaseSampler:
    """The sampler called ``name``.

    ``botorch`` (default): autopeft's own multi-objective BO on BoTorch (:class:`~autopeft.optimize.mobo.MOBOSampler`):
    a scrambled Sobol design for the first ``n_startup_trials`` trials, then one GP per objective, refitted (warm)
    only when results came in, and proposals that maximise the expected hypervolume improvement over the grid of
    choices, with RUNNING and queued (WAITING) trials as pending points, so concurrent workers and queued batches
    never get the same proposal. It works on plans: parameters that describe the same plan (a layer switch of a
    module that is off, say) are one point, read through ``space`` (a :class:`~autopeft.space.SearchSpace`) or,
    without it, through the space recorded on an autopeft study.

    Baselines: ``random``, ``tpe`` (multivariate, constant liar), ``nsga2``, ``optuna-botorch`` (Optuna's
    ``BoTorchSampler`` with qLogNEHVI: the default before autopeft had its own; refits from scratch on every
    proposal) and ``optuna-gp`` (Optuna's native ``GPSampler``).
    """
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if name == "botorch":
        from autopeft.optimize.mobo import MOBOSampler

        main = MOBOSampler(seed=seed, n_startup_trials=n_startup_trials, canonical=SpaceCanonical(space),
                           inputs=PlanInputs(space), reference=ProjectReference(space))
        return StartupThen(_sobol(seed), PendingAware(main), n_startup_trials)
    if name == "optuna-botorch":
        from optuna_integration import BoTorchSampler
        from optuna_integration.botorch import qnehvi_candidates_func

        main = BoTorchSampler(
            candidates_func=qnehvi_candidates_func,  # qLogNEHVI; Optuna's default for 2-3 objectives is qLogEHVI
            n_startup_trials=n_startup_trials,
            consider_running_trials=True,
            seed=seed,
        )
        return StartupThen(_sobol(seed), PendingAware(main), n_startup_trials)
    if name == "optuna-gp":
        return PendingAware(optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup_trials))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return PendingAware(optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                                       n_startup_trials=n_startup_trials))
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, n_startup_trials))
    raise StudyError(f"--sampler: unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


def _sobol(seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed, warn_independent_sampling=False)


class _StudySpace:
    """The :class:`~autopeft.space.SearchSpace` of a study: ``space`` when given, else the one recorded on the
    study (None for a study that is not autopeft's)."""

    def __init__(self, space=None):
        self.space = space
        self._studies: dict[int, object] = {}  # study id -> its space (None: not an autopeft study)

    def _space_of(self, study):
        if self.space is not None:
            return self.space
        key = study._study_id
        if key not in self._studies:
            from autopeft.space import ModelDims, SearchSpace, parse_space
            from autopeft.study.study import CONFIG_ATTR

            config = study.user_attrs.get(CONFIG_ATTR)
            space = None
            if config is not None:
                d = config["dims"]
                spec = parse_space(config["space_yaml"], source=study.study_name)
                space = SearchSpace(spec, ModelDims(d["num_layers"], d["hidden_size"], tuple(d["sites"])))
            self._studies[key] = space
        return self._studies[key]


class SpaceCanonical(_StudySpace):
    """``(study, params) -> params``: the canonical parameters of the plan that ``params`` decode to
    (``space.encode(space.decode(params))``), through ``space`` or the space recorded on the study; parameters of
    a study without one come back unchanged."""

    def __call__(self, study, params: dict) -> dict:
        space = self._space_of(study)
        if space is None or set(params) != set(space.choices):
            return params
        return space.encode(space.decode({k: int(v) for k, v in params.items()}))


class PlanInputs(_StudySpace):
    """``(study, search space) -> inputs``: the GP's inputs are what the plan puts where, one per (layer, method,
    site) slot (:meth:`~autopeft.space.SearchSpace.slot_features`, vectorised by
    :class:`~autopeft.optimize.mobo.ProductInputs`), plus the variants as they are; None (the plain encoding of
    the parameters) for a study that is not autopeft's.

    Why: a layer switch, a site switch and a size each mean nothing alone; the plan's score depends on which
    modules sit where. On the tabular benchmark, a GP fitted to 50 plans ranks the other plans' scores with a
    Spearman correlation of 0.42 on these inputs against 0.20 on the parameters (``benchmarks/plan_inputs.py``).
    """

    def __init__(self, space=None):
        super().__init__(space)
        self._maps: dict[tuple, object] = {}

    def __call__(self, study, search_space: dict):
        space = self._space_of(study)
        if space is None or set(search_space) != set(space.choices):
            return None
        key = (id(space), tuple(search_space))
        if key not in self._maps:
            from autopeft.optimize.mobo import ProductInputs

            self._maps[key] = ProductInputs(search_space, space.slot_features())
        return self._maps[key]


class ProjectReference(_StudySpace):
    """``study -> reference point``: the one the CLI and dashboard measure a study's hypervolume against
    (:func:`~autopeft.optimize.pareto.default_reference_point`: score 0, 100 % trainable), so the default sampler's
    expected hypervolume improvement is an improvement of the reported hypervolume; None (BoTorch's inferred point)
    for a study that is not autopeft's or has an objective without a default (step time, memory).

    Why not the inferred point (the front's nadir, 10 % beyond): it gives the accurate, expensive end of the front
    almost no width, and on the tabular benchmark the project's point raised the hypervolume at 10, 25 and 50
    trials on both measures and both replays but one figure (docs/benchmarks.md, "Search quality").
    """

    def __call__(self, study):
        from autopeft.optimize.pareto import default_reference_point

        space = self._space_of(study)
        if space is None:
            return None
        try:
            return default_reference_point(space.directions, space.objectives).values
        except ValueError:
            return None


class StartupThen(optuna.samplers.BaseSampler):
    """``startup``'s joint (relative) sampling until ``n_startup`` trials are COMPLETE, then ``main``'s.

    Optuna has no such combinator, and ``BoTorchSampler(independent_sampler=QMCSampler(...))`` does not
    give a Sobol design: BoTorch asks its independent sampler one parameter at a time, and
    ``QMCSampler`` samples only jointly, so it falls back to random sampling.
    """

    def __init__(self, startup: optuna.samplers.BaseSampler, main: optuna.samplers.BaseSampler, n_startup: int):
        self.startup = startup
        self.main = main
        self.n_startup = n_startup
        self._fallback = optuna.samplers.RandomSampler(seed=getattr(main, "_seed", None))
        self.relative_calls = {"startup": 0, "main": 0}  # which sampler proposed, for tests and logs

    def _active(self, study: optuna.Study) -> tuple[str, optuna.samplers.BaseSampler]:
        done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        return ("startup", self.startup) if done < self.n_startup else ("main", self.main)

    def infer_relative_search_space(self, study, trial):
        return self._active(study)[1].infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        name, sampler = self._active(study)
        params = sampler.sample_relative(study, trial, search_space)
        if params:
            self.relative_calls[name] += 1
        return params

    def sample_independent(self, study, trial, param_name, param_distribution):
        # Only reached for parameters the active sampler did not sample jointly (the very first trial).
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self.startup.before_trial(study, trial)
        self.main.before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        self.startup.after_trial(study, trial, state, values)
        self.main.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.startup.reseed_rng()
        self.main.reseed_rng()
        self._fallback.reseed_rng()


class _QueuedAsRunning:
    """A read view of a study in which queued (WAITING) trials also count as RUNNING."""

    def __init__(self, study: optuna.Study):
        self._study = study

    def __getattr__(self, name):
        return getattr(self._study, name)

    def get_trials(self, deepcopy: bool = True, states=None) -> list[FrozenTrial]:
        trials = self._study.get_trials(deepcopy=deepcopy, states=states)
        if states is not None and TrialState.RUNNING in states and TrialState.WAITING not in states:
            trials = trials + [_as_running(t) for t in self._study.get_trials(deepcopy=False, states=(TrialState.WAITING,))]
        return trials


def _as_running(trial: FrozenTrial) -> FrozenTrial:
    view = copy.copy(trial)
    view.state = TrialState.RUNNING
    if not view.params and "fixed_params" in trial.system_attrs:  # enqueued with fixed parameters only
        view.params = dict(trial.system_attrs["fixed_params"])
    return view


class PendingAware(optuna.samplers.BaseSampler):
    """``sampler``, seeing queued trials as pending as well as running ones.

    Optuna's pending-aware samplers (``BoTorchSampler(consider_running_trials=True)``, TPE's constant
    liar) count only RUNNING trials as pending. A proposer keeps a queue of WAITING trials ahead of the
    workers; without this view each new batch would ignore the queue and, with unchanged data and seed,
    propose the very points already queued.
    """

    def __init__(self, sampler: optuna.samplers.BaseSampler):
        self.sampler = sampler

    def __getattr__(self, name):  # e.g. ``_seed``, read by StartupThen
        if name == "sampler":
            raise AttributeError(name)
        return getattr(self.sampler, name)

    def infer_relative_search_space(self, study, trial):
        return self.sampler.infer_relative_search_space(_QueuedAsRunning(study), trial)

    def sample_relative(self, study, trial, search_space):
        return self.sampler.sample_relative(_QueuedAsRunning(study), trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.sampler.sample_independent(_QueuedAsRunning(study), trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self.sampler.before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        self.sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.sampler.reseed_rng()
