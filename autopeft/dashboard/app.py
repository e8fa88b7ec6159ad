"""The Streamlit page: study picker, Pareto front, search progress, trial table, plan view and export.

Run it with ``autopeft dashboard [--storage URL]``, or ``streamlit run dashboard/app.py [-- --storage URL]``
from a checkout. This file lives inside the package so that ``pip install autopeft[dashboard]`` ships it; the
CLI runs it by path, and ``dashboard/app.py`` in the repository is a two-line entry that calls :func:`main`.

The page only draws: data comes from ``autopeft.dashboard.source`` (read-only storage, incremental trial
cache) and ``autopeft.dashboard.data`` (fronts, hypervolume, tables, plan grids); figures from
``autopeft.dashboard.figures``. The storage is opened read-only; nothing here writes to the study.
"""

from __future__ import annotations

import argparse
import sys
import threading
from datetime import datetime, timezone

import pandas as pd
import streamlit as st

from autopeft.artifacts import artifact_dir
from autopeft.dashboard import data as D
from autopeft.dashboard import figures as F
from autopeft.dashboard.source import StudyEntry, TrialCache, list_studies, open_readonly, open_study
from autopeft.errors import AutopeftError
from autopeft.plan import PeftPlan
from autopeft.study.presence import live_workers
from autopeft.study.storage import redact, storage_url
from autopeft.study.study import AutopeftStudy

#: Auto-refresh choices (seconds; 0 = off). Studies above LARGE_STUDY trials start with refresh off.
REFRESH_CHOICES = (0, 5, 10, 30, 60, 300)
LARGE_STUDY = 1000
PLAN_KEY = "plan_trials"


# ----------------------------------------------------------------------------- data access (cached)
def storage_arg(argv: list[str] | None = None) -> str:
    """``--storage`` after ``--`` on the ``streamlit run`` line, else ``$AUTOPEFT_STORAGE``, else the default."""
    parser = argparse.ArgumentParser(prog="dashboard/app.py", add_help=False)
    parser.add_argument("--storage", default=None)
    known, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return storage_url(known.storage)


@st.cache_resource(show_spinner=False)
def _storage(url: str):
    return open_readonly(url)


class _Live:
    """One study's trial cache and frame builder, shared by every browser session (hence the lock)."""

    def __init__(self, study: AutopeftStudy):
        self.study = study
        self.cache = TrialCache(study.storage, study.study._study_id)
        self.frames = D.TrialFrame(study.fidelity.model_dump(), study.objectives)
        self.lock = threading.Lock()
        self.frame = self.frames.frame([])
        self.version = -1

    def refresh(self) -> pd.DataFrame:
        with self.lock:
            self.cache.refresh()
            if self.cache.version != self.version:
                self.frame = self.frames.frame(self.cache.records)
                self.version = self.cache.version
            return self.frame


@st.cache_resource(show_spinner=False, max_entries=32)
def _live(url: str, name: str, study_id: int) -> _Live:
    return _Live(open_study(_storage(url), name))


# Derived data is cached on (study, trial-cache version, arguments); the frame itself is not hashed.
@st.cache_resource(show_spinner=False, max_entries=64)
def _front(key: tuple, objectives: tuple[str, ...], fidelity: str, _frame: pd.DataFrame) -> D.FrontView:
    return D.front_view(_frame, objectives, fidelity)


@st.cache_resource(show_spinner=False, max_entries=32)
def _hypervolume(key: tuple, objectives: tuple[str, ...], reference: tuple[float, ...], fidelity: str,
                 _frame: pd.DataFrame) -> pd.DataFrame:
    return D.hypervolume_series(_frame, objectives, reference, fidelity)


@st.cache_resource(show_spinner=False, max_entries=32)
def _budget(key: tuple, budget: float, fidelity: str, _frame: pd.DataFrame) -> pd.DataFrame:
    return D.best_under_budget_series(_frame, budget, fidelity)


