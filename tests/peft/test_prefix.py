"""Prefix tuning through transformers' attention interface: masks, padding, causality, eager/sdpa, KV cache."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from autopeft.errors import UnsupportedModelError
from autopeft.peft import apply_plan, get_arch
from autopeft.peft.modules import PrefixKV
from autopeft.peft.prefix_attention import PREFIX_EAGER, PREFIX_SDPA, enable_prefix_attention, extend_mask
from autopeft.plan import ModuleSpec, PeftPlan

ATOL = 1e-5


def _prefixed(tiny, kind, *, size=3, attn="sdpa", layers=(0, 1), seed=0, std=None):
    model = tiny.build(kind, attn=attn)
    plan = PeftPlan.from_modules(tiny.NUM_LAYERS, {i: [ModuleSpec("prefix", "attn", size)] for i in layers})
    apply_plan(model, plan, seed=seed)
    if std is not None:  # a bigger prefix makes any masking mistake visible
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, PrefixKV):
                    m.key.normal_(0, std, generator=g)
                    m.value.normal_(0, std, generator=g)
    return model


def test_prefix_shapes_and_attn_switch(tiny, kind):
    model = _prefixed(tiny, kind, size=3)
    assert model.config._attn_implementation == PREFIX_SDPA
    arch = get_arch(model)
    prefixes = [arch.attention(layer).autopeft_prefix for layer in arch.layers(model)]
    heads = 4 if kind == "bert_cls" else 2  # LLaMA: one prefix per key/value head (GQA)
    assert all(p.key.shape == p.value.shape == (heads, 3, 8) for p in prefixes)


def test_eager_models_keep_an_eager_path(tiny, kind):
    model = _prefixed(tiny, kind, attn="eager")
    assert model.config._attn_implementation == PREFIX_EAGER


@pytest.mark.parametrize("std", [None, 1.0])
def test_eager_and_sdpa_paths_agree(tiny, kind, std):
    ids = tiny.ids(length=6)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    out = {attn: tiny.logits(_prefixed(tiny, kind, attn=attn, std=std), ids, attention_mask=mask)
           for attn in ("sdpa", "eager")}
    torch.testing.assert_close(out["sdpa"], out["eager"], atol=ATOL, rtol=1e-4)


def test_layers_without_prefix_compute_what_the_base_model_computes(tiny):
    ids = tiny.ids()
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    for kind in ("bert_cls", "llama_lm"):
        for attn in ("sdpa", "eager"):
            base = tiny.logits(tiny.build(kind, attn=attn), ids, attention_mask=mask)
            model = _prefixed(tiny, kind, layers=(1,), attn=attn)
            arch = get_arch(model)
            assert not hasattr(arch.attention(arch.layers(model)[0]), "autopeft_prefix")
            del arch.attention(arch.layers(model)[1]).autopeft_prefix  # now no layer has a prefix
            torch.testing.assert_close(tiny.logits(model, ids, attention_mask=mask), base, atol=ATOL, rtol=1e-4)


def _pad(ids: torch.Tensor, length: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    n = ids.shape[1]
    padded = torch.zeros(1, length, dtype=ids.dtype)
    mask = torch.zeros(1, length, dtype=torch.long)
    where = slice(length - n, length) if left else slice(0, n)
    padded[:, where], mask[:, where] = ids, 1
    return padded, mask


@pytest.mark.parametrize(("kind", "left"), [("bert_cls", False), ("llama_cls", False), ("llama_cls", True),
                                           ("llama_lm", False), ("llama_lm", True)])
def test_padded_batch_matches_unpadded_example(tiny, kind, left):
    model = _prefixed(tiny, kind, std=1.0)
    long_, short = tiny.ids(batch=1, length=7, seed=3), tiny.ids(batch=1, length=4, seed=4)
    padded, pad_mask = _pad(short, 7, left)
    ids = torch.cat([long_, padded])
    mask = torch.cat([torch.ones_like(long_), pad_mask])
    kwargs = {}
    if kind.startswith("llama") and left:  # positions count real tokens only
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    batched = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, **kwargs)
    alone = model(input_ids=short, attention_mask=torch.ones_like(short), output_hidden_states=True)
    real = slice(3, 7) if left else slice(0, 4)
    torch.testing.assert_close(batched.hidden_states[-1][1, real], alone.hidden_states[-1][0], atol=ATOL, rtol=1e-4)
    if kind == "llama_lm":
        torch.testing.assert_close(batched.logits[1, real], alone.logits[0], atol=ATOL, rtol=1e-4)
    else:  # one logit row per sequence (BERT: [CLS] via the pooler; LLaMA: last real token)
        torch.testing.assert_close(batched.logits[1], alone.logits[0], atol=ATOL, rtol=1e-4)
    # and the long example is unaffected by sharing the batch
    torch.testing.assert_close(batched.logits[0], model(input_ids=long_).logits[0], atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("with_mask", [False, True])
def test_causal_llama_with_prefix_does_not_look_ahead(tiny, with_mask):
    model = _prefixed(tiny, "llama_lm", std=1.0)
    ids = tiny.ids(batch=2, length=8)
    changed = ids.clone()
    changed[:, 5:] = (changed[:, 5:] + 7) % 99 + 1
    kw = (lambda x: {"attention_mask": torch.ones_like(x)}) if with_mask else (lambda x: {})
    a, b = tiny.logits(model, ids, **kw(ids)), tiny.logits(model, changed, **kw(changed))
    torch.testing.assert_close(a[:, :5], b[:, :5], atol=ATOL, rtol=1e-4)
    assert not torch.allclose(a[:, 5:], b[:, 5:], atol=1e-3)


def test_prefix_is_seen_by_every_query(tiny):
    """The first token of a causal model sees only itself and the prefix: its output must depend on the prefix."""
    model = _prefixed(tiny, "llama_lm", std=1.0)
    ids = tiny.ids(batch=1, length=4)
    before = tiny.logits(model, ids)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, PrefixKV):
                m.value.mul_(2.0)
    after = tiny.logits(model, ids)
    assert (before - after)[0].abs().amax(-1).min() > 1e-4


def test_kv_cache_decoding_matches_full_forward(tiny):
    model = _prefixed(tiny, "llama_lm", std=1.0)
    ids = tiny.ids(batch=2, length=8)
    full = tiny.logits(model, ids)
    first = model(input_ids=ids[:, :5], use_cache=True)
    step = model(input_ids=ids[:, 5:6], cache=first.cache, use_cache=True)
    torch.testing.assert_close(step.logits[:, 0], full[:, 5], atol=ATOL, rtol=1e-4)
    rest = model(input_ids=ids[:, 6:], cache=step.cache, use_cache=True)
    torch.testing.assert_close(rest.logits, full[:, 6:], atol=ATOL, rtol=1e-4)


def test_prefix_gets_gradients_base_does_not(tiny, kind):
    model = _prefixed(tiny, kind)
    tiny.logits(model, tiny.ids()).pow(2).sum().backward()
    for name, p in model.named_parameters():
        if "autopeft_prefix" in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        elif not p.requires_grad:
            assert p.grad is None


# ------------------------------------------------------------------------------------------ mask unit tests
def test_extend_mask_none_bidirectional_stays_none():
    assert extend_mask(None, 3, 3, 2, causal=False, device=torch.device("cpu")) is None
    assert extend_mask(None, 1, 5, 2, causal=True, device=torch.device("cpu")) is None  # one query sees all


def test_extend_mask_none_causal_is_materialised():
    mask = extend_mask(None, 3, 3, 2, causal=True, device=torch.device("cpu"))
    expected = torch.tensor([[1, 1, 1, 0, 0],
                             [1, 1, 1, 1, 0],
                             [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected.view(1, 1, 3, 5))


def test_extend_mask_keeps_padding_hidden():
    bool_mask = torch.tensor([[True, True, False]]).view(1, 1, 1, 3).expand(2, 1, 2, 3)
    out = extend_mask(bool_mask, 2, 3, 2, causal=False, device=torch.device("cpu"))
    assert out.shape == (2, 1, 2, 5) and out[..., :2].all() and torch.equal(out[..., 2:], bool_mask)
    float_mask = torch.where(bool_mask, 0.0, torch.finfo(torch.float32).min)
    out = extend_mask(float_mask, 2, 3, 2, causal=False, device=torch.device("cpu"))
    assert (out[..., :2] == 0).all() and torch.equal(out[..., 2:], float_mask)


def test_unsupported_attention_implementation_is_refused(tiny):
    fake = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2"))
    with pytest.raises(UnsupportedModelError, match="sdpa"):
        enable_prefix_attention(fake)
    model = tiny.build("llama_lm")
    model.config._attn_implementation = "flex_attention"  # as loaded with attn_implementation="flex_attention"
    with pytest.raises(UnsupportedModelError, match="attn_implementation.*flex_attention"):
        apply_plan(model, tiny.plan("mixed"))
    assert all(p.requires_grad for p in model.parameters())  # refused before anything changed


# --------------------------------------------------------------------------- autopeft_sdpa: the CPU dropout mask
def _qkv(seed=0, b=2, h=3, t=5, hd=4):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, t, hd, generator=g) for _ in range(3))
    mask = torch.ones(b, 1, t, t, dtype=torch.bool)
    mask[1, ..., 3:] = False  # the second row's last two keys are padding
    return q, k, v, mask


def test_sdpa_attention_is_sdpa_without_dropout():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from autopeft.peft.prefix_attention import sdpa_attention

    q, k, v, mask = _qkv()
    for training, p in ((False, 0.1), (True, 0.0)):
        module = SimpleNamespace(training=training, is_causal=False)
        ours = sdpa_attention(module, q, k, v, mask, dropout=p if training else 0.0, scaling=0.5)[0]
        theirs = sdpa_attention_forward(module, q, k, v, mask, dropout=p if training else 0.0, scaling=0.5)[0]
        assert torch.equal(ours, theirs)


def test_sdpa_attention_draws_the_cpu_mask_on_the_weights_when_training():
    from autopeft.kernels.cpu_dropout import keep_mask, keep_probability
    from autopeft.peft.prefix_attention import sdpa_attention

    q, k, v, mask = _qkv(1)
    module = SimpleNamespace(training=True, is_causal=False)
    torch.manual_seed(4)
    out = sdpa_attention(module, q, k, v, mask, dropout=0.25, scaling=0.5)[0]  # (B, T, H, hd)
    torch.manual_seed(4)
    weights = torch.softmax((q @ k.transpose(2, 3) * 0.5).masked_fill(~mask, float("-inf")), -1)
    kept = keep_mask(weights.shape, 0.25)
    expected = (weights * kept / keep_probability(0.25)) @ v
    torch.testing.assert_close(out, expected.transpose(1, 2), atol=ATOL, rtol=1e-5)


def test_causal_attention_keeps_torch_sdpa_with_its_dropout():
    """The eager path handles no causal shortcut (a ``None`` mask meaning causal), so causal modules keep sdpa."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from autopeft.peft.prefix_attention import sdpa_attention

    q, k, v, _ = _qkv(2)
    module = SimpleNamespace(training=True, is_causal=True)
    torch.manual_seed(8)
    ours = sdpa_attention(module, q, k, v, None, dropout=0.3)[0]
    torch.manual_seed(8)
    assert torch.equal(ours, sdpa_attention_forward(module, q, k, v, None, dropout=0.3)[0])


