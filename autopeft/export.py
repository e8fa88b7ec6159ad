"""Export a trial's plan as YAML (the plan plus the study, trial, fidelity and metrics it came from),
and load such a file back onto a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from optuna.trial import FrozenTrial

from autopeft.errors import PlanError
from autopeft.plan import PeftPlan
from autopeft.study.study import AutopeftStudy

FORMAT_VERSION = 1


def plan_document(study: AutopeftStudy, trial: FrozenTrial) -> dict[str, Any]:
    """The export document of one trial."""
    return {
        "autopeft_plan": FORMAT_VERSION,
        "study": study.name,
        "trial": trial.number,
        "space": study.space.spec.name,
        "objectives": dict(zip(study.objectives, trial.values or [])),
        "fidelity": trial.user_attrs.get("fidelity", study.fidelity.model_dump()),
        "metrics": trial.user_attrs.get("metrics", {}),
        "summary": trial.user_attrs.get("plan_summary", ""),
        "plan": study.plan_of(trial).to_dict(),
    }


def write_plan(document: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def read_plan(path: str | Path) -> tuple[PeftPlan, dict[str, Any]]:
    """(plan, document) from an exported YAML file, or from a bare plan mapping."""
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"plan file: {str(path)!r} does not exist; pass the YAML written by `autopeft export`")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise PlanError(f"plan file: {path} is not valid YAML ({exc})") from None
    if not isinstance(doc, dict):
        raise PlanError(f"plan file: {path} must hold a mapping with a 'plan' key")
    body = doc.get("plan", doc)
    try:
        return PeftPlan.from_dict(body), doc
    except PlanError as exc:
        raise PlanError(f"plan file {path}: plan.{exc}") from None


def apply_plan_file(model, path: str | Path, seed: int | None = None):
    """Inject the plan stored in ``path`` into ``model`` (in place) and return the model."""
    from autopeft.peft import apply_plan

    plan, _ = read_plan(path)
    return apply_plan(model, plan, seed=seed)
