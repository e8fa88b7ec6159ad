"""Export in peft's format: PeftModel.from_pretrained loads what we write and computes what our model computes;
plans peft cannot express are refused part by part."""

from __future__ import annotations

import json

import pytest
import torch

peft = pytest.importorskip("peft")
from peft import PeftModel  # noqa: E402

from autopeft.errors import PlanError  # noqa: E402
from autopeft.peft import apply_plan  # noqa: E402
from autopeft.peft.export_peft import CONFIG_NAME, peft_inexpressible, save_peft_adapter  # noqa: E402
from autopeft.plan import ModuleSpec as M  # noqa: E402
from autopeft.plan import PeftPlan  # noqa: E402

ATOL = 1e-5

PLANS = {
    # irregular: other sites and ranks per layer, an alpha override, the FFN too (BERT's ambiguous "dense" names)
    "lora": {0: [M("lora", "q", 2), M("lora", "v", 4), M("lora", "down", 4, alpha=3.0)],
             1: [M("lora", "o", 4), M("lora", "up", 8, alpha=5.0)]},
    "rslora": {0: [M("lora", "k", 4, variant="rslora")], 1: [M("lora", "v", 2, alpha=6.0, variant="rslora")]},
    "dora": {0: [M("lora", "q", 4, variant="dora"), M("lora", "o", 2, variant="dora")],
             1: [M("lora", "down", 4, variant="dora")]},
    "ia3": {0: [M("ia3", "k"), M("ia3", "v"), M("ia3", "down")], 1: [M("ia3", "v")]},
}


def _trained(tiny, kind, plan):
    model = apply_plan(tiny.build(kind), plan, seed=0)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


@pytest.mark.parametrize("kind", ["bert_cls", "llama_cls"])
@pytest.mark.parametrize("name", list(PLANS))
def test_peft_loads_the_export_with_the_same_outputs(tiny, kind, name, tmp_path):
    plan = PeftPlan.from_modules(2, PLANS[name])
    ours = _trained(tiny, kind, plan)
    save_peft_adapter(ours, plan, tmp_path, base_model_name="tiny")
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    loaded = PeftModel.from_pretrained(tiny.build(kind), str(tmp_path)).eval()
    ids = tiny.ids(batch=3)
    mask = torch.ones_like(ids)
    mask[2, 4:] = 0
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids, attention_mask=mask).logits,
                                   ours(input_ids=ids, attention_mask=mask).logits, atol=ATOL, rtol=0)
    if name in ("lora", "rslora"):
        assert config["rank_pattern"] or config["alpha_pattern"]  # per-layer sizes went through the patterns
    assert config["modules_to_save"] == (["classifier"] if kind == "bert_cls" else ["score"])


def test_prefix_export_loads_with_peft_layout(tiny, tmp_path):
    plan = PeftPlan.from_modules(2, {i: [M("prefix", "attn", 3, variant="mlp")] for i in range(2)})
    ours = _trained(tiny, "llama_lm", plan)
    save_peft_adapter(ours, plan, tmp_path)
    loaded = PeftModel.from_pretrained(tiny.build("llama_lm"), str(tmp_path)).eval()
    ids = tiny.ids()
    pos = torch.arange(3, 3 + ids.shape[1]).expand(ids.shape[0], -1)  # peft shifts positions by the prefix length
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, ours(input_ids=ids, position_ids=pos).logits,
                                   atol=ATOL, rtol=0)


@pytest.mark.parametrize(("modules", "fragments"), [
    ({0: [M("serial_adapter", "ffn", 4)], 1: [M("serial_adapter", "ffn", 4)]},
     ["serial_adapter on ffn @L0-1 cannot be expressed in peft"]),
    ({0: [M("lora", "q", 4), M("ia3", "v")]}, ["one method per adapter", "lora, ia3"]),
    ({0: [M("lora", "q", 4, variant="dora"), M("lora", "v", 4)]}, ["lora variants dora, lora are mixed"]),
    ({0: [M("prefix", "attn", 4)], 1: [M("prefix", "attn", 2)]}, ["same number of virtual tokens"]),
    ({1: [M("lora_experts", "q", 2, num_experts=2, top_k=1, variant="dynmole")]},
     ["lora_experts (dynmole) on q @L1 cannot be expressed"]),
])
def test_inexpressible_plans_name_their_parts(modules, fragments):
    parts = "; ".join(peft_inexpressible(PeftPlan.from_modules(2, modules)))
    for fragment in fragments:
        assert fragment in parts


def test_refusal_writes_nothing(tiny, tmp_path):
    plan = PeftPlan.from_modules(2, {0: [M("hydra", "q", 2)]})
    with pytest.raises(PlanError, match="hydra on q @L0 cannot be expressed in peft"):
        save_peft_adapter(apply_plan(tiny.build("bert_cls"), plan, seed=0), plan, tmp_path / "out")
    assert not (tmp_path / "out").exists()
