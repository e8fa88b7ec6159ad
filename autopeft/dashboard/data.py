"""Plot data for the dashboard, computed apart from drawing: plain functions of a study's trials.

Every function takes the trial frame (:func:`trial_frame`, one row per trial) or a plan and returns a
``pandas.DataFrame`` (or a small dataclass of them) that ``autopeft.dashboard.figures`` draws. Nothing here
imports Streamlit or Plotly.

Fidelity: a trial's fidelity is its ``fidelity`` user attribute (trials that have not run yet take the
study's). Fronts, hypervolume and best-score curves are computed for one fidelity at a time (the caller picks
the rows with ``fidelity_key``); results of different fidelities are never mixed on one curve.
"""

from __future__ import annotations

import io
import math
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import yaml
from botorch.utils.multi_objective.hypervolume import Hypervolume
from botorch.utils.multi_objective.pareto import is_non_dominated

from autopeft.analysis import trial_row
from autopeft.artifacts import ATTR as ARTIFACT_ATTR
from autopeft.errors import PlanError, StudyError
from autopeft.export import export_trial, plan_document
from autopeft.optimize.pareto import default_reference_point
from autopeft.peft.methods import get_method
from autopeft.plan import BLOCK_SITES, LINEAR_SITES, METHODS, ModuleSpec, PeftPlan
from autopeft.proxy.fidelity import Fidelity
from autopeft.space.schema import OBJECTIVES

#: Numeric columns of the trial frame (metrics a trial reports; objectives are among them).
METRIC_COLUMNS: tuple[str, ...] = (
    "score", "test_score", "trainable_pct", "trainable_params", "step_time", "peak_memory",
)
#: Axis titles of the objectives and metrics.
LABELS: dict[str, str] = {
    "score": "score (validation)",
    "test_score": "test score",
    "trainable_pct": "trainable parameters (%)",
    "trainable_params": "trainable parameters",
    "step_time": "step time (s)",
    "peak_memory": "peak memory (MiB)",
}
STUDY_FIDELITY = "study"
#: Study user attribute with results recorded outside the search (see :func:`recorded_baselines`).
BASELINES_ATTR = "baselines"
#: Point status on a front plot.
FRONT, DOMINATED, OVER_BUDGET = "Pareto front", "dominated", "over budget"


# ----------------------------------------------------------------------------- the trial frame
def fidelity_key(fidelity: Mapping[str, Any] | None, study_fidelity: Mapping[str, Any]) -> str:
    """``"study"`` for the study's fidelity (or none recorded: the trial has not run yet), otherwise the
    fields that differ, e.g. ``"steps=600, train_examples=8000"``."""
    if not fidelity:
        return STUDY_FIDELITY
    # Fields added to Fidelity after a trial was recorded take their defaults, as when a study is resumed.
    defaults = Fidelity().model_dump()
    fidelity, study_fidelity = {**defaults, **fidelity}, {**defaults, **study_fidelity}
    if fidelity == study_fidelity:
        return STUDY_FIDELITY
    keys = sorted(set(fidelity) | set(study_fidelity))
    diff = [f"{k}={fidelity.get(k)}" for k in keys if fidelity.get(k) != study_fidelity.get(k)]
    return ", ".join(diff)


def known_baseline(plan: PeftPlan) -> str:
    """The name of a baseline everyone knows when ``plan`` is one ("" otherwise): the head-only linear probe,
    or plain LoRA r=8 on the query and value projections of every layer (the LoRA paper's setting)."""
    if plan.is_empty:
        return "head only"
    lora_qv = {(m.method, m.site, m.size, m.alpha in (None, 16.0), m.variant) for m in plan.layers[0]}
    if lora_qv == {("lora", "q", 8, True, None), ("lora", "v", 8, True, None)} and all(
            layer == plan.layers[0] for layer in plan.layers):
        return "LoRA r=8 on q,v"
    return ""


def _plan_info(plan: Mapping[str, Any] | None) -> tuple[str, str]:
    """(comma list of the module types a stored plan uses, known baseline name); ("", "") without a plan."""
    if not plan:
        return "", ""
    try:
        parsed = PeftPlan.from_dict(plan)
    except PlanError:
        return "", ""
    return ", ".join(parsed.methods()), known_baseline(parsed)


