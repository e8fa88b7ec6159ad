"""Trained adapter weights of every completed trial, kept as an Optuna artifact, so a Pareto trial can be
exported (or applied) without training it again.

Where: ``--artifacts DIR`` on the commands that read them, or ``AUTOPEFT_ARTIFACTS`` (workers read only the
environment); by default a folder ``autopeft-artifacts/`` beside a SQLite database file, or in the working
directory for server databases (workers on several machines then need a shared folder, named explicitly).
The files live in Optuna's ``FileSystemArtifactStore``; the trial records the artifact id and its size in the
user attribute ``artifact`` (``{"id": ..., "bytes": ...}``). A failure to store weights never fails the trial:
it is noted in the user attribute ``artifact_error``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from optuna.artifacts import FileSystemArtifactStore, download_artifact, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial, TrialState
from safetensors.torch import load_file, save_file

from autopeft.errors import StudyError

log = logging.getLogger(__name__)

ENV = "AUTOPEFT_ARTIFACTS"
ATTR = "artifact"
ERROR_ATTR = "artifact_error"
DEFAULT_DIRNAME = "autopeft-artifacts"


def artifact_dir(storage_url: str, override: str | Path | None = None) -> Path:
    """The artifact folder for a study database: ``override``, else ``$AUTOPEFT_ARTIFACTS``, else the default."""
    explicit = override or os.environ.get(ENV)
    if explicit:
        return Path(explicit)
    from sqlalchemy.engine import make_url

    url = make_url(storage_url)
    if url.drivername.startswith("sqlite") and url.database not in (None, "", ":memory:"):
        return Path(url.database).resolve().parent / DEFAULT_DIRNAME
    return Path.cwd() / DEFAULT_DIRNAME


def _store(study: Any, directory: str | Path | None) -> FileSystemArtifactStore:
    path = artifact_dir(study.storage.url, directory)
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))


def save_trial_artifact(study: Any, trial: Any, metrics: Any, directory: str | Path | None = None) -> int | None:
    """Store ``metrics.adapter_state`` as ``trial``'s artifact (a safetensors file); returns its bytes.

    Never raises: a trial's result matters more than its weights. Without weights (an evaluator that trains
    nothing) it stores nothing and returns ``None``.
    """
    state = getattr(metrics, "adapter_state", None)
    if not state:
        return None
    try:
        store = _store(study, directory)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{study.name}-trial-{trial.number}.safetensors"
            meta = {"study": study.name, "trial": str(trial.number),
                    "plan": json.dumps(trial.user_attrs.get("plan") if hasattr(trial, "user_attrs") else None)}
            save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, str(path), metadata=meta)
            size = path.stat().st_size
            artifact_id = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial,
                                          mimetype="application/octet-stream")
        trial.set_user_attr(ATTR, {"id": artifact_id, "bytes": size})
        return size
    except Exception as exc:  # noqa: BLE001 -- storing weights must never lose the trial
        log.warning("trial %s: adapter weights not stored: %s", trial.number, exc)
        try:
            trial.set_user_attr(ERROR_ATTR, f"{type(exc).__name__}: {exc}"[:500])
        except Exception:  # noqa: BLE001
            pass
        return None


def load_trial_state(study: Any, trial: FrozenTrial, directory: str | Path | None = None
                     ) -> dict[str, torch.Tensor] | None:
    """The stored adapter state of ``trial``, or ``None`` when it has none (never stored, or pruned)."""
    info = trial.user_attrs.get(ATTR)
    if not info:
        return None
    store = _store(study, directory)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.safetensors"
        try:
            download_artifact(artifact_store=store, file_path=str(path), artifact_id=info["id"])
        except ArtifactNotFound:
            return None
        return load_file(str(path))


@dataclass(frozen=True)
class Usage:
    trial: int
    bytes: int
    present: bool
    pareto: bool


def artifact_usage(study: Any, directory: str | Path | None = None) -> list[Usage]:
    """Per completed trial with recorded weights: its size, whether the file is still there, whether it is on
    the Pareto front."""
    from autopeft.optimize.pareto import pareto_front

    root = artifact_dir(study.storage.url, directory)
    front = {t.number for t in pareto_front(study.trials(), study.space.directions)}
    rows = []
    for t in study.trials((TrialState.COMPLETE,)):
        info = t.user_attrs.get(ATTR)
        if info:
            rows.append(Usage(t.number, int(info["bytes"]), (root / info["id"]).is_file(), t.number in front))
    return rows


def prune_artifacts(study: Any, keep: str = "pareto", directory: str | Path | None = None) -> tuple[int, int]:
    """Delete the stored weights of completed trials not kept; returns (files removed, bytes freed).

    ``keep``: ``pareto`` (the feasible Pareto front) or ``none``.
    """
    if keep not in ("pareto", "none"):
        raise StudyError(f"--keep: {keep!r} is not a choice; use pareto or none")
    store = _store(study, directory)
    removed = freed = 0
    ids = {t.number: t.user_attrs[ATTR]["id"] for t in study.trials((TrialState.COMPLETE,)) if t.user_attrs.get(ATTR)}
    for row in artifact_usage(study, directory):
        if row.present and not (keep == "pareto" and row.pareto):
            store.remove(ids[row.trial])
            removed += 1
            freed += row.bytes
    return removed, freed


__all__ = ["ENV", "Usage", "artifact_dir", "artifact_usage", "load_trial_state", "prune_artifacts",
           "save_trial_artifact"]
