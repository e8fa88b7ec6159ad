"""Proposers: the default multi-objective BoTorch sampler and the baselines, all Optuna samplers.

Every sampler reads the parameter budget through Optuna's trial constraints (``trial.set_constraint``):
a trial is feasible when its trainable-parameter % is at most the budget.
"""

from __future__ import annotations

import warnings

import optuna

from autopeft.errors import StudyError

SAMPLERS = ("botorch", "random", "tpe", "nsga2")
DEFAULT_SAMPLER = "botorch"


def make_sampler(name: str, *, seed: int = 0, n_startup_trials: int = 8) -> optuna.samplers.BaseSampler:
    """The sampler called ``name``.

    ``botorch`` (default): a Sobol quasi-random design for the first ``n_startup_trials`` trials, then a
    GP per objective (and per constraint) with qLogNEHVI (Ament et al., 2023: noisy expected
    hypervolume improvement, in log space), which treats RUNNING trials as pending points so
    concurrent workers do not get the same proposal.
    """
    if name == "botorch":
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        from optuna_integration import BoTorchSampler
        from optuna_integration.botorch import qnehvi_candidates_func

        return BoTorchSampler(
            candidates_func=qnehvi_candidates_func,  # qLogNEHVI; Optuna's default for 2-3 objectives is qLogEHVI
            n_startup_trials=n_startup_trials,
            independent_sampler=optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed),
            consider_running_trials=True,
            seed=seed,
        )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True, n_startup_trials=n_startup_trials)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, n_startup_trials))
    raise StudyError(f"--sampler: unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