def record_row(trial, study_fidelity: Mapping[str, Any], objectives: Sequence[str]) -> dict[str, Any]:
    """One trial frame row. ``trial`` is a ``FrozenTrial`` or anything with the same attributes."""
    r = trial_row(trial)
    modules, baseline = _plan_info(trial.user_attrs.get("plan"))
    row: dict[str, Any] = {
        "number": r.number,
        "state": r.state,
        "anchor": trial.user_attrs.get("anchor") or baseline,  # queued as a baseline, or a known one anyway
        "modules": modules,
        "summary": r.summary,
        "fail_reason": r.fail_reason or "",
        "feasible": r.feasible,
        "fidelity": fidelity_key(trial.user_attrs.get("fidelity"), study_fidelity),
        "started": trial.datetime_start,
        "completed": trial.datetime_complete,
    }
    for col in METRIC_COLUMNS:
        value = getattr(r, col)
        row[col] = float("nan") if value is None else float(value)
    # Objectives without a metrics entry (e.g. trials told by hand) take the told values.
    if trial.values is not None:
        for name, value in zip(objectives, trial.values):
            if math.isnan(row.get(name, float("nan"))):
                row[name] = float(value)
    return row


FRAME_COLUMNS: tuple[str, ...] = (
    "number", "state", "anchor", "modules", "summary", "fail_reason", "feasible", "fidelity", "started",
    "completed", *METRIC_COLUMNS,
)


class TrialFrame:
    """Builds the trial frame, converting each finished trial once (finished trials never change)."""

    def __init__(self, study_fidelity: Mapping[str, Any], objectives: Sequence[str]):
        self.study_fidelity = dict(study_fidelity)
        self.objectives = list(objectives)
        self._rows: dict[int, dict[str, Any]] = {}  # number -> row of a finished trial

    def frame(self, trials: Iterable) -> pd.DataFrame:
        rows = []
        for t in trials:
            row = self._rows.get(t.number)
            if row is None or row["state"] != t.state.name:
                row = record_row(t, self.study_fidelity, self.objectives)
                if t.state.is_finished():
                    self._rows[t.number] = row
            rows.append(row)
        return pd.DataFrame(rows, columns=list(FRAME_COLUMNS)).astype({"number": int, "feasible": bool})


def trial_frame(trials: Iterable, study_fidelity: Mapping[str, Any], objectives: Sequence[str]) -> pd.DataFrame:
    """One row per trial: number, state, anchor, modules, summary, fail_reason, feasible, fidelity,
    started, completed and the metric columns (NaN where a trial has none)."""
    return TrialFrame(study_fidelity, objectives).frame(trials)


def fidelities(frame: pd.DataFrame) -> list[tuple[str, int]]:
    """(fidelity key, completed trials) pairs, the study's fidelity first."""
    done = frame[frame["state"] == "COMPLETE"]
    counts = done["fidelity"].value_counts().to_dict()
    keys = [STUDY_FIDELITY] + sorted(k for k in set(frame["fidelity"]) if k != STUDY_FIDELITY)
    return [(k, int(counts.get(k, 0))) for k in keys]


# ----------------------------------------------------------------------------- fronts
def _check_objectives(frame: pd.DataFrame, names: Sequence[str]) -> None:
    for name in names:
        if name not in OBJECTIVES or name not in frame.columns:
            raise StudyError(f"objective: {name!r} is not an objective; choose from {', '.join(OBJECTIVES)}")