# ----------------------------------------------------------------------------- page parts
def _sidebar(url: str, studies: list[StudyEntry]) -> tuple[StudyEntry, int]:
    st.sidebar.title("autopeft")
    st.sidebar.caption(f"storage: `{redact(url)}` (read-only)")
    names = [s.name for s in studies]
    asked = st.query_params.get("study")
    if "study" not in st.session_state:
        st.session_state["study"] = asked if asked in names else names[-1]
    elif st.session_state["study"] not in names:
        st.session_state["study"] = names[-1]
    by_name = {s.name: s for s in studies}
    st.sidebar.selectbox("Study", names, key="study", format_func=lambda n: by_name[n].label())
    entry = by_name[st.session_state["study"]]
    st.query_params["study"] = entry.name
    default = 0 if entry.total > LARGE_STUDY else REFRESH_CHOICES.index(10)
    refresh = st.sidebar.selectbox(
        "Auto-refresh", REFRESH_CHOICES, index=default, key=f"refresh:{entry.name}",
        format_func=lambda s: "off" if s == 0 else f"every {s} s",
        help=f"Off by default for studies with more than {LARGE_STUDY:,} trials.")
    st.sidebar.button("Refresh now")
    return entry, refresh


def _studies_table(url: str, studies: list[StudyEntry]) -> None:
    rows = []
    for s in studies:
        live = None  # not an autopeft study, or its config cannot be read
        if s.is_autopeft:
            try:
                live = len(live_workers(_live(url, s.name, s.study_id).study))
            except AutopeftError:
                pass
        rows.append({"study": s.name, **{k.lower(): v for k, v in s.counts.items()}, "live workers": live})
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def _header(study: AutopeftStudy, frame: pd.DataFrame) -> None:
    st.title(study.name)
    st.caption(f"space {study.space.spec.name} · objectives: {F.direction_note(study.objectives)} · "
               f"fidelity: {study.fidelity.describe()}"
               + (f" · budget ≤ {study.budget_pct:g}% trainable" if study.budget_pct is not None else ""))
    counts = frame["state"].value_counts()
    workers = live_workers(study)
    cols = st.columns(5)
    for col, state in zip(cols, ("COMPLETE", "RUNNING", "WAITING", "FAIL")):
        col.metric(state.lower(), int(counts.get(state, 0)))
    cols[4].metric("live workers", len(workers))
    if workers:
        now = datetime.now(timezone.utc)
        st.dataframe(pd.DataFrame([{
            "worker": w.worker_id, "host": w.host, "pid": w.pid, "device": w.device, "state": w.state,
            "trial": w.trial_number, "last seen (s ago)": round((now - w.last_seen).total_seconds(), 1),
        } for w in workers]), hide_index=True, width="stretch")


def _select_from_chart(key: str) -> None:
    """A click (or box/lasso) on the chart ``key`` shows the picked trials (two at most) in the plan view."""
    event = st.session_state.get(key)
    points = event["selection"]["points"] if event else []
    numbers = [int(p["customdata"][0]) for p in points if p.get("customdata") is not None]
    if numbers:
        st.session_state[PLAN_KEY] = list(dict.fromkeys(numbers))[:2]


def _select_from_table() -> None:
    event = st.session_state.get("trial_table")
    rows = event["selection"]["rows"] if event else []
    shown = st.session_state.get("_table_numbers", [])
    numbers = [shown[i] for i in rows if i < len(shown)]
    if numbers:
        st.session_state[PLAN_KEY] = numbers[:2]


