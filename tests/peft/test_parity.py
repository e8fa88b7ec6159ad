"""Parity with Hugging Face peft: with the same weights, our LoRA (plain, rsLoRA, DoRA; per-layer ranks and
alphas), (IA)3 and prefix tuning give the same outputs and gradients as peft's, within 1e-5 in float32.

Weights go across through our peft export (``peft_adapter``) and peft's own ``set_peft_model_state_dict``, so
these tests also pin the export's key names and layouts. Both sides' new weights are randomised first (peft and
we both start LoRA at B = 0, which would hide most mistakes).
"""

from __future__ import annotations

import pytest
import torch

peft = pytest.importorskip("peft")
from peft import IA3Config, LoraConfig, PrefixTuningConfig, get_peft_model, set_peft_model_state_dict  # noqa: E402

from autopeft.peft import apply_plan, get_arch  # noqa: E402
from autopeft.peft.export_peft import peft_adapter  # noqa: E402
from autopeft.peft.modules import PrefixKV, PrefixMLP  # noqa: E402
from autopeft.peft.prefix_attention import PREFIX_ATTR  # noqa: E402
from autopeft.plan import ModuleSpec, PeftPlan  # noqa: E402

ATOL = 1e-5
KINDS = ("bert_cls", "llama_cls")


def _randomise_(model, seed=11):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(p + torch.randn(p.shape, generator=g) * 0.2)


def _ours(tiny, kind, plan):
    model = apply_plan(tiny.build(kind), plan, seed=0)
    _randomise_(model)
    return model


def _peer(tiny, kind, ours, plan, config):
    """peft's model on the same base weights, loaded with our model's (exported) weights."""
    peer = get_peft_model(tiny.build(kind), config)
    _, weights = peft_adapter(ours, plan)
    result = set_peft_model_state_dict(peer, weights)
    assert not result.unexpected_keys, result.unexpected_keys
    return peer.eval()


def _site_name(tiny, kind, layer, site):
    model = tiny.build(kind)
    arch = get_arch(model)
    base = arch.base_model(model)
    prefix = f"{model.base_model_prefix}." if base is not model else ""
    return f"{prefix}{arch.layers_path}.{layer}.{arch.site_paths[site]}"


def _compare(tiny, ours, peer, *, position_offset=0):
    ids = tiny.ids(batch=3)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    kw = {}
    if position_offset:
        pos = torch.arange(position_offset, position_offset + ids.shape[1]).expand(ids.shape[0], -1)
        kw = {"position_ids": pos}
    out_ours = ours(input_ids=ids, attention_mask=mask, **kw)
    out_peer = peer(input_ids=ids, attention_mask=mask)
    key = "logits" if getattr(out_ours, "logits", None) is not None else "last_hidden_state"
    a, b = getattr(out_ours, key), getattr(out_peer, key)
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    a.pow(2).mean().backward()
    b.pow(2).mean().backward()


def _grads(model, suffix_map):
    """{peft-style name: grad} for our trainable tensors, via ``suffix_map`` (our suffix -> peft suffix)."""
    out = {}
    for name, p in model.named_parameters():
        for ours, theirs in suffix_map.items():
            if name.endswith(ours):
                out[name[: -len(ours)] + theirs] = p.grad
    return out


def _peer_grads(peer):
    return {n.removeprefix("base_model.model.").replace(".default", ""): p.grad
            for n, p in peer.named_parameters() if p.requires_grad and p.grad is not None}


LORA_SUFFIXES = {".lora.lora_A": ".lora_A.weight", ".lora.lora_B": ".lora_B.weight",
                 ".lora.magnitude": ".lora_magnitude_vector.weight"}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", [None, "rslora", "dora"])