def non_dominated(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Boolean mask of the rows of ``values`` (N, M) that no other row dominates. Equal rows all stay."""
    if len(values) == 0:
        return np.zeros(0, dtype=bool)
    sign = np.array([1.0 if d == "maximize" else -1.0 for d in directions])
    as_max = torch.as_tensor(values * sign, dtype=torch.double)  # (N, M), larger is better in every column
    return is_non_dominated(as_max, deduplicate=False).numpy()


def recorded_baselines(study_attrs: Mapping[str, Any]) -> pd.DataFrame:
    """Reference results recorded outside the search, e.g. full fine-tuning, from the study user attribute
    ``baselines``: ``{"full fine-tuning": {"score": 0.88, "trainable_pct": 100}}``. One row per baseline: name
    and the metric columns it gives (NaN where it gives none)."""
    raw = study_attrs.get(BASELINES_ATTR) or {}
    if not isinstance(raw, Mapping):
        raise StudyError(f"{BASELINES_ATTR}: study attribute is {type(raw).__name__}; record a mapping such as "
                         '{"full fine-tuning": {"score": 0.88, "trainable_pct": 100}}')
    rows = []
    for name, values in raw.items():
        if not isinstance(values, Mapping):
            raise StudyError(f"{BASELINES_ATTR}.{name}: {values!r} is not a mapping of metric to value; "
                             'e.g. {"score": 0.88, "trainable_pct": 100}')
        bad = [k for k in values if k not in METRIC_COLUMNS]
        if bad:
            raise StudyError(f"{BASELINES_ATTR}.{name}.{bad[0]}: not a metric; use {', '.join(METRIC_COLUMNS)}")
        try:
            rows.append({"name": str(name), **{c: float(values.get(c, float("nan"))) for c in METRIC_COLUMNS}})
        except (TypeError, ValueError):
            raise StudyError(f"{BASELINES_ATTR}.{name}: values must be numbers, got {dict(values)!r}") from None
    return pd.DataFrame(rows, columns=["name", *METRIC_COLUMNS])


def completed(frame: pd.DataFrame, fidelity: str = STUDY_FIDELITY) -> pd.DataFrame:
    """COMPLETE trials of one fidelity."""
    return frame[(frame["state"] == "COMPLETE") & (frame["fidelity"] == fidelity)]


@dataclass(frozen=True)
class FrontView:
    """Points of a front plot over ``objectives`` and, for two objectives, the front's step line."""

    objectives: tuple[str, ...]
    points: pd.DataFrame  # completed trials: number, objective columns, status, anchor, summary, modules
    steps: pd.DataFrame  # columns = objectives; the attainment line through the front (2 objectives only)

    @property
    def front(self) -> pd.DataFrame:
        return self.points[self.points["status"] == FRONT]


def front_view(frame: pd.DataFrame, objectives: Sequence[str], fidelity: str = STUDY_FIDELITY) -> FrontView:
    """Each completed trial of ``fidelity`` with its status over ``objectives``: on the feasible Pareto
    front, dominated, or over the study's budget (infeasible trials are never on the front)."""
    objectives = tuple(objectives)
    _check_objectives(frame, objectives)
    if len(set(objectives)) != len(objectives):
        raise StudyError(f"objectives: {list(objectives)} names one objective twice; pick distinct axes")
    directions = [OBJECTIVES[o] for o in objectives]
    pts = completed(frame, fidelity).dropna(subset=list(objectives))
    cols = ["number", *objectives, "anchor", "summary", "modules", "feasible"]
    cols += [c for c in ("score", "trainable_pct") if c not in cols]
    pts = pts[list(dict.fromkeys(cols))].copy()
    status = np.where(pts["feasible"].to_numpy(), DOMINATED, OVER_BUDGET).astype(object)
    feasible = pts["feasible"].to_numpy()
    mask = non_dominated(pts.loc[feasible, list(objectives)].to_numpy(dtype=float), directions)
    idx = np.flatnonzero(feasible)[mask]
    status[idx] = FRONT
    pts["status"] = status
    steps = _step_line(pts[pts["status"] == FRONT], objectives, directions) if len(objectives) == 2 else pd.DataFrame(
        columns=list(objectives))
    return FrontView(objectives, pts.reset_index(drop=True), steps)


def _step_line(front: pd.DataFrame, objectives: Sequence[str], directions: Sequence[str]) -> pd.DataFrame:
    """Front points sorted along x, with a corner between each pair at (worse x, worse y): the boundary of
    the region the front dominates."""
    x, y = objectives
    pts = front[[x, y]].drop_duplicates().sort_values([x, y]).to_numpy(dtype=float)
    worse = [max if d == "minimize" else min for d in directions]
    line: list[tuple[float, float]] = []
    for i, (px, py) in enumerate(pts):
        if i:
            qx, qy = pts[i - 1]
            line.append((worse[0](px, qx), worse[1](py, qy)))
        line.append((px, py))
    return pd.DataFrame(line, columns=[x, y])


# ----------------------------------------------------------------------------- progress over trials
def reference_point(frame: pd.DataFrame, objectives: Sequence[str], fidelity: str = STUDY_FIDELITY) -> tuple[float, ...]:
    """The hypervolume reference point: score 0 and 100 % trainable parameters
    (``default_reference_point``); objectives without a default (step time, memory) take their worst
    completed value plus 10 %."""
    _check_objectives(frame, objectives)
    ref = []
    pts = completed(frame, fidelity)
    for name in objectives:
        try:
            ref.append(default_reference_point([OBJECTIVES[name]], [name]).values[0])
        except ValueError:
            col = pts[name].dropna()
            worst = (col.max() if OBJECTIVES[name] == "minimize" else col.min()) if len(col) else 0.0
            ref.append(float(worst) * (1.1 if OBJECTIVES[name] == "minimize" else 0.9))
    return tuple(ref)


def completion_order(frame: pd.DataFrame, fidelity: str = STUDY_FIDELITY) -> pd.DataFrame:
    """Completed trials of ``fidelity`` in the order they finished (trial number breaks ties), numbered
    from 1 in column ``completed_trials``."""
    done = completed(frame, fidelity).sort_values(["completed", "number"], na_position="last").copy()
    done["completed_trials"] = np.arange(1, len(done) + 1)
    return done.reset_index(drop=True)


def hypervolume_series(frame: pd.DataFrame, objectives: Sequence[str], reference: Sequence[float],
                       fidelity: str = STUDY_FIDELITY) -> pd.DataFrame:
    """Hypervolume of the feasible front after each completed trial of ``fidelity``, in completion order.

    Columns: completed_trials, number, completed, hypervolume, improved (the trial moved the front).
    The same hypervolume as ``autopeft.optimize.pareto.hypervolume`` (BoTorch's exact algorithm), updated
    only when a trial enters the front.
    """
    _check_objectives(frame, objectives)
    if len(reference) != len(objectives):
        raise StudyError(f"reference point: {list(reference)} has {len(reference)} values for "
                         f"{len(objectives)} objectives {list(objectives)}; give one value per objective")
    order = completion_order(frame, fidelity)
    sign = np.array([1.0 if OBJECTIVES[o] == "maximize" else -1.0 for o in objectives])
    ref = np.asarray(reference, dtype=float) * sign
    volume = _hypervolume_2d if len(objectives) == 2 else _hypervolume_exact
    front = np.zeros((0, len(objectives)))  # (F, M), maximisation form
    current = 0.0
    volumes, improved = [], []
    values = order[list(objectives)].to_numpy(dtype=float) * sign
    for point, feasible in zip(values, order["feasible"].to_numpy()):
        moved = False
        if feasible and not np.isnan(point).any() and not (front >= point).all(axis=1).any():
            keep = ~(point >= front).all(axis=1)  # drop the front points the new one dominates
            front = np.vstack([front[keep], point])
            current = volume(front, ref)
            moved = True
        volumes.append(current)
        improved.append(moved)
    return pd.DataFrame({
        "completed_trials": order["completed_trials"], "number": order["number"], "completed": order["completed"],
        "hypervolume": volumes, "improved": improved,
    })


def _hypervolume_2d(front: np.ndarray, ref: np.ndarray) -> float:
    """Area dominated by ``front`` (F, 2) and bounded by ``ref`` (2,), both in maximisation form. Sweeping
    the points by decreasing x, each adds the strip between its x and the reference, from the best y seen
    so far up to its own y."""
    pts = front[(front > ref).all(axis=1)]
    pts = pts[np.argsort(-pts[:, 0], kind="stable")]  # (F, 2), x decreasing
    best = np.maximum.accumulate(pts[:, 1])  # best y among points with larger x, including this one
    below = np.concatenate([[ref[1]], best[:-1]])
    return float(np.sum((pts[:, 0] - ref[0]) * (best - below)))


def _hypervolume_exact(front: np.ndarray, ref: np.ndarray) -> float:
    """BoTorch's exact hypervolume (any number of objectives), as ``autopeft.optimize.pareto.hypervolume``."""
    return float(Hypervolume(torch.as_tensor(ref)).compute(torch.as_tensor(front)))


def best_under_budget_series(frame: pd.DataFrame, budget_pct: float, fidelity: str = STUDY_FIDELITY) -> pd.DataFrame:
    """Best score among completed trials of ``fidelity`` with trainable % <= ``budget_pct``, after each
    completed trial (NaN until one fits). Columns: completed_trials, number, completed, best_score,
    best_trial."""
    if not (isinstance(budget_pct, (int, float)) and 0 < budget_pct <= 100):
        raise StudyError(f"budget: {budget_pct!r} must be a percentage of parameters in (0, 100]; e.g. 1.0")
    order = completion_order(frame, fidelity)
    fits = (order["trainable_pct"] <= budget_pct) & order["score"].notna()
    best, best_trial = [], []
    b, bt = float("nan"), None
    for score, number, ok in zip(order["score"], order["number"], fits):
        if ok and not (score <= b):  # also true while b is NaN
            b, bt = float(score), int(number)
        best.append(b)
        best_trial.append(bt)
    return pd.DataFrame({
        "completed_trials": order["completed_trials"], "number": order["number"], "completed": order["completed"],
        "best_score": best, "best_trial": pd.array(best_trial, dtype="Int64"),
    })


# ----------------------------------------------------------------------------- the trial table
def filter_trials(
    frame: pd.DataFrame,
    *,
    states: Sequence[str] | None = None,
    ranges: Mapping[str, tuple[float, float]] | None = None,
    modules: Sequence[str] | None = None,
    fidelity: str | None = None,
) -> pd.DataFrame:
    """Rows whose state is in ``states``, whose metric columns lie within ``ranges`` (inclusive; rows
    without the metric are dropped), that use at least one of the module types ``modules`` ("head only"
    matches plans without modules), and of ``fidelity``. ``None`` means no filter."""
    out = frame
    if states is not None:
        known = {"COMPLETE", "RUNNING", "WAITING", "FAIL", "PRUNED"}
        bad = [s for s in states if s not in known]
        if bad:
            raise StudyError(f"state: {bad[0]!r} is not a trial state; use {', '.join(sorted(known))}")
        out = out[out["state"].isin(list(states))]
    for col, (lo, hi) in (ranges or {}).items():
        if col not in METRIC_COLUMNS:
            raise StudyError(f"range: {col!r} is not a metric column; use one of {', '.join(METRIC_COLUMNS)}")
        if lo > hi:
            raise StudyError(f"range: {col} from {lo} to {hi} is empty; give the lower bound first")
        out = out[out[col].between(lo, hi)]
    if modules is not None:
        bad = [m for m in modules if m not in METHODS and m != "head only"]
        if bad:
            raise StudyError(f"modules: {bad[0]!r} is not a module type; use {', '.join(METHODS)} or 'head only'")
        used = out["modules"].str.split(", ")
        hit = used.map(lambda ms: any(m in ms for m in modules))
        if "head only" in modules:
            hit |= (out["modules"] == "") & (out["summary"] == "head only")
        out = out[hit]
    if fidelity is not None:
        out = out[out["fidelity"] == fidelity]
    return out


# ----------------------------------------------------------------------------- the plan view
_SITE_ORDER = {s: i for i, s in enumerate(LINEAR_SITES + BLOCK_SITES)}
_METHOD_ORDER = {m: i for i, m in enumerate(METHODS)}
SHORT = {"lora": "LoRA", "lora_experts": "LoRA experts", "ia3": "(IA)3", "serial_adapter": "serial adapter",
         "parallel_adapter": "parallel adapter", "prefix": "prefix", "ssf": "SSF"}


def _slot(m: ModuleSpec) -> str:
    return f"{m.site} · {SHORT.get(m.method, m.method.replace('_', ' '))}"


def _cell_label(m: ModuleSpec) -> str:
    """The size a cell shows: ``r8`` (low-rank methods), ``192`` (adapter width, prefix tokens), ``4×r8 k2``
    (experts, rank, top-k), ``on`` (methods without a size), then the variant when not the default."""
    method = get_method(m.method)
    if method.takes_experts:
        text = f"{m.num_experts}×r{m.size} k{m.top_k}"
    elif not method.size_means:
        text = "on"
    else:
        text = f"r{m.size}" if method.takes_alpha else str(m.size)
    return f"{text} {m.variant}" if m.variant else text


def plan_grid(plan: PeftPlan) -> pd.DataFrame:
    """One row per module of the plan: layer, slot ("site · method", the heat map's column), method,
    site, size, label (the cell text: rank, width, tokens, experts) and value (the colour: log2 of the
    size plus 1, so rank 1 and width 384 both show; (IA)3 has no size and counts 1)."""
    rows = [
        {"layer": i, "slot": _slot(m), "method": m.method, "site": m.site, "size": m.size,
         "label": _cell_label(m), "value": 1.0 + math.log2(max(m.size, 1))}
        for i, m in plan.modules()
    ]
    return pd.DataFrame(rows, columns=["layer", "slot", "method", "site", "size", "label", "value"])


def slot_order(*grids: pd.DataFrame) -> list[str]:
    """The union of the grids' slots, ordered by site (q, k, v, o, gate, up, down, attn, ffn), then method,
    so two plans compared side by side share columns."""
    seen = pd.concat([g[["slot", "site", "method"]] for g in grids]).drop_duplicates("slot")
    keyed = sorted(seen.itertuples(index=False),
                   key=lambda r: (_SITE_ORDER.get(r.site, 99), _METHOD_ORDER.get(r.method, 99)))
    return [r.slot for r in keyed]


def grid_matrix(grid: pd.DataFrame, num_layers: int, slots: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(values, labels), each (num_layers, len(slots)): NaN / "" where no module sits."""
    values = np.full((num_layers, len(slots)), np.nan)
    labels = np.full((num_layers, len(slots)), "", dtype=object)
    col = {s: j for j, s in enumerate(slots)}
    for r in grid.itertuples(index=False):
        if r.slot in col:
            values[r.layer, col[r.slot]] = r.value
            labels[r.layer, col[r.slot]] = r.label
    return values, labels


def experts_per_layer(plan: PeftPlan) -> pd.DataFrame:
    """LoRA experts per layer and site: layer, site, num_experts, top_k, rank (one row per layer and site;
    layers without experts get 0, so the bars show where experts are absent)."""
    sites = sorted({m.site for _, m in plan.modules() if m.method == "lora_experts"}, key=lambda s: _SITE_ORDER.get(s, 99))
    rows = []
    for site in sites:
        for i in range(plan.num_layers):
            m = next((m for m in plan.layers[i] if m.method == "lora_experts" and m.site == site), None)
            rows.append({"layer": i, "site": site, "num_experts": m.num_experts if m else 0,
                         "top_k": m.top_k if m else 0, "rank": m.size if m else 0})
    return pd.DataFrame(rows, columns=["layer", "site", "num_experts", "top_k", "rank"])


def export_yaml(study, trial) -> str:
    """The trial's export document (``autopeft.export.plan_document``: plan, study, fidelity, metrics) as the
    YAML ``autopeft export`` writes, for the page's download button."""
    return yaml.safe_dump(plan_document(study, trial), sort_keys=False)


def stored_weights(trial, artifacts: Path) -> bool:
    """Whether ``trial``'s trained weights are stored (its ``artifact`` attribute names a file that is still in
    the artifact folder, see ``autopeft.artifacts``)."""
    info = trial.user_attrs.get(ARTIFACT_ATTR)
    return bool(info) and (Path(artifacts) / info["id"]).is_file()


def export_adapter_zip(study, trial, artifacts: Path, model_factory=None) -> bytes:
    """A zip of ``autopeft export --format peft``: peft's ``adapter_config.json`` and
    ``adapter_model.safetensors``, or, when peft cannot express the plan, ``plan.yaml`` with its weights in
    ``plan.safetensors``; ``NOTES.txt`` says why when there are notes."""
    with tempfile.TemporaryDirectory() as tmp:
        result = export_trial(study, trial, Path(tmp) / "adapter", "peft", artifacts=artifacts,
                              model_factory=model_factory)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in result.paths:
                zf.write(path, path.name)
            if result.notes:
                zf.writestr("NOTES.txt", "\n".join(result.notes) + "\n")
        return buffer.getvalue()


def metrics_table(frame: pd.DataFrame, numbers: Sequence[int], objectives: Sequence[str]) -> pd.DataFrame:
    """The chosen trials' metrics side by side (one column per trial), objectives first."""
    rows = frame.set_index("number").loc[list(numbers)]
    order = list(dict.fromkeys([*objectives, *METRIC_COLUMNS]))
    table = pd.DataFrame({
        f"trial {n}": [("-" if pd.isna(rows.at[n, c]) else f"{rows.at[n, c]:.6g}") for c in order]
        + [str(rows.at[n, c]) for c in ("state", "fidelity")]
        for n in numbers
    }, index=[LABELS.get(c, c) for c in order] + ["state", "fidelity"])
    return table
