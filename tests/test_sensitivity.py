"""The zero-cost sensitivity signal and the seed plans it gives."""

import subprocess
import sys

import torch
from transformers import BertConfig, BertForSequenceClassification

from autopeft.sensitivity import layer_ranking, layer_sensitivity, sensitivity_seeds
from autopeft.space import ModelDims, SearchSpace, load_space


def _tiny():
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=3,
                                                    num_attention_heads=4, intermediate_size=64, num_labels=2))


def _batches(n=2):
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(1, 100, (8, 12), generator=g), "attention_mask": torch.ones(8, 12, dtype=torch.long),
             "labels": torch.randint(0, 2, (8,), generator=g)} for _ in range(n)]


def test_sensitivity_is_per_layer_and_site_and_leaves_the_model_as_it_was():
    model = _tiny()
    model.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sens, sites = layer_sensitivity(model, _batches())
    assert sens.shape == (3, len(sites)) and "q" in sites and "down" in sites
    assert torch.all(sens >= 0) and torch.allclose(sens.mean(dim=0), torch.ones(len(sites), dtype=torch.double))
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_layer_that_cannot_change_the_output_ranks_last():
    model = _tiny()
    with torch.no_grad():
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                     "intermediate.dense", "output.dense"):
            model.bert.encoder.layer[1].get_submodule(name).weight.zero_()  # |w * grad| = 0 at every site
    sens, _ = layer_sensitivity(model, _batches())
    assert layer_ranking(sens)[-1] == 1 and torch.all(sens[1] == 0)


def test_seeds_cover_the_top_layers_of_the_ranking():
    space = SearchSpace(load_space("autopeft"), ModelDims(num_layers=6, hidden_size=384))
    seeds = [space.decode(p) for p in sensitivity_seeds(space, [5, 3, 4, 1, 2, 0])]
    assert [sorted({i for i, _ in plan.modules()}) for plan in seeds] == [[5], [3, 5], [3, 4, 5], list(range(6))]
    experts = SearchSpace(load_space("mola"), ModelDims(num_layers=6, hidden_size=384))
    last = experts.decode(sensitivity_seeds(experts, [5, 4, 3, 2, 1, 0])[-1])
    counts = {i: m.num_experts for i, m in last.modules()}
    assert counts[5] >= counts[4] >= counts[3] and counts[5] > counts.get(0, 0)  # more experts where more sensitive


def test_cli_run_with_sensitivity_seeds(tmp_path):
    out = subprocess.run([sys.executable, "-m", "autopeft", "run", "--workers", "0", "--objective", "synthetic",
                          "--study", "s", "--storage", f"sqlite:///{tmp_path / 's.db'}", "--seed-sensitivity",
                          "--train-examples", "64"], check=False, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "sensitivity seeds: layers by sensitivity [" in out.stdout and "queued 4 plans" in out.stdout
