"""The replay objective: answer a trial from a table of plans trained earlier (``--objective replay --table F``).

A table (``benchmarks/build_table.py`` writes them, JSON lines) holds a header with the fidelity it was trained
at (and the space its parameters belong to) and one line per plan: its Optuna parameters or the plan itself,
and its recorded metrics. Replaying a trial takes
milliseconds instead of a training run, so a whole search over real scores runs in seconds: sampler
comparisons (``benchmarks/search_quality.py``) and dry runs use it. The table path is part of the fidelity,
so replayed trials never mix with trained ones.

A plan is answered by the recorded plan equal to it (exact lookup); failing that, by the nearest recorded
plan under :func:`plan_distance`, and the replayed metrics are that plan's, unchanged. A recorded failure
replays as a failure. :attr:`ReplayEvaluator.last_match` tells which row answered and how far it was.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

from autopeft.errors import StudyError
from autopeft.plan import ModuleSpec, PeftPlan
from autopeft.proxy.fidelity import Fidelity
from autopeft.proxy.train import TrialFailed, TrialMetrics

#: Fidelity fields that are not the training budget: a replay study's own settings.
REPLAY_FIELDS = ("objective", "table", "trial_seconds")
#: TrialMetrics fields a table row records (``adapter_state`` is never stored).
METRIC_FIELDS = ("score", "test_score", "metric", "trainable_params", "module_params", "base_params",
                 "trainable_pct", "step_time", "peak_memory", "train_loss", "wall_time")


def plan_key(plan: PeftPlan) -> str:
    """A canonical string of the plan: equal plans, and only they, have equal keys."""
    return json.dumps(plan.to_dict(), sort_keys=True, separators=(",", ":"))


# --------------------------------------------------------------------------- distance
Slots = dict[tuple[int, str, str], ModuleSpec]  # (layer, method, site) -> module


def slots(plan: PeftPlan) -> Slots:
    return {(i, m.method, m.site): m for i, m in plan.modules()}


def _log2(x: float) -> float:
    return math.log2(1 + x)


def module_distance(a: ModuleSpec, b: ModuleSpec) -> float:
    """Distance of two modules of one method on one site, in [0, 1]: size and expert count compared on a
    log2 scale (the spaces grid them in powers of two; 4 doublings apart count fully), a different variant,
    top-k or alpha a quarter each."""
    d = (abs(_log2(a.size) - _log2(b.size)) + abs(_log2(a.num_experts) - _log2(b.num_experts))) / 4
    d += 0.25 * ((a.variant != b.variant) + (a.top_k != b.top_k) + (a.alpha != b.alpha))
    return min(1.0, d)


def slot_distance(a: Slots, b: Slots) -> float:
    """Plan distance on slots: each (layer, method, site) holding a module in one plan only counts 1, each held
    in both counts :func:`module_distance`. Zero only for equal plans; a plan one module away is at 1."""
    total = 0.0
    for key, m in a.items():
        other = b.get(key)
        total += 1.0 if other is None else module_distance(m, other)
    return total + sum(1.0 for key in b if key not in a)


def plan_distance(a: PeftPlan, b: PeftPlan) -> float:
    """:func:`slot_distance` of two plans (same number of layers)."""
    return slot_distance(slots(a), slots(b))


# --------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Match:
    """Which table row answered a plan: its id, the distance to it, and whether it was an exact lookup."""

    row_id: str
    distance: float
    index: int = -1  # the row's position in the table

    @property
    def exact(self) -> bool:
        return self.distance == 0.0


class ReplayTable:
    """A table of recorded plans, indexed for exact and nearest lookup."""

    def __init__(self, header: Mapping[str, Any], rows: list[dict[str, Any]], source: str = "<table>"):
        self.header = dict(header)
        self.source = source
        self.rows = rows
        self.plans = [self._plan(r) for r in rows]
        self._slots = [slots(p) for p in self.plans]
        self._by_key = {}
        for i, p in enumerate(self.plans):
            self._by_key.setdefault(plan_key(p), i)  # a plan recorded twice: the first record answers

    def _plan(self, row: Mapping[str, Any]) -> PeftPlan:
        """A row's plan: stored, or decoded from its parameters through the header's space (a list of choice
        indices in ``param_names`` order, or a mapping of name to index)."""
        if row.get("plan") is not None:
            return PeftPlan.from_dict(row["plan"])
        params = row["params"]
        if not isinstance(params, Mapping):
            params = dict(zip(self.header["param_names"], params))
        return self.space.decode(params)

    @cached_property
    def space(self):
        """The space the table's parameters belong to (from the header)."""
        from autopeft.space import ModelDims, SearchSpace, parse_space

        if "space_yaml" not in self.header or "dims" not in self.header:
            raise StudyError(f"--table: {self.source!r} has rows with parameters only and no space in its header; "
                             "rebuild it with benchmarks/build_table.py")
        spec = parse_space(self.header["space_yaml"], source=f"table {self.source}")
        d = self.header["dims"]
        return SearchSpace(spec, ModelDims(d["num_layers"], d["hidden_size"], tuple(d["sites"])), source=spec.name)

    @classmethod
    def load(cls, path: str | Path) -> "ReplayTable":
        header, rows = read_table(path)
        return cls(header, rows, source=str(path))

    @property
    def fidelity(self) -> Fidelity:
        """The fidelity the table's plans were trained at."""
        return Fidelity(**self.header["fidelity"])

    def check_fidelity(self, fidelity: Fidelity) -> None:
        """Refuse a replay fidelity whose budget differs from the table's: its scores would be mislabelled."""
        mine = {k: v for k, v in self.fidelity.model_dump().items() if k not in REPLAY_FIELDS}
        asked = {k: v for k, v in fidelity.model_dump().items() if k not in REPLAY_FIELDS}
        diffs = [k for k in mine if mine[k] != asked[k]]
        if diffs:
            k = diffs[0]
            raise StudyError(
                f"--{k.replace('_', '-')}: the table {self.source!r} was trained with {k}={mine[k]!r}, the study "
                f"asks {asked[k]!r}; drop the flag (a replay study takes the table's fidelity) or use a table "
                "built at that fidelity")

    def lookup(self, plan: PeftPlan, exclude: set[int] | frozenset[int] = frozenset()) -> tuple[dict[str, Any], Match]:
        """The row answering ``plan``: the equal recorded plan, else the nearest (first in table order on ties)
        among the rows not in ``exclude`` (row positions; all rows when every one is excluded)."""
        exact = self._by_key.get(plan_key(plan))
        if exact is not None:
            return self.rows[exact], Match(self.rows[exact]["id"], 0.0, exact)
        if plan.num_layers != self.plans[0].num_layers:
            raise StudyError(f"--table: the table {self.source!r} holds {self.plans[0].num_layers}-layer plans, "
                             f"the trial's plan has {plan.num_layers} layers; use a table of this model")
        # A linear scan: a few hundred rows of tens of slots, about a millisecond; no index is worth it here.
        want = slots(plan)
        dists = [slot_distance(want, s) for s in self._slots]
        allowed = ([i for i in range(len(dists)) if i not in exclude] if exclude else None) or range(len(dists))
        best = min(allowed, key=dists.__getitem__)
        return self.rows[best], Match(self.rows[best]["id"], dists[best], best)


