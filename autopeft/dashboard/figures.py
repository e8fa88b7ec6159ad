"""Plotly figures of the dashboard, drawn from the data of ``autopeft.dashboard.data`` (no computing here).

Every point of a trial carries ``customdata = [trial number, plan summary]``: hover shows the summary, and a
click hands the number back to the page (Streamlit selection events include ``customdata``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from autopeft.dashboard.data import DOMINATED, FRONT, LABELS, OVER_BUDGET, FrontView
from autopeft.space.schema import OBJECTIVES

STYLE = {
    FRONT: dict(color="#d62728", size=9, symbol="circle"),
    DOMINATED: dict(color="#b0b0b0", size=6, symbol="circle"),
    OVER_BUDGET: dict(color="#dcdcdc", size=6, symbol="x"),
}
BASELINE = dict(color="#1f77b4", size=15, symbol="star", line=dict(color="white", width=1))
RECORDED = dict(color=BASELINE["color"], size=15, symbol="star-open", line=dict(width=2))  # outside the search
SELECTED = dict(color="#111111", size=18, symbol="circle-open", line=dict(width=2))  # open symbols stroke in color


def label(name: str) -> str:
    """Axis title of an objective or metric column."""
    return LABELS.get(name, name)


def _hover(points: pd.DataFrame, axes: Sequence[str]) -> tuple[np.ndarray, str]:
    custom = np.stack([points["number"].to_numpy(), points["summary"].to_numpy()], axis=-1) if len(points) else \
        np.zeros((0, 2))
    lines = [f"{label(a)}: %{{{k}:.4g}}" for k, a in zip("xyz", axes)]
    template = "<b>trial %{customdata[0]}</b><br>" + "<br>".join(lines) + "<br>%{customdata[1]}<extra></extra>"
    return custom, template


def front_figure(view: FrontView, x: str, y: str, *, log_x: bool = False, log_y: bool = False,
                 selected: Sequence[int] = (), recorded: pd.DataFrame | None = None, height: int = 480) -> go.Figure:
    """Scatter of ``y`` against ``x``: dominated and over-budget trials grey, the front in colour with its
    step line, baselines (anchor trials) as stars, the selected trials ringed. ``recorded`` baselines
    (``data.recorded_baselines``, e.g. full fine-tuning) are open stars, or dashed lines when they give only
    one of the two axes."""
    fig = go.Figure()
    pts = view.points
    for status in (OVER_BUDGET, DOMINATED, FRONT):
        part = pts[pts["status"] == status]
        custom, template = _hover(part, (x, y))
        fig.add_trace(go.Scatter(x=part[x], y=part[y], mode="markers", name=f"{status} ({len(part)})",
                                 marker=STYLE[status], customdata=custom, hovertemplate=template))
    if len(view.steps):
        fig.add_trace(go.Scatter(x=view.steps[x], y=view.steps[y], mode="lines", name="front (step line)",
                                 line=dict(color=STYLE[FRONT]["color"], width=1.5), hoverinfo="skip"))
    anchors = pts[pts["anchor"] != ""]
    if len(anchors):
        custom, template = _hover(anchors, (x, y))
        fig.add_trace(go.Scatter(x=anchors[x], y=anchors[y], mode="markers+text", name="baseline",
                                 text=anchors["anchor"], textposition="top right", marker=BASELINE,
                                 customdata=custom, hovertemplate=template))
    for row in (recorded if recorded is not None else pd.DataFrame()).itertuples(index=False):
        vx, vy = getattr(row, x), getattr(row, y)
        if not (np.isnan(vx) or np.isnan(vy)):
            fig.add_trace(go.Scatter(x=[vx], y=[vy], mode="markers+text", name=f"{row.name} (recorded)",
                                     text=[row.name], textposition="bottom left", marker=RECORDED,
                                     hovertemplate=f"{row.name}: {label(x)} {vx:.4g}, {label(y)} {vy:.4g}<extra></extra>"))
        elif not np.isnan(vy):
            fig.add_hline(y=vy, line=dict(dash="dash", color=BASELINE["color"], width=1),
                          annotation_text=f"{row.name} {vy:.4g}", annotation_position="top left")
        elif not np.isnan(vx):
            fig.add_vline(x=vx, line=dict(dash="dash", color=BASELINE["color"], width=1),
                          annotation_text=f"{row.name} {vx:.4g}", annotation_position="top right")
    chosen = pts[pts["number"].isin(list(selected))]
    if len(chosen):
        custom, template = _hover(chosen, (x, y))
        fig.add_trace(go.Scatter(x=chosen[x], y=chosen[y], mode="markers", name="selected", marker=SELECTED,
                                 customdata=custom, hovertemplate=template))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=30, b=10), legend=dict(orientation="h", y=-0.15),
                      clickmode="event+select", dragmode="zoom")
    fig.update_xaxes(title=label(x), type="log" if log_x else "linear")
    fig.update_yaxes(title=label(y), type="log" if log_y else "linear")
    return fig


def matrix_figure(view: FrontView, height: int = 620) -> go.Figure:
    """Pairwise scatter matrix of three or more objectives; status over all of them."""
    fig = go.Figure()
    for status in (OVER_BUDGET, DOMINATED, FRONT):
        part = view.points[view.points["status"] == status]
        custom = np.stack([part["number"].to_numpy(), part["summary"].to_numpy()], axis=-1) if len(part) else None
        fig.add_trace(go.Splom(
            dimensions=[dict(label=label(o), values=part[o]) for o in view.objectives],
            name=f"{status} ({len(part)})", marker=STYLE[status], customdata=custom, diagonal_visible=False,
            showupperhalf=False,
            hovertemplate="<b>trial %{customdata[0]}</b><br>%{customdata[1]}<extra></extra>",
        ))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=30, b=10), dragmode="select")
    return fig


def scatter3d_figure(view: FrontView, height: int = 620) -> go.Figure:
    """3-D scatter of the first three objectives; status over all of them."""
    x, y, z = view.objectives[:3]
    fig = go.Figure()
    for status in (OVER_BUDGET, DOMINATED, FRONT):
        part = view.points[view.points["status"] == status]
        custom, template = _hover(part, (x, y, z))
        marker = {k: v for k, v in STYLE[status].items() if k != "symbol"}
        marker["size"] = marker["size"] / 2
        fig.add_trace(go.Scatter3d(x=part[x], y=part[y], z=part[z], mode="markers", name=f"{status} ({len(part)})",
                                   marker=marker, customdata=custom, hovertemplate=template))
    fig.update_layout(height=height, margin=dict(l=0, r=0, t=30, b=0),
                      scene=dict(xaxis_title=label(x), yaxis_title=label(y), zaxis_title=label(z)))
    return fig


X_TITLES = {"completed_trials": "completed trials", "completed": "completed at (UTC)"}


def hypervolume_figure(series: pd.DataFrame, objectives: Sequence[str], reference: Sequence[float],
                       x: str = "completed_trials", height: int = 320) -> go.Figure:
    """Hypervolume after each completed trial (a step line), the trials that moved the front marked. ``x`` is
    ``completed_trials`` (count) or ``completed`` (time)."""
    ref = ", ".join(f"{label(o)} {v:g}" for o, v in zip(objectives, reference))
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=series[x], y=series["hypervolume"], mode="lines", line_shape="hv",
                             name="hypervolume", customdata=series["number"],
                             hovertemplate="%{x}: %{y:.5g}<br>last: trial %{customdata}<extra></extra>"))
    moved = series[series["improved"]]
    fig.add_trace(go.Scatter(x=moved[x], y=moved["hypervolume"], mode="markers",
                             name="front moved", marker=dict(size=6, color=STYLE[FRONT]["color"]),
                             customdata=moved["number"], hovertemplate="trial %{customdata}: %{y:.5g}<extra></extra>"))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10), title=dict(
        text=f"Hypervolume · reference point: {ref}", font=dict(size=13)), showlegend=False)
    fig.update_xaxes(title=X_TITLES[x])
    fig.update_yaxes(title="hypervolume")
    return fig


def budget_figure(series: pd.DataFrame, budget_pct: float, x: str = "completed_trials", height: int = 320) -> go.Figure:
    """Best score among trials within the parameter budget, after each completed trial (``x`` as in
    :func:`hypervolume_figure`)."""
    fig = go.Figure(go.Scatter(
        x=series[x], y=series["best_score"], mode="lines", line_shape="hv", name="best score",
        customdata=series["best_trial"].astype("float"),
        hovertemplate="%{x}: %{y:.4f} (trial %{customdata})<extra></extra>"))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10), showlegend=False, title=dict(
        text=f"Best score within {budget_pct:g}% trainable parameters", font=dict(size=13)))
    fig.update_xaxes(title=X_TITLES[x])
    fig.update_yaxes(title=label("score"))
    return fig


def plan_figure(values: np.ndarray, labels: np.ndarray, slots: Sequence[str], title: str,
                zmax: float | None = None, height: int | None = None) -> go.Figure:
    """Layer x sub-layer heat map: one column per (site, module type), one row per layer, the cell text the
    module's rank / width / tokens / experts, its colour log2 of the size."""
    layers = [f"L{i}" for i in range(values.shape[0])]
    fig = go.Figure(go.Heatmap(
        z=values, x=list(slots), y=layers, text=labels, texttemplate="%{text}", colorscale="Viridis", zmin=0,
        zmax=zmax, xgap=2, ygap=2, showscale=False,
        hovertemplate="%{y} · %{x}: %{text}<extra></extra>",
    ))
    fig.update_layout(height=height or 120 + 28 * values.shape[0], margin=dict(l=10, r=10, t=40, b=10),
                      title=dict(text=title, font=dict(size=13)), plot_bgcolor="#f4f4f4")
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(side="bottom", tickangle=-30)
    return fig


def experts_figure(experts: pd.DataFrame, title: str, height: int = 260) -> go.Figure:
    """LoRA experts per layer (bars per site), top-k in the hover."""
    fig = go.Figure()
    for site, part in experts.groupby("site", sort=False):
        fig.add_trace(go.Bar(x=[f"L{i}" for i in part["layer"]], y=part["num_experts"], name=site,
                             customdata=np.stack([part["top_k"], part["rank"]], axis=-1),
                             hovertemplate=f"%{{x}} · {site}: %{{y}} experts, top-%{{customdata[0]}}, "
                                           "rank %{customdata[1]}<extra></extra>"))
    fig.update_layout(height=height, barmode="group", margin=dict(l=10, r=10, t=40, b=10),
                      title=dict(text=title, font=dict(size=13)))
    fig.update_yaxes(title="experts")
    return fig


def direction_note(objectives: Sequence[str]) -> str:
    """"score ↑ · trainable parameters (%) ↓" — which way is better on each axis."""
    return " · ".join(f"{label(o)} {'↑' if OBJECTIVES[o] == 'maximize' else '↓'}" for o in objectives)
