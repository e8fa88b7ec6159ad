"""Export a trial: its plan as YAML (the plan plus the study, trial, fidelity and metrics it came from) with
the trained weights beside it (``<name>.safetensors``, from the trial's stored artifact), or in Hugging Face
peft's format when peft can express the plan; and load such files back onto a model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

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


def weights_path(plan_path: str | Path) -> Path:
    """Where the weights of an exported plan YAML live: the same name with ``.safetensors``."""
    return Path(plan_path).with_suffix(".safetensors")


def apply_plan_file(model, path: str | Path, seed: int | None = None):
    """Inject the plan stored in ``path`` into ``model`` (in place), load its weights file when there is one
    (:func:`weights_path`), and return the model (``model.autopeft_weights_loaded`` says which happened)."""
    from safetensors.torch import load_file

    from autopeft.peft import apply_plan, load_adapter_state_dict

    plan, _ = read_plan(path)
    apply_plan(model, plan, seed=seed)
    weights = weights_path(path)
    model.autopeft_weights_loaded = weights.is_file()
    if weights.is_file():
        load_adapter_state_dict(model, load_file(str(weights)))
    return model


@dataclass
class ExportResult:
    paths: list[Path]
    format: str  # "yaml" or "peft"
    weights: bool  # trained weights were written
    notes: list[str] = field(default_factory=list)  # why peft could not express the plan, missing weights


def export_trial(study: AutopeftStudy, trial: FrozenTrial, output: str | Path, fmt: str = "yaml", *,
                 artifacts: str | Path | None = None, model_factory: Callable[[], Any] | None = None) -> ExportResult:
    """Write ``trial`` as ``yaml`` (``output`` is the YAML file; weights beside it when stored) or ``peft``
    (``output`` is a folder; peft's two files, or -- when peft cannot express the plan -- ``plan.yaml`` and
    ``plan.safetensors`` there, with the reasons in ``notes``).

    ``model_factory`` builds the untrained base model (default: the fidelity's model with the task's labels);
    the peft format needs it to lay the stored weights out under peft's module names.
    """
    from safetensors.torch import save_file

    from autopeft.artifacts import load_trial_state

    if fmt not in ("yaml", "peft"):
        raise PlanError(f"--format: {fmt!r} is not a format; use yaml or peft")
    plan = study.plan_of(trial)
    document = plan_document(study, trial)
    state = load_trial_state(study, trial, artifacts)
    notes: list[str] = []
    if state is None:
        notes.append(f"trial {trial.number} has no stored weights (not stored by its worker, or pruned); "
                     "the plan alone is written -- `autopeft apply FILE --train` trains it")
    if fmt == "peft":
        from autopeft.peft.export_peft import peft_inexpressible, save_peft_adapter

        parts = peft_inexpressible(plan) or (["the head-only plan has no PEFT module"] if plan.is_empty else [])
        if state is None and not parts:
            raise PlanError(f"--format peft: trial {trial.number} has no stored weights to export; export the plan "
                            "as YAML, or store weights (workers do, see docs) and run the trial again")
        if not parts:
            model = _model_with_state(study, plan, state, model_factory)
            out = save_peft_adapter(model, plan, output, base_model_name=study.fidelity.model)
            return ExportResult([out / "adapter_config.json", out / "adapter_model.safetensors"], "peft", True, notes)
        notes = [f"peft cannot express this plan: {part}" for part in parts] + notes
        output = Path(output) / "plan.yaml"
    path = write_plan(document, output)
    paths = [path]
    if state is not None:
        save_file({k: v.contiguous() for k, v in state.items()}, str(weights_path(path)))
        paths.append(weights_path(path))
    return ExportResult(paths, "yaml", state is not None, notes)


def _model_with_state(study: AutopeftStudy, plan: PeftPlan, state: dict, model_factory: Callable[[], Any] | None):
    from autopeft.peft import apply_plan, load_adapter_state_dict

    if model_factory is None:
        from autopeft.proxy.models import load_classifier
        from autopeft.proxy.tasks import load_task

        fid = study.fidelity

        def model_factory():
            return load_classifier(fid.model, len(load_task(fid.task, seed=fid.seed).label_names), fid.seed)[0]

    model = apply_plan(model_factory(), plan, seed=study.fidelity.seed)
    load_adapter_state_dict(model, state)
    return model.eval()
