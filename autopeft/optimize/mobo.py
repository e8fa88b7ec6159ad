"""autopeft's multi-objective Bayesian optimisation sampler: one GP per objective, expected hypervolume improvement.

Why not ``optuna_integration.BoTorchSampler``: it refits every GP from scratch on every proposal (seconds at a
hundred trials, tens of seconds at two hundred), optimises the acquisition over a continuous relaxation of the
integer space, and cannot take a reference point. A proposer serving several workers asks for a batch of proposals
each time a few trials finish, so this sampler

* fits one exact GP per objective (and per constraint that is not simply an objective minus a budget) on inputs
  mapped to the unit cube from the Optuna distributions, outcomes standardised, positive costs in log space;
* refits only when the completed trials changed (``fit_count`` counts fits), starting from the previous
  hyperparameters with a few L-BFGS iterations; above ``fit_cap`` trials the GP is fitted and conditioned on a
  subset (the best non-dominated layers first, then a seeded random rest), so its cost stops growing;
* scores a candidate by its expected hypervolume improvement (EHVI, exact for independent Gaussian objectives: a sum
  over the cells of the non-dominated region of products of one-dimensional expectations; in log space, as in
  Ament et al. 2023) over the *posterior-mean* front of the observed trials (scores are noisy: a lucky observation
  does not set the bar), times the probability of meeting the constraints (the trainable-% budget becomes a
  threshold on that objective's GP), against ``reference`` (autopeft's make_sampler passes the project's point,
  moved onto the budget when there is one) or else a point inferred from that front; ``acquisition="qlognehvi"``
  uses BoTorch's Monte-Carlo qLogNEHVI instead (about twenty times slower here: see docs/benchmarks.md);
* treats RUNNING and queued trials as pending: the GP is conditioned on them as if they had returned the worst
  value seen so far (the "constant liar" of Ginsbourger et al. 2010), so a batch spreads out instead of repeating
  itself, and all proposals of a batch share one fit;
* searches the *grid* of choices directly (every parameter is a list of choices): seeded random and
  mutated-incumbent starts, then a local search that moves every start to its best one-parameter neighbour at once,
  never onto an observed, pending or failed point. Nothing is rounded and nothing falls back to random sampling;
* works on plans, given ``canonical`` (autopeft's make_sampler passes the study's space): parameter vectors that
  decode to the same plan are one point to the GP, and no proposal repeats a plan under other parameters;
* given ``inputs`` (autopeft's make_sampler passes the plan's slots, :class:`ProductInputs`), the score's GP reads
  what the plan puts in each layer, method and site instead of the parameters (see :meth:`MOBOSampler._columns`).

Shapes: ``n`` completed trials, ``p`` parameters, ``d`` encoded input dimensions (one per ordinal parameter, one per
choice of a categorical one), ``m`` objectives, ``o`` modelled outputs (objectives, then own-GP constraints),
``N`` candidates, ``C`` cells of the non-dominated region.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import optuna
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.search_space import IntersectionSearchSpace
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger(__name__)

MAX_GRID = 32  # float parameters and integer ranges wider than this are searched on a grid of this many points


# --------------------------------------------------------------------------- the grid of choices
class ChoiceGrid:
    """Every parameter as an ordered list of choices; rows of choice indices <-> unit-cube inputs <-> params.

    Integers and floats are ordinal (one input in [0, 1], log-scaled when the distribution is); categoricals are
    one-hot (one input per choice), so the GP never reads an order into unordered choices.
    """

    def __init__(self, space: dict[str, BaseDistribution], inputs: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.names = list(space)
        self.inputs = inputs  # (..., p) choice indices -> (..., d') model inputs, instead of the encoding below
        self.values: list[list[Any]] = [_choices(space[n]) for n in self.names]
        self.sizes = torch.tensor([len(v) for v in self.values])  # (p,)
        self.categorical = [isinstance(space[n], CategoricalDistribution) for n in self.names]
        ordinal = [i for i, c in enumerate(self.categorical) if not c]
        self._ord_idx = torch.tensor(ordinal, dtype=torch.long)
        width = max((len(self.values[i]) for i in ordinal), default=1)
        table = torch.zeros(len(ordinal), width, dtype=torch.double)  # (p_ord, k_max): position on [0, 1]
        for row, i in enumerate(ordinal):
            table[row, : len(self.values[i])] = _unit_positions(space[self.names[i]], self.values[i])
        self._ord_table = table
        self._cat_idx = [i for i, c in enumerate(self.categorical) if c]
        self.dim = len(ordinal) + sum(len(self.values[i]) for i in self._cat_idx)
        # every one-parameter move: (parameter, choice) pairs, K = sum of the choice counts
        self.move_param = torch.cat([torch.full((len(v),), i, dtype=torch.long) for i, v in enumerate(self.values)])
        self.move_value = torch.cat([torch.arange(len(v)) for v in self.values])
        self._hash = torch.randint(1, 2**62, (len(self.names),), generator=torch.Generator().manual_seed(0))

    def rows(self, params: Sequence[dict[str, Any]]) -> torch.Tensor:
        """(n, p) choice indices of parameter dicts that set every parameter."""
        return torch.tensor([[self._index(i, ps[n]) for i, n in enumerate(self.names)] for ps in params],
                            dtype=torch.long).reshape(len(params), len(self.names))

    def _index(self, i: int, value: Any) -> int:
        vals = self.values[i]
        if self.categorical[i]:
            return vals.index(value)
        return int(np.argmin([abs(float(v) - float(value)) for v in vals]))  # the nearest grid point

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """(..., p) choice indices -> (..., d) unit-cube inputs (the ``inputs`` map's, when one was given)."""
        if self.inputs is not None:
            return self.inputs(z)
        parts = [self._ord_table[torch.arange(len(self._ord_idx)), z[..., self._ord_idx]]]  # (..., p_ord)
        parts += [torch.nn.functional.one_hot(z[..., i], len(self.values[i])).double() for i in self._cat_idx]
        return torch.cat(parts, dim=-1)

    def params(self, z: torch.Tensor) -> dict[str, Any]:
        """One (p,) row -> Optuna parameter values."""
        return {n: self.values[i][int(z[i])] for i, n in enumerate(self.names)}

    def random(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """(n, p) uniformly random rows."""
        return (torch.rand(n, len(self.names), generator=gen, dtype=torch.double) * self.sizes).long()

    def keys(self, z: torch.Tensor) -> torch.Tensor:
        """(N, p) rows -> (N,) int64 hashes (a random linear form, wrapping around: collisions have probability
        about N^2 / 2^64), so membership tests run vectorised."""
        return (z.long() * self._hash).sum(-1)

    def mutate(self, z: torch.Tensor, gen: torch.Generator, max_changes: int = 3) -> torch.Tensor:
        """Each (n, p) row with 1..max_changes parameters set to random choices."""
        n, p = z.shape
        out = z.clone()
        changes = torch.randint(1, max_changes + 1, (n,), generator=gen)
        for c in range(max_changes):
            which = torch.randint(0, p, (n,), generator=gen)
            value = (torch.rand(n, generator=gen, dtype=torch.double) * self.sizes[which]).long()
            keep = changes > c
            out[keep, which[keep]] = value[keep]
        return out

    def neighbours(self, z: torch.Tensor) -> torch.Tensor:
        """(r, p) rows -> (r, K, p): every row with one parameter moved to each of its choices (the row itself
        appears once per parameter; callers mask it out by comparing with the row)."""
        r = z.shape[0]
        k = self.move_param.numel()
        out = z[:, None, :].expand(r, k, z.shape[1]).clone()
        out[:, torch.arange(k), self.move_param] = self.move_value
        return out


class ProductInputs:
    """Model inputs that are products of per-parameter lookups, then every parameter that no product reads, encoded
    as :class:`ChoiceGrid` encodes it (together ``plan_cols``); then every parameter so encoded (``param_cols``).
    ``features``: ``[(label, [(parameter, value per choice index), ...]), ...]``, e.g.
    :meth:`autopeft.space.SearchSpace.slot_features` (what a plan puts in each layer, method and site); a factor
    named ``""`` is a constant.

    Vectorised so that scoring thousands of candidates per proposal stays cheap: a (F, J) table of the parameter
    each feature's j-th factor reads and a (F, J, k) table of its values (absent factors read a column of ones).
    """

    def __init__(self, space: dict[str, BaseDistribution],
                 features: Sequence[tuple[Any, Sequence[tuple[str, Sequence[float]]]]]):
        names = list(space)
        position = {n: i for i, n in enumerate(names)}
        width = max([len(_choices(d)) for d in space.values()] + [1])
        depth = max([len(f) for _, f in features] + [1])
        self.param = torch.zeros(len(features), depth, dtype=torch.long)  # (F, J)
        self.table = torch.ones(len(features), depth, width, dtype=torch.double)  # (F, J, k)
        used = set()
        for f, (_, factors) in enumerate(features):
            for j, (name, values) in enumerate(factors):
                if name == "":  # a constant
                    self.table[f, j, :] = float(values[0])
                    continue
                self.param[f, j] = position[name]
                self.table[f, j, : len(values)] = torch.tensor([float(v) for v in values], dtype=torch.double)
                used.add(name)
        self.rest = torch.tensor([position[n] for n in names if n not in used], dtype=torch.long)
        rest = {n: space[n] for n in names if n not in used}
        self._rest_grid = ChoiceGrid(rest) if rest else None
        self._all_grid = ChoiceGrid(space)
        n_plan = len(features) + (self._rest_grid.dim if rest else 0)
        self.plan_cols = torch.arange(n_plan)  # the products and the parameters no product reads
        self.param_cols = torch.arange(n_plan, n_plan + self._all_grid.dim)  # every parameter, as ChoiceGrid encodes it
        self.dim = n_plan + self._all_grid.dim

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """(..., p) choice indices -> (..., F + d_rest + d) inputs: ``plan_cols``, then ``param_cols``."""
        lead = z.shape[:-1]
        flat = z.reshape(-1, z.shape[-1])
        chosen = flat[:, self.param]  # (N, F, J): the choice index each factor reads
        f_idx = torch.arange(self.param.shape[0])[:, None].expand_as(self.param)
        j_idx = torch.arange(self.param.shape[1])[None, :].expand_as(self.param)
        prod = self.table[f_idx, j_idx, chosen].prod(-1)  # (N, F)
        parts = [prod, self._all_grid.encode(flat)]
        if self._rest_grid is not None:
            parts.insert(1, self._rest_grid.encode(flat[:, self.rest]))
        out = torch.cat(parts, -1)
        return out.reshape(*lead, out.shape[-1])


def _choices(dist: BaseDistribution) -> list[Any]:
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution):
        vals = list(range(dist.low, dist.high + 1, dist.step))
        if len(vals) <= MAX_GRID:
            return vals
        grid = np.geomspace(dist.low, dist.high, MAX_GRID) if dist.log else np.linspace(dist.low, dist.high, MAX_GRID)
        return sorted({int(round((g - dist.low) / dist.step)) * dist.step + dist.low for g in grid})
    if isinstance(dist, FloatDistribution):
        if dist.step is not None:
            n = int(round((dist.high - dist.low) / dist.step)) + 1
            if n <= MAX_GRID:
                return [dist.low + i * dist.step for i in range(n)]
        grid = np.geomspace(dist.low, dist.high, MAX_GRID) if dist.log else np.linspace(dist.low, dist.high, MAX_GRID)
        return [float(g) for g in grid]
    raise TypeError(f"unsupported distribution {dist!r}")


def _unit_positions(dist: BaseDistribution, values: list[Any]) -> torch.Tensor:
    v = torch.tensor([float(x) for x in values], dtype=torch.double)
    low, high = float(dist.low), float(dist.high)
    if getattr(dist, "log", False):
        v, low, high = v.log(), math.log(low), math.log(high)
    return (v - low) / (high - low)


# --------------------------------------------------------------------------- outcomes
@dataclass
class Outcomes:
    """Objective values in the model's space (maximised; non-negative minimised costs in log space), and the
    constraints: those that are an objective minus a constant become a threshold on that objective."""

    y: torch.Tensor  # (n, m) model space
    offsets: list[float | None]  # per objective: None = as is, else modelled as log(value + offset)
    signs: list[float]
    thresholds: list[tuple[int, float]] = field(default_factory=list)  # (objective, threshold in raw units)
    con: torch.Tensor | None = None  # (n, c') constraints that get their own GP

    @property
    def log_cols(self) -> list[bool]:
        return [o is not None for o in self.offsets]

    def to_model(self, j: int, raw):
        """Raw values of objective j (float or tensor) -> model space."""
        o = self.offsets[j]
        if o is None:
            return self.signs[j] * raw
        return self.signs[j] * (torch.log(raw + o) if isinstance(raw, torch.Tensor) else math.log(raw + o))


def outcomes(trials: Sequence[FrozenTrial], directions: Sequence[StudyDirection], log_costs: bool = True) -> Outcomes:
    """The completed trials' objectives and constraints in the model's space."""
    raw = torch.tensor([t.values for t in trials], dtype=torch.double)  # (n, m)
    signs = [1.0 if d == StudyDirection.MAXIMIZE else -1.0 for d in directions]
    # A minimised cost that is never negative (trainable %, step time) spans orders of magnitude across plans: its
    # log is what a stationary GP can fit. A plan that costs nothing (the head-only anchor of the synthetic
    # objective: 0 %) sits at half the smallest positive cost.
    offsets: list[float | None] = []
    for j, s in enumerate(signs):
        col = raw[:, j]
        positive = col[col > 0]
        if log_costs and s < 0 and bool((col >= 0).all()) and positive.numel():
            offsets.append(0.0 if positive.numel() == col.numel() else float(positive.min()) / 2)
        else:
            offsets.append(None)
    out = Outcomes(raw.clone(), offsets, signs)
    out.y = torch.stack([out.to_model(j, raw[:, j]) for j in range(raw.shape[1])], -1)
    keys = sorted(set.intersection(*(set(t.constraints) for t in trials))) if trials else []
    own = []
    for key in keys:
        c = torch.tensor([t.constraints[key] for t in trials], dtype=torch.double)
        match = _as_threshold(c, raw, offsets)
        if match is None:
            own.append(c)
        else:
            out.thresholds.append(match)
    if own:
        out.con = torch.stack(own, -1)
    return out


def _as_threshold(c: torch.Tensor, raw: torch.Tensor, offsets: list[float | None]) -> tuple[int, float] | None:
    """(objective, b) when ``c == raw[:, objective] - b`` on every trial (the trainable-% budget), else None."""
    for j in range(raw.shape[1]):
        b = raw[:, j] - c
        logged_ok = offsets[j] is None or float(b[0]) + offsets[j] > 0
        if float(b.max() - b.min()) <= 1e-9 * (1.0 + float(b.abs().max())) and logged_ok:
            return j, float(b.mean())
    return None


def peel(y: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of up to ``k`` rows of (n, m) ``y`` (maximised), best non-dominated layers first."""
    from botorch.utils.multi_objective.pareto import is_non_dominated

    left = torch.arange(y.shape[0])
    chosen = []
    while left.numel() and sum(c.numel() for c in chosen) < k:
        mask = is_non_dominated(y[left], deduplicate=False) if y.shape[1] > 1 else y[left, 0] >= y[left, 0].max()
        chosen.append(left[mask])
        left = left[~mask]
    return torch.cat(chosen)[:k] if chosen else left


# --------------------------------------------------------------------------- models
class Marginals:
    """Posterior mean and standard deviation of one GP's latent function at many single points, in outcome units.

    A q = 1 search needs only these; GPyTorch's batch-mode posterior (one (1+n)-point joint covariance per candidate)
    costs about ten times more for them. The training covariance is factored once per fit, and once more per
    proposal when pending points are added (:meth:`believe`).
    """

    def __init__(self, kernel, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor, c: float, mu: float, sd: float,
                 cols: torch.Tensor | None = None, prior: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 weight: float = 0.0):
        from linear_operator.utils.cholesky import psd_safe_cholesky

        self.kernel, self.x, self.y, self.noise, self.c, self.mu, self.sd = kernel, x, y, noise, c, mu, sd
        self.cols = cols  # the input columns this GP reads (None: all); ``x`` holds those columns only
        # a transferred prior mean: this GP models ``value - weight * prior(x)`` (``prior`` reads every column)
        self.prior, self.weight = prior, weight
        with torch.no_grad():
            k = kernel(x, x).to_dense() + noise * torch.eye(len(y), dtype=y.dtype)  # (n, n)
            chol = psd_safe_cholesky(k)
            self.alpha = torch.cholesky_solve((y - c).unsqueeze(-1), chol).squeeze(-1)  # (n,)
            # L^-1 in float32: the variance's (N, n) x (n, n) product is the search's main cost, twice as fast in
            # single precision, and its error stays below 1e-4 of the standard deviation (the noise floor bounds L^-1)
            eye = torch.eye(len(y), dtype=y.dtype)
            self.linv = torch.linalg.solve_triangular(chol, eye, upper=False).float()

    @classmethod
    def of(cls, model, cols: torch.Tensor | None = None, prior: Callable[[torch.Tensor], torch.Tensor] | None = None,
           weight: float = 0.0) -> "Marginals":
        """From a fitted SingleTaskGP with a Standardize outcome transform (its targets are standardised), fitted on
        the input columns ``cols`` (to the residuals of ``weight * prior``, if given)."""
        tf = model.outcome_transform
        return cls(model.covar_module, model.train_inputs[0], model.train_targets, model.likelihood.noise.detach(),
                   float(model.mean_module.constant), float(tf.means.squeeze()), float(tf.stdvs.squeeze()), cols,
                   prior, weight)

    def _prior(self, x: torch.Tensor) -> torch.Tensor | float:
        return self.weight * self.prior(x) if self.prior is not None and self.weight else 0.0

    def _own(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.cols is None else x[..., self.cols]

    def believe(self, x: torch.Tensor, lie: str = "mean") -> "Marginals":
        """This GP conditioned on (k, d) pending points as if they had returned a value: their posterior mean
        (``lie="mean"``, the kriging believer of Ginsbourger et al. 2010) or the worst value observed so far
        (``"worst"``, their constant liar CL-min). Either way the uncertainty near a pending point collapses, so the
        next proposal of a batch goes elsewhere; the worst-value lie also lowers the mean around it, which spreads
        a batch further."""
        if not x.numel():
            return self
        if lie == "mean":
            y = (self(x)[0] - self._prior(x) - self.mu) / self.sd  # standardised (residual of the prior)
        else:
            y = self.y.min().expand(x.shape[0])
        return Marginals(self.kernel, torch.cat([self.x, self._own(x)]), torch.cat([self.y, y]), self.noise, self.c,
                         self.mu, self.sd, self.cols, self.prior, self.weight)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, d) -> mean (N,), std (N,)."""
        shift = self._prior(x)
        x = self._own(x)
        with torch.no_grad():
            ks = self.kernel(x, self.x).to_dense()  # (N, n)
            v = ks.float() @ self.linv.T  # (N, n): L^-1 k(X, x_i)
            var = self.kernel(x, x, diag=True) - v.double().pow(2).sum(-1)
            mean = self.c + ks @ self.alpha
        return mean * self.sd + self.mu + shift, var.clamp_min(1e-12).sqrt() * self.sd


def log_ehvi(mean: torch.Tensor, std: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """log EHVI of N independent Gaussian points, (N, m) mean and std, over C cells [lower, upper] (C, m), maximised.

    The part of cell c dominated by a point y has volume prod_j (min(y_j, u_cj) - l_cj)^+ and, objectives being
    independent, E[(min(Y, u) - l)^+] = E[(Y - l)^+] - E[(Y - u)^+] with E[(Y - a)^+] = s h((mu - a) / s),
    h(z) = phi(z) + z Phi(z) (Emmerich et al. 2006; Yang et al. 2019). All in log space, so points far from the
    front still rank by how far they are.
    """
    from botorch.acquisition.analytic import _log_ei_helper  # log h(z), accurate far into the tails
    from botorch.utils.safe_math import logdiffexp

    mean, std = mean[:, None, :], std[:, None, :]  # (N, 1, m)
    log_l = std.log() + _log_ei_helper((mean - lower) / std)  # (N, C, m)
    finite = torch.isfinite(upper).expand_as(log_l)
    log_u = torch.full_like(log_l, -math.inf)
    z_u = ((mean - upper.clamp_max(1e30)) / std).expand_as(log_l)
    log_u[finite] = (std.expand_as(log_l).log() + _log_ei_helper(z_u))[finite]
    log_len = logdiffexp(log_u, log_l)  # log(E[(Y-l)^+] - E[(Y-u)^+]), (N, C, m)
    return torch.logsumexp(log_len.sum(-1), dim=-1)  # (N,)


# --------------------------------------------------------------------------- the sampler
@contextlib.contextmanager
def _threads(n: int | None):
    """Small GP fits run 3-6x faster on one thread than with OpenMP threads waiting for each other."""
    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


ACQUISITIONS = ("ehvi", "qlognehvi")


class MOBOSampler(optuna.samplers.BaseSampler):
    """Multi-objective BO over a flat mixed space (see the module docstring).

    Before ``n_startup_trials`` trials are complete it returns no joint proposal (autopeft wraps it in a Sobol
    start, :class:`~autopeft.optimize.samplers.StartupThen`); after that every proposal comes from the model:
    ``stats["model"]`` counts them and ``stats["independent"]`` counts parameters it had to leave to the
    independent (random) sampler because they are not in every completed trial (a conditional space; warned once);
    ``fit_seconds``, ``acq_seconds`` and ``scored`` (candidates scored) tell where the time went.
    """

    def __init__(self, *, seed: int | None = None, n_startup_trials: int = 8, acquisition: str = "ehvi",
                 fit_cap: int = 256, raw_samples: int = 256, num_restarts: int = 4, max_steps: int = 10,
                 cold_maxiter: int = 200, warm_maxiter: int = 25, threads: int | None = 1, log_costs: bool = True,
                 believer: str | None = "worst", canonical: Callable[[Any, dict[str, Any]], dict[str, Any]] | None = None,
                 mc_samples: int = 64, baseline_cap: int = 64,
                 inputs: Callable[[Any, dict[str, BaseDistribution]], Callable[[torch.Tensor], torch.Tensor] | None]
                 | None = None, reference: Sequence[float] | Callable[[Any], Sequence[float] | None] | None = None,
                 prior: Callable[[Any, dict[str, BaseDistribution]], Sequence[tuple[dict[str, Any], Sequence[float]]]
                 | None] | None = None, sparsity: bool = False):
        if acquisition not in ACQUISITIONS:
            raise ValueError(f"acquisition: {acquisition!r} is not one of {', '.join(ACQUISITIONS)}")
        self._seed = seed
        self.n_startup_trials = n_startup_trials
        self.acquisition = acquisition
        self.fit_cap = fit_cap  # exact GP up to this many completed trials, a subset of this size above
        self.raw_samples = raw_samples
        self.num_restarts = num_restarts
        self.max_steps = max_steps
        self.cold_maxiter = cold_maxiter
        self.warm_maxiter = warm_maxiter
        self.threads = threads
        self.log_costs = log_costs
        # pending points: conditioned on at the worst observed value ("worst"), at their posterior mean ("mean"),
        # or only kept out of (None)
        self.believer = believer
        # (study, params) -> the canonical params of the same plan: the GP then sees one point per plan, and no
        # proposal repeats a plan under other parameters (a layer switch of a module that is off, say)
        self.canonical = canonical
        self._canon: dict[int, dict[str, Any]] = {}
        # (study, search space) -> a map of (..., p) choice indices to the GP's inputs, or None for the plain
        # encoding; autopeft's make_sampler passes the plan's slots (:class:`ProductInputs`)
        self.inputs = inputs
        # EHVI's reference point in the objectives' own units (e.g. score 0, 100 % trainable), or a function of the
        # study giving one (or None); None: inferred from the posterior-mean front (its nadir, 10 % beyond).
        # autopeft's make_sampler passes the point the CLI and dashboard measure hypervolume against.
        self.reference = reference
        # (study, search space) -> observations of a finished study of another task or model, mapped into this
        # study's parameters: [(params, objective values)], or None. Each objective modelled on its own scale (the
        # score, not a log cost) then gets a transferred prior mean: a GP fitted once to those observations, scaled by
        # the least-squares weight (>= 0) that fits this study's own results, and this study's GP models what is
        # left (ehvi only; :meth:`_prior_means`). Only benchmarks/warm_start.py's prior arms pass one (the source's
        # results, autopeft.transfer.prior_observations): measured, it was no reliable win (docs/benchmarks.md, "A
        # transferred prior instead of carried plans"), so ``autopeft run`` does not.
        self.prior = prior
        # SAAS-style sparsity (as SAAS-BO, MAP-fitted): a half-Cauchy shrinkage prior on every GP's inverse squared
        # length-scales instead of BoTorch's dimension-scaled log-normal one, so that most inputs are switched off
        # unless the data need them. Measured, it ranks unseen plans worse and searches no better (docs/benchmarks.md,
        # "What the score's GP reads"), so the default keeps BoTorch's prior; benchmarks pass it as an ablation.
        self.sparsity = sparsity
        self._priors: dict[Any, dict[int, Callable[[torch.Tensor], torch.Tensor]]] = {}
        self.mc_samples = mc_samples  # qlognehvi only
        self.baseline_cap = baseline_cap  # qlognehvi only: observed points it integrates over
        self._space = IntersectionSearchSpace()
        self._independent = optuna.samplers.RandomSampler(seed=seed)
        self._cache_key: str | None = None
        self._cache: dict[str, Any] = {}
        self._hypers: dict[int, dict[str, torch.Tensor]] = {}  # output -> last fitted hyperparameters
        self.fit_count = 0
        self.stats = {"model": 0, "independent": 0, "fit_seconds": 0.0, "acq_seconds": 0.0, "scored": 0}
        self._warned = False

    # ------------------------------------------------------------ Optuna's sampler interface
    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return {n: d for n, d in self._space.calculate(study).items() if not d.single()}

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        if not search_space:
            return {}
        complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if all(n in t.params for n in search_space)]
        if len(complete) < max(2, self.n_startup_trials):
            return {}
        with _threads(self.threads), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # botorch's numerical notes (jitter added, input checks) are expected
            params = self._propose(study, trial, search_space, complete)
        self.stats["model"] += 1
        return params

    def sample_independent(self, study, trial, param_name, param_distribution):
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        if done >= self.n_startup_trials:
            self.stats["independent"] += 1
            if not self._warned:
                self._warned = True
                log.warning("parameter %r is not in every completed trial: sampled at random, not by the model "
                            "(keep the space flat: size 0 = off)", param_name)
        return self._independent.sample_independent(study, trial, param_name, param_distribution)

    def reseed_rng(self) -> None:
        self._independent.reseed_rng()

    # ------------------------------------------------------------ one proposal
    def _propose(self, study, trial, space, complete: list[FrozenTrial]) -> dict[str, Any]:
        grid = ChoiceGrid(space, inputs=self.inputs(study, space) if self.inputs is not None else None)
        running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                   if t.number != trial.number and all(n in t.params for n in space)]
        failed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                  if all(n in t.params for n in space)]
        seed = self._call_seed(len(complete), [t.number for t in running])
        started = time.perf_counter()
        fit = self._fitted(study, grid, space, complete, seed)
        self.stats["fit_seconds"] += time.perf_counter() - started
        started = time.perf_counter()
        p_pending = [self._canonical(study, t) for t in running]
        z_pending = grid.rows(p_pending)
        if self.acquisition == "ehvi":
            score = self._ehvi(fit, grid.encode(z_pending), self._reference(study))
        else:
            acqf = self._qlognehvi(fit, grid.encode(z_pending), seed, self._reference(study))
            score = lambda x: acqf(x.unsqueeze(-2))  # noqa: E731  (N, d) -> (N,)
        p_failed = [self._canonical(study, t) for t in failed]
        avoid = torch.cat([fit["z"], z_pending, grid.rows(p_failed)])
        ranked = self._optimise(score, grid, fit, avoid, seed)
        params = grid.params(ranked[0])
        if self.canonical is not None:  # the best candidate whose plan is new (several rows may be one plan)
            seen = {_pkey(p) for p in fit["params"] + p_pending + p_failed}
            for z in ranked:
                params = self.canonical(study, grid.params(z))
                if _pkey(params) not in seen:
                    break
        self.stats["acq_seconds"] += time.perf_counter() - started
        return params

    def _canonical(self, study, trial: FrozenTrial) -> dict[str, Any]:
        """The trial's parameters in canonical form (cached per trial), or as they are without ``canonical``."""
        if self.canonical is None:
            return trial.params
        if trial.number not in self._canon:
            self._canon[trial.number] = self.canonical(study, dict(trial.params))
        return self._canon[trial.number]

    def _call_seed(self, n_complete: int, pending: list[int]) -> int:
        """The same study state gives the same proposal; a new pending point or result gives a new draw."""
        text = f"{self._seed}:{n_complete}:{sorted(pending)}"
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")

    # ------------------------------------------------------------ models
    def _fitted(self, study, grid: ChoiceGrid, space, complete: list[FrozenTrial], seed: int) -> dict[str, Any]:
        """The models for these completed trials: cached while the trials, values and constraints are unchanged."""
        source = self._prior_data(study, space)
        key = hashlib.sha256(repr((sorted(space), [(t.number, t.values, sorted(t.constraints.items()))
                                                   for t in complete], len(source))).encode()).hexdigest()
        if key == self._cache_key:
            return self._cache
        params = [self._canonical(study, t) for t in complete]
        z = grid.rows(params)  # (n, p)
        x = grid.encode(z)  # (n, d)
        out = outcomes(complete, study.directions, log_costs=self.log_costs)
        ys = [out.y[:, j : j + 1] for j in range(out.y.shape[1])]
        if out.con is not None:
            ys += [out.con[:, k : k + 1] for k in range(out.con.shape[1])]
        rows = None
        if x.shape[0] > self.fit_cap:
            gen = torch.Generator().manual_seed(seed)
            best = peel(out.y, self.fit_cap // 2)
            rest = torch.ones(x.shape[0], dtype=torch.bool)
            rest[best] = False
            others = rest.nonzero().squeeze(-1)
            others = others[torch.randperm(others.numel(), generator=gen)[: self.fit_cap - best.numel()]]
            rows = torch.cat([best, others])
        cols = [self._columns(grid, out, i) for i in range(len(ys))]
        priors = self._prior_means(study, grid, space, out, cols, source) if source else {}
        xr = x if rows is None else x[rows]
        models, weights = [], []
        for i, (y, c) in enumerate(zip(ys, cols)):
            y = y if rows is None else y[rows]
            weight = 0.0
            if i in priors:
                p = priors[i](xr).unsqueeze(-1)  # (n, 1)
                weight = prior_weight(p, y)
                y = y - weight * p
            models.append(self._fit_gp(i, _take(xr, c), y))
            weights.append(weight)
        self.fit_count += 1
        fit = {"params": params, "z": z, "x": x, "out": out, "models": models, "prior_weights": weights}
        if self.acquisition == "ehvi":
            fit["marginals"] = [Marginals.of(mdl, c, priors.get(i), w)
                                for i, (mdl, c, w) in enumerate(zip(models, cols, weights))]
        self._cache_key, self._cache = key, fit
        return fit

    def _prior_data(self, study, space) -> list[tuple[dict[str, Any], Sequence[float]]]:
        """The transferred observations for ``study`` (none without ``prior``, or under qlognehvi)."""
        if self.prior is None or self.acquisition != "ehvi":
            return []
        return list(self.prior(study, space) or [])

    def _prior_means(self, study, grid: ChoiceGrid, space, out: Outcomes, cols: list[torch.Tensor | None],
                     source: list[tuple[dict[str, Any], Sequence[float]]]) -> dict[int, Callable]:
        """Output -> the posterior mean (model units; (N, d) -> (N,)) of a GP fitted once to the transferred
        observations, for every objective modelled on its own scale. A log-modelled cost (trainable %) gets none:
        its GP learns it from a handful of this study's own trials."""
        key = (getattr(study, "study_name", None), tuple(sorted(space)), len(source))
        if key not in self._priors:
            params = [self.canonical(study, dict(p)) if self.canonical is not None else dict(p) for p, _ in source]
            xs = grid.encode(grid.rows(params))
            raw = torch.tensor([list(v) for _, v in source], dtype=torch.double)
            means: dict[int, Callable] = {}
            for j in range(out.y.shape[1]):
                if out.offsets[j] is not None:
                    continue
                ys = out.signs[j] * raw[:, j : j + 1]
                model = self._fit_gp(("prior", j), _take(xs, cols[j]), ys)
                means[j] = lambda x, f=Marginals.of(model, cols[j]): f(x)[0]
            self._priors[key] = means
        return self._priors[key]

    def _columns(self, grid: ChoiceGrid, out: Outcomes, i: int) -> torch.Tensor | None:
        """The input columns output ``i``'s GP reads. With :class:`ProductInputs`: a cost modelled in log space
        (trainable %, step time) reads the parameters and the other objectives read the plan's slots, except under
        a constraint (a trainable-% budget), where every GP reads the parameters. None (all columns) otherwise, and
        always for ``qlognehvi``, whose BoTorch models are called on every column.

        Measured on the tabular benchmark (docs/benchmarks.md): a score GP on the slots ranks unseen plans better
        and the search's hypervolume rises, but it is also more optimistic about large plans, so under a budget
        more proposals land over it (23 of 72 against 17, ``benchmarks/plan_inputs.py``): a budgeted search keeps
        the parameters."""
        inputs = grid.inputs
        if not isinstance(inputs, ProductInputs) or self.acquisition != "ehvi":
            return None
        if out.thresholds or out.con is not None:
            return inputs.param_cols
        cost = i < len(out.offsets) and out.offsets[i] is not None
        return inputs.param_cols if cost else inputs.plan_cols

    def _fit_gp(self, i: int, x: torch.Tensor, y: torch.Tensor):
        """An exact GP on (x, y): hyperparameters from the previous fit (if any) refined by a few L-BFGS steps."""
        from botorch.optim.fit import fit_gpytorch_mll_scipy
        from gpytorch.mlls import ExactMarginalLogLikelihood

        model = exact_gp(x, y, self.sparsity)
        previous = self._hypers.get(i)
        warm = previous is not None and _same_shapes(model, previous)
        if warm:
            model.load_state_dict(previous, strict=False)
        mll = ExactMarginalLogLikelihood(model.likelihood, model)
        mll.train()
        fit_gpytorch_mll_scipy(mll, options={"maxiter": self.warm_maxiter if warm else self.cold_maxiter})
        mll.eval()
        self._hypers[i] = {k: v.detach().clone() for k, v in model.state_dict().items()
                           if not k.startswith("outcome_transform")}
        return model

    # ------------------------------------------------------------ acquisition
    def _reference(self, study) -> list[float] | None:
        """The configured reference point for ``study`` in the objectives' units, or None (inferred)."""
        given = self.reference(study) if callable(self.reference) else self.reference
        return None if given is None else [float(r) for r in given]

    def _ehvi(self, fit: dict[str, Any], x_pending: torch.Tensor, reference: list[float] | None = None):
        """(N, d) -> (N,) log EHVI over the posterior-mean front of observed and pending points, plus the log
        probability of meeting every constraint."""
        from botorch.utils.multi_objective.box_decompositions.non_dominated import FastNondominatedPartitioning
        from botorch.utils.multi_objective.hypervolume import infer_reference_point
        from botorch.utils.multi_objective.pareto import is_non_dominated
        from torch.special import log_ndtr

        out: Outcomes = fit["out"]
        m = out.y.shape[1]
        marginals = fit["marginals"]
        # objectives are believed as configured; a constraint's own GP at its mean (its "worst" would be feasible)
        pending_marginals = [f.believe(x_pending, self.believer if i < m else "mean") for i, f in enumerate(marginals)] \
            if self.believer else marginals

        def predict(x, fs=marginals):  # (N, d) -> mean, std (N, o)
            ms = [f(x) for f in fs]
            return torch.stack([a for a, _ in ms], -1), torch.stack([b for _, b in ms], -1)

        def log_feasible(mean, std):  # (N,)
            total = torch.zeros(mean.shape[0], dtype=mean.dtype)
            for j, b in out.thresholds:  # raw_j <= b  <=>  sign_j * Y_j <= f(b)
                fb, s = out.to_model(j, b) * out.signs[j], out.signs[j]
                total = total + log_ndtr((fb - s * mean[:, j]) / std[:, j])
            for k in range(m, mean.shape[1]):
                total = total + log_ndtr(-mean[:, k] / std[:, k])
            return total

        mean_obs, std_obs = predict(fit["x"])
        feasible = _feasible(out)
        front = mean_obs[feasible, :m]
        if x_pending.numel() and self.believer == "mean":  # pending points as if they returned their posterior mean
            mean_p, std_p = predict(x_pending)
            front = torch.cat([front, mean_p[log_feasible(mean_p, std_p) > math.log(0.5), :m]])
        if m == 1:
            lower = front.max(0, keepdim=True).values if front.numel() else mean_obs[:, :1].min(0, keepdim=True).values
            upper = torch.full_like(lower, math.inf)
        else:
            if reference is not None:
                ref = _model_reference(reference, out)
            else:
                anchor = mean_obs[feasible, :m] if feasible.any() else mean_obs[:, :m]
                ref = infer_reference_point(anchor[is_non_dominated(anchor)])
            lower, upper = FastNondominatedPartitioning(ref_point=ref, Y=front[is_non_dominated(front)]) \
                .get_hypercell_bounds()

        def score(x):
            mean, std = predict(x, pending_marginals)
            return log_ehvi(mean[:, :m], std[:, :m], lower, upper) + log_feasible(mean, std)

        return score

    def _qlognehvi(self, fit: dict[str, Any], x_pending: torch.Tensor, seed: int, reference: list[float] | None = None):
        from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement
        from botorch.acquisition.multi_objective.objective import IdentityMCMultiOutputObjective
        from botorch.models import ModelListGP
        from botorch.sampling import SobolQMCNormalSampler
        from botorch.utils.multi_objective.hypervolume import infer_reference_point
        from botorch.utils.multi_objective.pareto import is_non_dominated

        out: Outcomes = fit["out"]
        m = out.y.shape[1]
        if m == 1:
            raise ValueError("acquisition='qlognehvi' needs two or more objectives; use 'ehvi'")
        constraints = []
        for j, b in out.thresholds:
            fb, s = out.to_model(j, b) * out.signs[j], out.signs[j]
            constraints.append(lambda Z, j=j, fb=fb, s=s: s * Z[..., j] - fb)
        for k in range(0 if out.con is None else out.con.shape[1]):
            constraints.append(lambda Z, k=k: Z[..., m + k])
        feasible = _feasible(out)
        front = out.y[feasible][is_non_dominated(out.y[feasible])] if feasible.any() else out.y
        ref = infer_reference_point(front) if reference is None else _model_reference(reference, out)
        return qLogNoisyExpectedHypervolumeImprovement(
            ModelListGP(*fit["models"]), ref_point=ref,
            X_baseline=fit["x"][peel(out.y, self.baseline_cap)],
            sampler=SobolQMCNormalSampler(sample_shape=torch.Size([self.mc_samples]), seed=seed),
            objective=IdentityMCMultiOutputObjective(outcomes=list(range(m))) if out.con is not None else None,
            constraints=constraints or None, X_pending=x_pending if x_pending.numel() else None, prune_baseline=True)

    def _optimise(self, score, grid: ChoiceGrid, fit: dict[str, Any], avoid: torch.Tensor, seed: int) -> torch.Tensor:
        """(R, p) grid points, best first: the local optima found, then the next best starts (fallbacks for when
        the optima turn out to be known plans). Seeded random rows and mutations of the observed front are scored,
        then the best ``num_restarts`` move to their best one-parameter neighbour, all at once, until none improves.

        Written here rather than with ``botorch.optim.optimize_acqf_discrete_local_search``, which walks one
        start at a time and scores one batch of neighbours per step: moving every start per batch is several
        times fewer acquisition calls for the same search.
        """
        gen = torch.Generator().manual_seed(seed)
        seen = grid.keys(avoid)
        z_front = fit["z"][peel(fit["out"].y, 16)]
        starts = torch.cat([grid.random(self.raw_samples, gen), grid.mutate(z_front.repeat(8, 1), gen)])
        keys = grid.keys(starts)
        _, first = np.unique(keys.numpy(), return_index=True)  # each start once, never a seen point
        first = torch.from_numpy(np.sort(first))
        starts = starts[first[~torch.isin(keys[first], seen)]]
        if not starts.shape[0]:  # a tiny space, all of it seen: take any point
            starts = grid.random(1, gen)
        values = _batched(score, grid, starts)
        self.stats["scored"] += starts.shape[0]
        order = values.argsort(descending=True)[: self.num_restarts]
        current, best = starts[order], values[order]
        active = torch.ones(len(order), dtype=torch.bool)  # starts still climbing
        for _ in range(self.max_steps):
            moves = grid.neighbours(current[active])  # (r, K, p)
            r, k, p = moves.shape
            flat = moves.reshape(r * k, p)
            ok = (moves != current[active][:, None, :]).any(-1).reshape(-1) & ~torch.isin(grid.keys(flat), seen)
            scores = torch.full((r * k,), -math.inf, dtype=torch.double)
            if ok.any():
                scores[ok] = _batched(score, grid, flat[ok])
                self.stats["scored"] += int(ok.sum())
            top, arg = scores.reshape(r, k).max(-1)
            better = top > best[active]
            idx = active.nonzero().squeeze(-1)
            current[idx[better]] = moves[better, arg[better]]
            best[idx[better]] = top[better]
            active[idx[~better]] = False
            if not active.any():
                break
        order = best.argsort(descending=True)
        rest = values.argsort(descending=True)[: 8 * self.num_restarts]
        return torch.cat([current[order], starts[rest]])


def exact_gp(x: torch.Tensor, y: torch.Tensor, sparsity: bool = False):
    """The unfitted GP the sampler fits to (x, y): BoTorch's ``SingleTaskGP`` with standardised outcomes, under
    BoTorch's default length-scale prior or, with ``sparsity``, the SAAS prior on an RBF kernel."""
    from botorch.models import SingleTaskGP
    from botorch.models.transforms import Standardize

    if not sparsity:
        return SingleTaskGP(x, y, outcome_transform=Standardize(m=1))
    from botorch.models.map_saas import add_saas_prior
    from gpytorch.kernels import RBFKernel

    kernel = add_saas_prior(RBFKernel(ard_num_dims=x.shape[-1]))
    return SingleTaskGP(x, y, covar_module=kernel, outcome_transform=Standardize(m=1))


def prior_weight(p: torch.Tensor, y: torch.Tensor) -> float:
    """The least-squares slope (>= 0) of (n, 1) ``y`` on a transferred prior mean ``p`` at the same points: how much
    of the other study's trend this one follows (0 when it does not, or when ``p`` is flat there)."""
    pc, yc = p - p.mean(), y - y.mean()
    var = float((pc * pc).sum())
    return max(0.0, float((pc * yc).sum()) / var) if var > 1e-12 else 0.0


def _feasible(out: Outcomes) -> torch.Tensor:
    """(n,) which observed trials met every constraint."""
    ok = torch.ones(out.y.shape[0], dtype=torch.bool)
    for j, b in out.thresholds:
        ok &= out.signs[j] * out.y[:, j] <= out.to_model(j, b) * out.signs[j] + 1e-12
    if out.con is not None:
        ok &= (out.con <= 0).all(-1)
    return ok


def _within(reference: list[float], out: Outcomes) -> list[float]:
    """``reference`` moved onto the thresholds it lies beyond (a trainable-% budget below 100 %): a trial past a
    threshold never enters the front, so the region beyond it adds no hypervolume."""
    ref = list(reference)
    for j, b in out.thresholds:
        ref[j] = min(ref[j], b) if out.signs[j] < 0 else max(ref[j], b)
    return ref


def _model_reference(reference: list[float], out: Outcomes) -> torch.Tensor:
    """(m,) ``reference`` (objectives' units) within the thresholds, in the model's space."""
    return torch.tensor([out.to_model(j, r) for j, r in enumerate(_within(reference, out))], dtype=out.y.dtype)


def _take(x: torch.Tensor, cols: torch.Tensor | None) -> torch.Tensor:
    return x if cols is None else x[..., cols]


def _same_shapes(model, state: dict[str, torch.Tensor]) -> bool:
    own = model.state_dict()
    return all(k in own and own[k].shape == v.shape for k, v in state.items())


def _pkey(params: dict[str, Any]) -> tuple:
    return tuple(sorted(params.items()))


def _batched(score, grid: ChoiceGrid, z: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Scores of (N, p) rows, ``chunk`` at a time."""
    with torch.no_grad():
        return torch.cat([score(grid.encode(z[i : i + chunk])) for i in range(0, z.shape[0], chunk)])