def row_metrics(row: Mapping[str, Any], wall_time: float | None = None) -> TrialMetrics:
    values = {k: row[k] for k in METRIC_FIELDS}
    if wall_time is not None:
        values["wall_time"] = wall_time
    return TrialMetrics(**values)


_TABLES: dict[tuple[str, float], ReplayTable] = {}


def read_table(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(header, rows) of a table file of ``benchmarks/build_table.py``, every row as recorded (failed ones too);
    raises :class:`StudyError` naming the fix for a missing, header-less or empty file."""
    p = Path(path)
    if not p.is_file():
        raise StudyError(f"--table: {str(path)!r} is not a file; build one with benchmarks/build_table.py "
                         "or pass the path of an existing table")
    lines = [line for line in p.read_text().splitlines() if line.strip()]
    try:
        header = json.loads(lines[0]) if lines else {}
        # The last line may be cut short by a build that was killed while writing: it is skipped.
        rows = []
        for line in lines[1:]:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    except json.JSONDecodeError as exc:
        raise StudyError(f"--table: {str(path)!r} is not a replay table (its header is not JSON: {exc})") from None
    if header.get("kind") != "header" or "fidelity" not in header:
        raise StudyError(f"--table: {str(path)!r} is not a replay table (no header line with the fidelity); "
                         "build one with benchmarks/build_table.py")
    if not rows:
        raise StudyError(f"--table: {str(path)!r} records no plan yet; let benchmarks/build_table.py run longer")
    return header, rows


def load_table(path: str | Path) -> ReplayTable:
    """:meth:`ReplayTable.load`, cached per file and modification time (many studies replay one table)."""
    p = Path(path)
    key = (str(p.resolve()), p.stat().st_mtime if p.is_file() else 0.0)
    if key not in _TABLES:
        _TABLES[key] = ReplayTable.load(path)
    return _TABLES[key]


class ReplayEvaluator:
    """An evaluator (as workers use) that answers each plan from the fidelity's table.

    ``distinct=True`` answers a plan the table does not record with the nearest recorded plan *this evaluator has
    not answered yet* (a recorded plan is still answered by its own row). A real search measures every distinct
    plan anew; with plain nearest lookups, proposals close to each other, as a local search makes them, get the
    same recorded answer again and again (``benchmarks/search_quality.py --replay`` compares both).
    """

    def __init__(self, fidelity: Fidelity, distinct: bool = False):
        if fidelity.objective != "replay" or not fidelity.table:
            raise StudyError("--objective: the replay evaluator needs --objective replay and --table")
        self.fidelity = fidelity
        self.table = load_table(fidelity.table)
        self.table.check_fidelity(fidelity)
        self.last_match: Match | None = None
        self.distinct = distinct
        self._answered: set[int] = set()  # rows answered so far (distinct only)

    def run(self, plan: PeftPlan) -> TrialMetrics:
        """The recorded metrics of the plan's row (its recorded wall time: the cost the plan took to train)."""
        started = time.monotonic()
        row, self.last_match = self.table.lookup(plan, self._answered)
        if self.distinct:
            self._answered.add(self.last_match.index)
        if self.fidelity.trial_seconds:
            time.sleep(max(0.0, self.fidelity.trial_seconds - (time.monotonic() - started)))
        if row.get("state", "COMPLETE") != "COMPLETE":
            raise TrialFailed(f"replayed from {row['id']} (distance {self.last_match.distance:g}): "
                              f"{row.get('reason', 'recorded as failed')}")
        return row_metrics(row)