def _front_section(study: AutopeftStudy, frame: pd.DataFrame, key: tuple, fidelity: str) -> None:
    st.header("Pareto front")
    objectives = study.objectives
    views = ["pair"] + (["pairwise matrix", "3-D"] if len(objectives) >= 3 else [])
    c1, c2, c3, c4 = st.columns([1, 1, 1, 1])
    mode = c1.radio("View", views, horizontal=True, key="front_view") if len(views) > 1 else "pair"
    selected = st.session_state.get(PLAN_KEY, [])
    if mode == "pair":
        x = c2.selectbox("x axis", objectives, format_func=F.label,
                         index=objectives.index("trainable_pct") if "trainable_pct" in objectives else 1)
        y_choices = [o for o in objectives if o != x]
        y = c3.selectbox("y axis", y_choices, format_func=F.label,
                         index=y_choices.index("score") if "score" in y_choices else 0)
        log_x = c4.checkbox("log x axis", value=x == "trainable_pct")
        view = _front(key, (x, y), fidelity, frame)
        if not len(view.points):
            st.info("No completed trials at this fidelity yet: the front appears as trials finish.")
            return
        try:
            recorded = D.recorded_baselines(study.study.user_attrs)
        except AutopeftError as exc:  # a malformed record is shown, not fatal
            st.warning(str(exc))
            recorded = None
        fig = F.front_figure(view, x, y, log_x=log_x, selected=selected, recorded=recorded)
        st.plotly_chart(fig, key="front_chart", on_select=lambda: _select_from_chart("front_chart"),
                        selection_mode=("points", "box", "lasso"), width="stretch")
        hidden = int((view.points[x] <= 0).sum()) if log_x else 0
        st.caption(f"{len(view.front)} trials on the front of {len(view.points)} completed"
                   + (" (dominance over the two axes shown)" if len(objectives) > 2 else "")
                   + f" · {F.direction_note((x, y))} · click a point to see its plan below; stars are baselines."
                   + (f" {hidden} trial(s) at {x} = 0 cannot sit on a log axis: untick it to see them." if hidden else ""))
        return
    view = _front(key, tuple(objectives), fidelity, frame)
    if not len(view.points):
        st.info("No completed trials at this fidelity yet.")
        return
    if mode == "3-D":
        st.plotly_chart(F.scatter3d_figure(view), key="front_3d", width="stretch")
    else:
        st.plotly_chart(F.matrix_figure(view), key="matrix_chart",
                        on_select=lambda: _select_from_chart("matrix_chart"),
                        selection_mode=("points", "box", "lasso"), width="stretch")
    st.caption(f"{len(view.front)} trials on the front over all {len(objectives)} objectives "
               f"({F.direction_note(objectives)}).")


def _progress_section(study: AutopeftStudy, frame: pd.DataFrame, key: tuple, fidelity: str) -> None:
    st.header("Search progress")
    objectives = tuple(study.objectives)
    x = st.radio("Along", list(F.X_TITLES), format_func=F.X_TITLES.get, horizontal=True, key="progress_x")
    left, right = st.columns(2)
    default_ref = D.reference_point(frame, objectives, fidelity)
    with left:
        with st.expander("Reference point"):
            reference = tuple(
                st.number_input(F.label(o), value=float(v), key=f"ref:{study.name}:{o}", format="%.6g")
                for o, v in zip(objectives, default_ref))
        series = _hypervolume(key, objectives, reference, fidelity, frame)
        if len(series):
            st.plotly_chart(F.hypervolume_figure(series, objectives, reference, x), key="hv_chart", width="stretch")
        else:
            st.info("No completed trials at this fidelity yet.")
    with right:
        budget = st.number_input("Parameter budget (% trainable)", min_value=1e-4, max_value=100.0,
                                 value=float(study.budget_pct or 1.0), format="%.4g", key=f"budget:{study.name}")
        series = _budget(key, float(budget), fidelity, frame)
        if len(series) and series["best_score"].notna().any():
            st.plotly_chart(F.budget_figure(series, budget, x), key="budget_chart", width="stretch")
        else:
            st.info(f"No completed trial within {budget:g}% trainable parameters yet.")