def test_lora_matches_peft_with_rank_and_alpha_patterns(tiny, kind, variant):
    # peft: r=4, alpha=8 on q and v of every layer, but q of layer 0 has rank 2 and v of layer 1 alpha 3
    q0, v1 = _site_name(tiny, kind, 0, "q"), _site_name(tiny, kind, 1, "v")
    q_leaf, v_leaf = q0.rsplit(".", 1)[1], v1.rsplit(".", 1)[1]
    config = LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=[q_leaf, v_leaf], lora_dropout=0.0,
                        use_rslora=variant == "rslora", use_dora=variant == "dora",
                        rank_pattern={q0.split(".", 1)[1]: 2}, alpha_pattern={v1.split(".", 1)[1]: 3})
    # the same plan, written out per layer
    plan = PeftPlan.from_modules(2, {
        0: [ModuleSpec("lora", "q", 2, alpha=8.0, variant=variant), ModuleSpec("lora", "v", 4, alpha=8.0, variant=variant)],
        1: [ModuleSpec("lora", "q", 4, alpha=8.0, variant=variant), ModuleSpec("lora", "v", 4, alpha=3.0, variant=variant)],
    })
    ours = _ours(tiny, kind, plan)
    peer = _peer(tiny, kind, ours, plan, config)
    ranks = {n.removeprefix("base_model.model.").removesuffix(".lora_A.default.weight"): p.shape[0]
             for n, p in peer.named_parameters() if n.endswith("lora_A.default.weight")}
    assert ranks == {q0: 2, v1.replace(".1.", ".0."): 4, q0.replace(".0.", ".1."): 4, v1: 4}
    _compare(tiny, ours, peer)
    theirs = _peer_grads(peer)
    mine = _grads(ours, LORA_SUFFIXES)
    assert len(mine) == (12 if variant == "dora" else 8)
    for name, grad in mine.items():
        torch.testing.assert_close(grad, theirs[name].view_as(grad), atol=ATOL, rtol=0, msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_lora_layers_to_transform_matches_a_plan_on_those_layers(tiny, kind):
    q_leaf = _site_name(tiny, kind, 0, "q").rsplit(".", 1)[1]
    pattern = get_arch(tiny.build(kind)).layers_path.rsplit(".", 1)[-1]
    config = LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=5, target_modules=[q_leaf], layers_to_transform=[1],
                        layers_pattern=pattern, lora_dropout=0.0)
    plan = PeftPlan.from_modules(2, {1: [ModuleSpec("lora", "q", 2, alpha=5.0)]})
    ours = _ours(tiny, kind, plan)
    peer = _peer(tiny, kind, ours, plan, config)
    adapted = [n for n, _ in peer.named_parameters() if "lora_A" in n]
    assert len(adapted) == 1 and ".1." in adapted[0]
    _compare(tiny, ours, peer)


@pytest.mark.parametrize("kind", KINDS)
def test_ia3_matches_peft(tiny, kind):
    names = {s: _site_name(tiny, kind, 0, s).rsplit(".", 1)[1] for s in ("k", "v", "down")}
    if kind == "bert_cls":  # BERT's down projection is "output.dense" (its attention output is "attention.output.dense")
        targets = [r".*\.layer\.\d+\.attention\.self\.(key|value)|.*\.layer\.\d+\.output\.dense"]
        config = IA3Config(task_type="SEQ_CLS", target_modules=targets[0], feedforward_modules=r".*\.layer\.\d+\.output\.dense")
    else:
        config = IA3Config(task_type="SEQ_CLS", target_modules=list(names.values()), feedforward_modules=[names["down"]])
    plan = PeftPlan.from_modules(2, {i: [ModuleSpec("ia3", s) for s in ("k", "v", "down")] for i in range(2)})
    ours = _ours(tiny, kind, plan)
    peer = _peer(tiny, kind, ours, plan, config)
    assert sum("ia3_l" in n for n, _ in peer.named_parameters()) == 6
    _compare(tiny, ours, peer)
    theirs = _peer_grads(peer)
    mine = _grads(ours, {".ia3_out.scale": ".ia3_l", ".ia3_in.scale": ".ia3_l"})
    assert len(mine) == 6
    for name, grad in mine.items():
        torch.testing.assert_close(grad, theirs[name].view_as(grad), atol=ATOL, rtol=0, msg=name)