def test_use_fast_dropout_keeps_eval_logits_and_trains(tiny, kind):
    from autopeft.kernels import Dropout
    from autopeft.peft.prefix_attention import SDPA, use_fast_dropout

    model = tiny.build(kind)
    for m in model.modules():  # dropout everywhere, so the switch is visible
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.2
    ids = tiny.ids(length=6)
    before = tiny.logits(model, ids)
    dropouts = sum(type(m) is torch.nn.Dropout for m in model.modules())
    use_fast_dropout(model)
    use_fast_dropout(model)  # idempotent
    assert model.config._attn_implementation == SDPA
    assert sum(type(m) is Dropout for m in model.modules()) == dropouts
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    torch.testing.assert_close(tiny.logits(model, ids), before, atol=0, rtol=0)
    model.train()
    torch.manual_seed(0)
    a = tiny.logits(model, ids)
    a.sum().backward()
    torch.manual_seed(0)
    assert torch.equal(tiny.logits(model, ids), a)  # seeded
    if kind == "bert_cls":
        assert not torch.allclose(a, before)  # dropout is on
    plan = PeftPlan.from_modules(tiny.NUM_LAYERS, {0: [ModuleSpec("prefix", "attn", 2)]})
    apply_plan(model, plan, seed=0)  # prefix tuning runs on top of it
    assert model.config._attn_implementation == PREFIX_SDPA


def test_use_fast_dropout_leaves_a_model_that_cannot_switch_on_sdpa():
    from autopeft.kernels import Dropout
    from autopeft.peft.prefix_attention import use_fast_dropout

    class Fixed(torch.nn.Module):  # attention outside transformers' interface
        def __init__(self):
            super().__init__()
            self.config = SimpleNamespace(_attn_implementation="sdpa")
            self.drop = torch.nn.Dropout(0.1)

        def _can_set_attn_implementation(self):
            return False

    class Refusing(Fixed):
        def _can_set_attn_implementation(self):
            return True

        def set_attn_implementation(self, name):
            raise ValueError(f"{name} is not supported")

    for cls in (Fixed, Refusing):
        model = cls()
        use_fast_dropout(model)
        assert model.config._attn_implementation == "sdpa" and type(model.drop) is Dropout