def _table_section(frame: pd.DataFrame, objectives: list[str]) -> None:
    st.header("Trials")
    c1, c2, c3 = st.columns([1, 1, 2])
    states = c1.multiselect("State", ["COMPLETE", "RUNNING", "WAITING", "FAIL", "PRUNED"],
                            default=["COMPLETE", "RUNNING", "WAITING", "FAIL"], key="table_states")
    used = sorted({m for ms in frame["modules"] for m in ms.split(", ") if m})
    modules = c2.multiselect("Module types", used + ["head only"], key="table_modules",
                             help="Trials using at least one of these module types; empty: all.")
    fids = [k for k, _ in D.fidelities(frame)]
    fidelity = c3.selectbox("Fidelity", ["all"] + fids, key="table_fidelity") if len(fids) > 1 else "all"
    ranges: dict[str, tuple[float, float]] = {}
    range_cols = st.columns(len(objectives))
    for col, name in zip(range_cols, objectives):
        values = frame[name].dropna()
        if len(values) < 2 or values.min() == values.max():
            continue
        lo, hi = float(values.min()), float(values.max())
        chosen = col.slider(F.label(name), lo, hi, (lo, hi), key=f"range:{name}", format="%.4g")
        if chosen != (lo, hi):
            ranges[name] = chosen
    shown = D.filter_trials(frame, states=states, ranges=ranges or None, modules=modules or None,
                            fidelity=None if fidelity == "all" else fidelity)
    st.session_state["_table_numbers"] = shown["number"].tolist()
    columns = ["number", "state", *objectives, *[c for c in D.METRIC_COLUMNS if c not in objectives],
               "modules", "anchor", "summary", "fail_reason", "fidelity", "completed"]
    st.dataframe(
        shown[columns], key="trial_table", on_select=_select_from_table, selection_mode="multi-row",
        hide_index=True, width="stretch", height=420,
        column_config={
            **{c: st.column_config.NumberColumn(F.label(c), format="%.4g") for c in D.METRIC_COLUMNS},
            "number": st.column_config.NumberColumn("trial", format="%d"),
            "trainable_params": st.column_config.NumberColumn(F.label("trainable_params"), format="%d"),
            "fail_reason": st.column_config.TextColumn("failure reason"),
            "completed": st.column_config.DatetimeColumn("completed (UTC)", format="YYYY-MM-DD HH:mm:ss"),
        },
    )
    st.caption(f"{len(shown)} of {len(frame)} trials · click a column to sort · select up to two rows to "
               "see and compare their plans.")
    failed = frame[frame["state"] == "FAIL"]
    if len(failed):
        with st.expander(f"Failed trials ({len(failed)})"):
            st.dataframe(failed[["number", "fail_reason", "summary"]], hide_index=True, width="stretch")


def _trial_yaml(study: AutopeftStudy, record) -> str:
    return D.export_yaml(study, study.storage.get_trial(record.trial_id))  # a read: export takes a FrozenTrial


