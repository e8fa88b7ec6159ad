"""The attention functions autopeft registers with transformers' attention interface: prefix keys/values, and
``sdpa`` with autopeft's CPU dropout mask.

transformers (>= 4.48) looks the attention function up by ``config._attn_implementation`` in
``AttentionInterface`` and the mask builder in ``AttentionMaskInterface``. :func:`enable_prefix_attention` switches a
model from ``sdpa`` to :data:`PREFIX_SDPA` (or ``eager`` to :data:`PREFIX_EAGER`); both run the original
computation and, on an attention module that carries ``autopeft_prefix`` (a :class:`PrefixKV`), first

* prepend the prefix to key and value: (B, H_kv, L + S, hd), after RoPE and after any cache update, so the
  prefix is neither rotated nor cached;
* prepend L always-visible columns to the mask: every query sees every prefix slot, real keys keep their
  causal and padding mask.

The mask builder is ``sdpa_mask`` with the causal shortcut turned off, so causal models hand over an explicit
boolean (B, 1, T, S) mask; a ``None`` mask that still means "causal" is materialised here anyway.

:data:`SDPA` (``autopeft_sdpa``) is ``sdpa`` except where the attention weights draw dropout on CPU (training,
``dropout > 0``, not causal): there torch's scaled-dot-product attention runs its math path, whose mask is
torch's float Bernoulli mask, and this function runs the same softmax(Q K^T * scale + mask) V as plain ops with
:func:`autopeft.kernels.dropout` instead (``docs/kernels.md``). :func:`use_fast_dropout` switches a model to it
and its ``nn.Dropout`` modules to :class:`autopeft.kernels.Dropout`; the trainer does so on CPU. Prefix tuning's
``autopeft_prefix`` runs on top of it.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from autopeft import kernels
from autopeft.errors import UnsupportedModelError

PREFIX_SDPA = "autopeft_prefix"
PREFIX_EAGER = "autopeft_prefix_eager"
SDPA = "autopeft_sdpa"
_WRAPS = {"sdpa": PREFIX_SDPA, SDPA: PREFIX_SDPA, "eager": PREFIX_EAGER}
PREFIX_ATTR = "autopeft_prefix"  # attribute name of the PrefixKV on an attention module


def eager_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                    **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax(Q K^T * scale + mask) V, as the models' own eager paths; accepts bool or additive masks."""
    n_rep = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)  # (B, H, S, hd)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    att = torch.matmul(query, key.transpose(2, 3)).mul_(scaling)  # (B, H, T, S)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            att = att.masked_fill(~attention_mask, torch.finfo(att.dtype).min)
        else:
            att = att + attention_mask
    att = F.softmax(att, dim=-1, dtype=torch.float32).to(query.dtype)
    att = kernels.dropout(att, dropout, module.training)
    out = torch.matmul(att, value).transpose(1, 2).contiguous()  # (B, T, H, hd)
    return out, att


def _causal(module: nn.Module, is_causal: bool | None) -> bool:
    """Whether a call attends causally: its ``is_causal`` argument, else the module's own flag."""
    return bool(getattr(module, "is_causal", False) if is_causal is None else is_causal)


def sdpa_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: torch.Tensor | None, dropout: float = 0.0,
                   **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """``sdpa``, or :func:`eager_attention` (autopeft's dropout mask) where the weights draw dropout on CPU."""
    cpu_dropout = dropout > 0.0 and module.training and query.device.type == "cpu"
    if cpu_dropout and not _causal(module, kwargs.get("is_causal")):
        kwargs.pop("is_causal", None)
        return eager_attention(module, query, key, value, attention_mask, dropout=dropout, **kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, **kwargs)


def extend_mask(mask: torch.Tensor | None, q_len: int, kv_len: int, prefix_len: int, causal: bool,
                device: torch.device) -> torch.Tensor | None:
    """The mask for keys ``[prefix; real]``: prefix columns visible to all queries, real columns as before.

    ``mask`` is bool (True = attend) or additive float, shaped (B or 1, 1 or H, T, S). ``None`` means no
    padding: full attention, or causal attention in torch's top-left convention when ``causal`` and T > 1.
    """
    if mask is None:
        if not causal or q_len == 1:
            return None  # nothing is hidden from anyone, prefix included
        q_idx = torch.arange(q_len, device=device)[:, None]
        mask = (q_idx >= torch.arange(kv_len, device=device)[None, :]).view(1, 1, q_len, kv_len)  # (1, 1, T, S)
    if prefix_len == 0:
        return mask
    shape = (*mask.shape[:-1], prefix_len)  # (B, 1, T, L)
    visible = torch.ones(shape, dtype=torch.bool, device=mask.device) if mask.dtype == torch.bool \
        else torch.zeros(shape, dtype=mask.dtype, device=mask.device)
    return torch.cat([visible, mask], dim=-1)  # (B, 1, T, L + S)


