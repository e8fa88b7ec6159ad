"""Trained weights stored per trial (Optuna artifacts), disk use, pruning, and exports that use them."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from autopeft.artifacts import ATTR, ERROR_ATTR, artifact_dir, artifact_usage, load_trial_state, prune_artifacts
from autopeft.export import apply_plan_file, export_trial, read_plan, weights_path
from autopeft.peft import adapter_state_dict, apply_plan
from autopeft.proxy.fidelity import Fidelity
from autopeft.space import ModelDims, parse_space
from autopeft.study.storage import open_storage
from autopeft.study.study import create_or_load
from autopeft.study.worker import run_worker
from fakes import ArithmeticEvaluator

CFG = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def tiny_bert(seed: int = 0):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return BertForSequenceClassification(BertConfig(**CFG)).eval()


class TrainedEvaluator(ArithmeticEvaluator):
    """The arithmetic metrics plus real (perturbed, as if trained) weights of the plan on a tiny BERT."""

    def run(self, plan):
        metrics = super().run(plan)
        model = apply_plan(tiny_bert(), plan, seed=0)
        g = torch.Generator().manual_seed(len(self.plans))
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=g) * 0.1)
        return dataclasses.replace(metrics, adapter_state=adapter_state_dict(model))


def _study(tmp_path, space_yaml, n=5, name="a"):
    st, _ = create_or_load(open_storage(f"sqlite:///{tmp_path / 'a.db'}"), name, parse_space(space_yaml),
                           ModelDims(2, 32), Fidelity(steps=5), sampler=optuna.samplers.RandomSampler(seed=3))
    run_worker(st, TrainedEvaluator(), n_trials=n)
    return st


LORA = "name: l\nplacement: all\nmodules: {lora: {sizes: [0, 2, 4], sites: [q, v], variant: [lora, dora]}}"
ADAPTER = "name: s\nmodules: {serial_adapter: {sizes: [0, 4, 8]}}"


def _ids():
    return torch.randint(1, 50, (2, 6), generator=torch.Generator().manual_seed(1))


def test_every_completed_trial_stores_its_weights_beside_the_database(tmp_path):
    st = _study(tmp_path, LORA)
    assert artifact_dir(st.storage.url) == tmp_path / "autopeft-artifacts"
    complete = st.trials((optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 5
    for t in complete:
        info = t.user_attrs[ATTR]
        assert info["bytes"] == (tmp_path / "autopeft-artifacts" / info["id"]).stat().st_size > 0
        state = load_trial_state(st, t)
        model = apply_plan(tiny_bert(), st.plan_of(t), seed=0)
        assert set(state) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert "metrics" in complete[0].user_attrs and "adapter_state" not in complete[0].user_attrs["metrics"]


def test_a_failure_to_store_weights_keeps_the_trial(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("AUTOPEFT_ARTIFACTS", str(blocker))
    st = _study(tmp_path, LORA, n=2)
    for t in st.trials():
        assert t.state == optuna.trial.TrialState.COMPLETE
        assert ATTR not in t.user_attrs and t.user_attrs[ERROR_ATTR]


def test_usage_and_prune_keep_the_pareto_front(tmp_path):
    st = _study(tmp_path, ADAPTER, n=6)
    rows = artifact_usage(st)
    assert rows and all(r.present for r in rows)
    front = {r.trial for r in rows if r.pareto}
    assert front and len(front) < len(rows)
    removed, freed = prune_artifacts(st, "pareto")
    assert removed == len(rows) - len(front) and freed == sum(r.bytes for r in rows if not r.pareto)
    after = {r.trial: r.present for r in artifact_usage(st)}
    assert {t for t, present in after.items() if present} == front
    pruned = next(t for t in st.trials() if t.number in after and not after[t.number])
    assert load_trial_state(st, pruned) is None
    with pytest.raises(Exception, match="--keep"):
        prune_artifacts(st, "all")


def test_export_peft_from_stored_weights_loads_in_peft(tmp_path):
    peft = pytest.importorskip("peft")
    st = _study(tmp_path, LORA)
    trial = next(t for t in st.trials() if not st.plan_of(t).is_empty)
    result = export_trial(st, trial, tmp_path / "out", "peft", model_factory=tiny_bert)
    assert result.format == "peft" and result.weights
    loaded = peft.PeftModel.from_pretrained(tiny_bert(), str(tmp_path / "out")).eval()
    ours = apply_plan(tiny_bert(), st.plan_of(trial), seed=0)
    from autopeft.peft import load_adapter_state_dict

    load_adapter_state_dict(ours, load_trial_state(st, trial))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=_ids()).logits, ours(input_ids=_ids()).logits, atol=1e-5, rtol=0)


def test_inexpressible_plan_falls_back_to_yaml_and_weights_that_apply_loads(tmp_path):
    st = _study(tmp_path, ADAPTER)
    trial = next(t for t in st.trials() if not st.plan_of(t).is_empty)
    result = export_trial(st, trial, tmp_path / "out", "peft", model_factory=tiny_bert)
    assert result.format == "yaml" and result.weights
    assert any("serial_adapter on ffn" in n and "cannot be expressed in peft" in n for n in result.notes)
    yaml_path = tmp_path / "out" / "plan.yaml"
    assert result.paths == [yaml_path, weights_path(yaml_path)]
    plan, _ = read_plan(yaml_path)
    applied = apply_plan_file(tiny_bert(), yaml_path, seed=123)  # other init: the weights must come from the file
    assert applied.autopeft_weights_loaded
    ours = apply_plan(tiny_bert(), plan, seed=0)
    from autopeft.peft import load_adapter_state_dict

    load_adapter_state_dict(ours, load_trial_state(st, trial))
    with torch.no_grad():
        torch.testing.assert_close(applied(input_ids=_ids()).logits, ours(input_ids=_ids()).logits)


def test_yaml_export_without_stored_weights_says_so(tmp_path):
    st = _study(tmp_path, LORA, n=2)
    trial = st.trials()[-1]
    prune_artifacts(st, "none")
    result = export_trial(st, trial, tmp_path / "t.yaml")
    assert not result.weights and "no stored weights" in result.notes[0]
    assert not weights_path(tmp_path / "t.yaml").exists()
    if not st.plan_of(trial).is_empty:
        with pytest.raises(Exception, match="no stored weights"):
            export_trial(st, trial, tmp_path / "p", "peft", model_factory=tiny_bert)