def _plan_section(live: _Live, frame: pd.DataFrame, url: str) -> None:
    study = live.study
    artifacts = artifact_dir(url)
    st.header("Plan")
    options = frame.loc[frame["state"] != "WAITING", "number"].tolist()
    current = [n for n in st.session_state.get(PLAN_KEY, []) if n in options]
    st.session_state[PLAN_KEY] = current
    st.multiselect("Trials to show (two to compare)", options, key=PLAN_KEY, max_selections=2,
                   help="Click a point on the front, or select rows in the trial table.")
    numbers = st.session_state[PLAN_KEY]
    if not numbers:
        st.info("Click a point on the Pareto front (or pick trials here) to see which module sits where.")
        return
    records = {r.number: r for r in live.cache.records}
    plans = {}
    for n in numbers:
        r = records[n]
        if "plan" in r.user_attrs:
            plans[n] = PeftPlan.from_dict(r.user_attrs["plan"])
        else:  # an older trial without a stored plan: decode its parameters
            plans[n] = study.plan_of(study.storage.get_trial(r.trial_id))
    grids = {n: D.plan_grid(p) for n, p in plans.items()}
    slots = D.slot_order(*grids.values()) if any(len(g) for g in grids.values()) else []
    zmax = max([float(g["value"].max()) for g in grids.values() if len(g)] + [1.0])
    columns = st.columns(len(numbers))
    rows = frame.set_index("number")
    for col, n in zip(columns, numbers):
        row = rows.loc[n]
        with col:
            st.subheader(f"Trial {n}")
            st.markdown(f"**{row['state']}** · {row['summary'] or plans[n].summary()}"
                        + (f" · baseline: {row['anchor']}" if row["anchor"] else ""))
            if row["fail_reason"]:
                st.error(f"failed: {row['fail_reason']}")
            if len(grids[n]):
                values, labels = D.grid_matrix(grids[n], plans[n].num_layers, slots)
                st.plotly_chart(F.plan_figure(values, labels, slots, f"trial {n}: layer × sub-layer", zmax=zmax),
                                key=f"plan_{n}", width="stretch")
            else:
                st.caption("head only: no PEFT module, only the task head trains.")
            experts = D.experts_per_layer(plans[n])
            if len(experts):
                st.plotly_chart(F.experts_figure(experts, f"trial {n}: LoRA experts per layer"),
                                key=f"experts_{n}", width="stretch")
            if row["state"] == "COMPLETE":
                st.download_button(f"Download plan YAML (trial {n})", _trial_yaml(study, records[n]),
                                   file_name=f"{study.name}-trial{n}.yaml", mime="application/x-yaml",
                                   key=f"yaml_{n}", on_click="ignore")
                if D.stored_weights(records[n], artifacts):
                    # Built on click (it loads the base model): peft's adapter files, as `autopeft export --format peft`.
                    st.download_button(
                        f"Download adapter (trial {n}, peft format, zip)", key=f"adapter_{n}", on_click="ignore",
                        data=lambda tid=records[n].trial_id: D.export_adapter_zip(study, study.storage.get_trial(tid),
                                                                                 artifacts),
                        file_name=f"{study.name}-trial{n}-adapter.zip", mime="application/zip")
                else:
                    st.caption(f"No stored weights for trial {n} in {artifacts} (not stored, or pruned): "
                               "the YAML plan retrains with `autopeft apply FILE --train`.")
    st.dataframe(D.metrics_table(frame, numbers, study.objectives), width="stretch")


# ----------------------------------------------------------------------------- the page
def main() -> None:
    st.set_page_config(page_title="autopeft dashboard", layout="wide")
    url = storage_arg()
    try:
        storage = _storage(url)
        studies = list_studies(storage)
    except AutopeftError as exc:
        st.error(str(exc))
        return
    if not studies:
        st.info(f"No study in {redact(url)} yet. Start one with `autopeft run --storage ...`; this page "
                "shows it once it exists (refresh the page).")
        return
    entry, refresh = _sidebar(url, studies)
    if not entry.is_autopeft:
        st.warning(f"Study {entry.name!r} was not made by autopeft; pick another study.")
        return
    if st.session_state.get("_shown_study") != entry.name:  # a new study: drop the old selection
        st.session_state[PLAN_KEY] = []
        st.session_state["_shown_study"] = entry.name

    @st.fragment(run_every=refresh or None)
    def body() -> None:
        live = _live(url, entry.name, entry.study_id)
        frame = live.refresh()
        study = live.study
        _header(study, frame)
        fids = D.fidelities(frame)
        fidelity = D.STUDY_FIDELITY
        if len(fids) > 1:
            fidelity = st.selectbox(
                "Fidelity of the front and progress views", [k for k, _ in fids],
                format_func=lambda k: f"{'study fidelity' if k == D.STUDY_FIDELITY else k} ({dict(fids)[k]} complete)",
                help="Trials trained at another fidelity (e.g. retrained longer) are never mixed with the study's.")
        key = (entry.name, entry.study_id, live.version)
        _front_section(study, frame, key, fidelity)
        _plan_section(live, frame, url)
        _progress_section(study, frame, key, fidelity)
        _table_section(frame, study.objectives)
        with st.expander(f"Studies in this storage ({len(studies)})"):
            _studies_table(url, studies)
        st.caption(f"read {datetime.now(timezone.utc):%H:%M:%S} UTC · {len(frame)} trials"
                   + (f" · refreshing every {refresh} s" if refresh else " · auto-refresh off"))

    body()


if __name__ == "__main__":
    main()