# ----------------------------------------------------------------- prefix tuning
# peft runs prefix tuning through the key/value cache: it needs a model that takes past_key_values (BERT and LLaMA
# sequence classifiers do not, in transformers 5), and the real tokens' positions start after the prefix. We
# compare on the LLaMA LM and a bare BERT encoder, giving our model the same shifted position ids.
def _prefix_model(tiny, kind):
    if kind == "bert_model":
        from transformers import BertModel

        with torch.random.fork_rng():
            torch.manual_seed(0)
            return BertModel._from_config(tiny.config("bert_cls"), add_pooling_layer=False,
                                          attn_implementation="sdpa").eval()
    return tiny.build(kind)


@pytest.mark.parametrize(("kind", "task"), [("llama_lm", "CAUSAL_LM"), ("bert_model", "FEATURE_EXTRACTION")])
@pytest.mark.parametrize("projection", [False, True])
def test_prefix_matches_peft(tiny, kind, task, projection):
    size = 3
    peer = get_peft_model(_prefix_model(tiny, kind), PrefixTuningConfig(task_type=task, num_virtual_tokens=size,
                                                                       prefix_projection=projection)).eval()
    encoder = peer.prompt_encoder["default"]
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in encoder.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    ours = _prefix_model(tiny, kind)
    variant = "mlp" if projection else None
    plan = PeftPlan.from_modules(2, {i: [ModuleSpec("prefix", "attn", size, variant=variant)] for i in range(2)})
    apply_plan(ours, plan, seed=0)
    arch = get_arch(ours)
    prefixes = [getattr(arch.attention(layer), PREFIX_ATTR) for layer in arch.layers(ours)]
    c = arch.num_kv_heads(ours.config) * arch.head_dim(ours.config)
    with torch.no_grad():  # peft's layout per virtual token: (layer, key|value, head, head_dim)
        for i, prefix in enumerate(prefixes):
            if projection:
                assert isinstance(prefix, PrefixMLP)
                prefix.embedding.copy_(encoder.embedding.weight)  # peft shares E and the hidden layer
                prefix.hidden.load_state_dict(encoder.transform[0].state_dict())
                prefix.out.weight.copy_(encoder.transform[2].weight[2 * i * c:(2 * i + 2) * c])
                prefix.out.bias.copy_(encoder.transform[2].bias[2 * i * c:(2 * i + 2) * c])
            else:
                assert isinstance(prefix, PrefixKV)
                kv = encoder.embedding.weight.view(size, 2, 2, -1, arch.head_dim(ours.config))[:, i]
                prefix.key.copy_(kv[:, 0].transpose(0, 1))
                prefix.value.copy_(kv[:, 1].transpose(0, 1))
    _compare(tiny, ours, peer, position_offset=size)
    if projection:  # peft's shared E / hidden layer get the sum of our per-layer gradients
        torch.testing.assert_close(sum(p.embedding.grad for p in prefixes), encoder.embedding.weight.grad,
                                   atol=ATOL, rtol=0)
        torch.testing.assert_close(sum(p.hidden.weight.grad for p in prefixes), encoder.transform[0].weight.grad,
                                   atol=ATOL, rtol=0)
        theirs = torch.cat([p.out.weight.grad for p in prefixes])
        torch.testing.assert_close(theirs, encoder.transform[2].weight.grad, atol=ATOL, rtol=0)
    else:
        grad = encoder.embedding.weight.grad.view(size, 2, 2, -1, arch.head_dim(ours.config))
        for i, prefix in enumerate(prefixes):
            torch.testing.assert_close(prefix.key.grad, grad[:, i, 0].transpose(0, 1), atol=ATOL, rtol=0)
            torch.testing.assert_close(prefix.value.grad, grad[:, i, 1].transpose(0, 1), atol=ATOL, rtol=0)