def _with_prefix(base: Callable, module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    prefix = getattr(module, PREFIX_ATTR, None)
    if prefix is None and base is sdpa_attention:
        return base(module, query, key, value, attention_mask, **kwargs)  # untouched layer
    causal = _causal(module, kwargs.pop("is_causal", None))
    prefix_len = 0 if prefix is None else prefix.size
    attention_mask = extend_mask(attention_mask, query.shape[2], key.shape[2], prefix_len, causal, query.device)
    if prefix is not None:
        pk, pv = prefix(key.shape[0])  # (B, H_kv, L, hd) each
        key = torch.cat([pk.to(key.dtype), key], dim=2)  # (B, H_kv, L + S, hd)
        value = torch.cat([pv.to(value.dtype), value], dim=2)
    return base(module, query, key, value, attention_mask, is_causal=False, **kwargs)


def prefix_sdpa_attention(module, query, key, value, attention_mask, **kwargs):
    return _with_prefix(sdpa_attention, module, query, key, value, attention_mask, **kwargs)


def prefix_eager_attention(module, query, key, value, attention_mask, **kwargs):
    return _with_prefix(eager_attention, module, query, key, value, attention_mask, **kwargs)


def materialised_mask(*args: Any, allow_is_causal_skip: bool = True, **kwargs: Any) -> torch.Tensor | None:
    """``sdpa_mask`` that never replaces a causal mask by ``None`` (we must extend it with prefix columns)."""
    return sdpa_mask(*args, allow_is_causal_skip=False, **kwargs)


AttentionInterface.register(SDPA, sdpa_attention)
AttentionMaskInterface.register(SDPA, sdpa_mask)
AttentionInterface.register(PREFIX_SDPA, prefix_sdpa_attention)
AttentionInterface.register(PREFIX_EAGER, prefix_eager_attention)
AttentionMaskInterface.register(PREFIX_SDPA, materialised_mask)
AttentionMaskInterface.register(PREFIX_EAGER, materialised_mask)


def prefix_implementation(model: nn.Module) -> str:
    """The prefix-aware attention name for ``model``; :class:`UnsupportedModelError` if there is none."""
    impl = getattr(model.config, "_attn_implementation", None)
    if impl in _WRAPS.values():
        return impl
    if impl not in _WRAPS:
        raise UnsupportedModelError(
            f"attn_implementation: prefix tuning needs 'sdpa' or 'eager' attention, the model uses {impl!r}; "
            "load it with attn_implementation='sdpa'"
        )
    return _WRAPS[impl]


def enable_prefix_attention(model: nn.Module) -> None:
    """Route ``model``'s attention through the prefix-aware functions (idempotent)."""
    target = prefix_implementation(model)
    if model.config._attn_implementation == target:
        return
    model.set_attn_implementation(target)
    if model.config._attn_implementation != target:  # a model that refuses to switch at run time
        raise UnsupportedModelError(
            f"attn_implementation: {type(model).__name__} does not let autopeft switch its attention to "
            f"{target!r}, which prefix tuning needs"
        )


def use_fast_dropout(model: nn.Module) -> None:
    """On CPU, draw ``model``'s dropout masks with :func:`autopeft.kernels.dropout`: its ``nn.Dropout`` modules become
    :class:`autopeft.kernels.Dropout` and its ``sdpa`` attention :data:`SDPA` (idempotent; numbers change within
    seeded noise, as another random stream)."""
    for name, module in list(model.named_modules()):
        if type(module) is nn.Dropout:
            fast = kernels.Dropout(module.p)
            fast.train(module.training)
            model.set_submodule(name, fast)
    config = getattr(model, "config", None)
    can_switch = getattr(model, "_can_set_attn_implementation", None)  # False: attention outside the interface
    if getattr(config, "_attn_implementation", None) == "sdpa" and can_switch is not None and can_switch():
        try:
            model.set_attn_implementation(SDPA)
        except (ValueError, ImportError):  # a model that refuses the name keeps torch's sdpa and its dropout
            pass


__all__ = ["PREFIX_EAGER", "PREFIX_SDPA", "SDPA", "enable_prefix_attention", "extend_mask", "prefix_implementation",
           "sdpa_attention", "use_fast_dropout"]
