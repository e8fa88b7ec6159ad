"""``pooled_only``: the last block computes what the sequence classifier reads, and no more.

The classifier of a BERT-family model (BERT, RoBERTa, XLM-R, ELECTRA) reads one position of the last block's
output, the first token. In that block only the attention mixes tokens, and only through its keys and values:
the first token's output needs every token's keys and values but no other token's query. So the last block
computes keys and values for every token and everything else -- the queries, the attention weights, the output
projection, its residual and LayerNorm, and the feed-forward sub-layer (two thirds of a block's matmuls) -- for
the first token alone: every logit is the same, to float rounding. Training and evaluation both gain; nothing
below the last block changes.

The queries are cut by the first-query forward of the self-attention module (:func:`_first_query_attention`, the
family's own forward restricted to one query position: transformers has no option for it), and the residual that
its output sub-layer adds by a pre-hook. A plan whose LoRA experts in the last block sit on the query or the
output projection keeps every query (their load-balancing loss averages over the tokens they see) and is cut after
the attention sub-layer only; experts on the keys or values see every token either way.

What does change, and why it is a fidelity option rather than always on: dropout after the cut (the attention
weights, the output projection, the feed-forward part) draws masks for one token per row instead of all of them,
so the random stream (and the numbers) of a seeded trial differ, within seeded noise. A plan that puts LoRA
experts after the attention sub-layer keeps the whole block: their load-balancing loss averages over every token,
and cutting would change it (:func:`cut_reason`).
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

from autopeft.errors import StudyError
from autopeft.peft.arch import ARCHS, get_arch
from autopeft.peft.modules import LoRAExperts

#: Set on a model whose last block was cut (the hooks' handles), so a second call does not cut twice.
CUT_ATTR = "_autopeft_pooled_cut"
#: Set on a model whose last block's queries were cut too (``True``).
QUERIES_ATTR = "_autopeft_pooled_queries"


def check_supported(config: Any) -> None:
    """Refuse ``pooled_only`` for a model family whose classifier reads another token, naming the flag and the fix."""
    arch = get_arch(config)
    if not arch.pooled_cut_path:
        raise StudyError(
            f"--pooled-only: {config.model_type!r} models ({arch.family} family) classify from another token than "
            "the first, or add a residual after the attention sub-layer returns, so the last block cannot be cut to "
            "one token; drop --pooled-only (it applies to BERT-family models: "
            + ", ".join(sorted(t for t, a in ARCHS.items() if a.pooled_cut_path)) + ")")


def _cut_site(model: nn.Module) -> tuple[nn.Module | None, str | None]:
    """The last block's sub-layer whose output is cut, or ``None`` and why the block must run every token."""
    arch = get_arch(model)
    if not arch.pooled_cut_path:
        return None, f"the {arch.family} family's classifier does not read the first token"
    last = arch.layers(model)[-1]
    try:
        kept = last.get_submodule(arch.pooled_cut_path)
    except AttributeError:
        return None, ("the last block is not the model's own (the frozen-layer cache feeds past it, or packed trials "
                      "split it)")
    kept_ids = {id(m) for m in kept.modules()}
    if any(isinstance(m, LoRAExperts) and id(m) not in kept_ids for m in last.modules()):
        return None, ("LoRA experts after the attention sub-layer of the last block average their load-balancing "
                      "loss over every token")
    return kept, None


def cut_reason(model: nn.Module) -> str | None:
    """Why ``model``'s last block must run every token (``None``: it may be cut)."""
    return _cut_site(model)[1]


def query_cut_reason(model: nn.Module) -> str | None:
    """Why ``model``'s last block must compute every token's query (``None``: only the first token's), given that
    the block may be cut after its attention sub-layer (:func:`cut_reason`)."""
    arch = get_arch(model)
    if not (arch.pooled_query_path and arch.pooled_residual_path):
        return f"the {arch.family} family names no self-attention whose queries may be cut"
    last = arch.layers(model)[-1]
    attention = last.get_submodule(arch.pooled_query_path)
    if not all(hasattr(attention, a) for a in ("query", "key", "value", "attention_head_size", "scaling", "dropout")):
        return "the last block's self-attention is not the model's own (packed trials split it)"
    shared = {id(m) for site in ("k", "v") if site in arch.site_paths for m in arch.get_linear(last, site).modules()}
    if any(isinstance(m, LoRAExperts) and id(m) not in shared for m in attention.modules()) or any(
            isinstance(m, LoRAExperts) for m in last.get_submodule(arch.pooled_residual_path).modules()):
        return "LoRA experts on the last block's query or output projection average their loss over every token"
    return None


class _FirstToken:
    """Forward hook: keep position 0 of a sub-layer's output, ``(B, T, C) -> (B, 1, C)``."""

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (output[0][:, :1], *output[1:])
        return output[:, :1]


def _first_residual(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook of the attention's output sub-layer ``(o(attention), residual)``: the residual's first token,
    to match an attention output that holds that token alone."""
    hidden, residual, *rest = args
    return (hidden, residual[:, :1], *rest)


def _first_query_attention(self: nn.Module, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                           **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """A BERT-family self-attention's forward for the first query position only, ``(B, T, C) -> (B, 1, C)``: keys
    and values from every token, through the same linears (and so the same adapters) and the same attention
    function (``config._attn_implementation``, prefix tuning's included) as the model's own forward."""
    if kwargs.pop("cache", None) is not None or kwargs.pop("past_key_values", None) is not None:
        raise ValueError("pooled_only: a key/value cache cannot be used with a last block cut to the first token")
    b, t = hidden_states.shape[:2]
    head = self.attention_head_size
    query = self.query(hidden_states[:, :1]).view(b, 1, -1, head).transpose(1, 2)  # (B, H, 1, hd)
    key = self.key(hidden_states).view(b, t, -1, head).transpose(1, 2)  # (B, H, T, hd)
    value = self.value(hidden_states).view(b, t, -1, head).transpose(1, 2)
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-2] > 1:
        attention_mask = attention_mask[..., :1, :]  # (B, 1, T, T) -> the first query's row
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    eager = sys.modules[type(self).__module__].eager_attention_forward  # the family's own
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager)
    out, weights = attend(self, query, key, value, attention_mask,
                          dropout=self.dropout.p if self.training else 0.0, scaling=self.scaling, **kwargs)
    return out.reshape(b, 1, -1).contiguous(), weights


def is_cut(model: nn.Module) -> bool:
    return getattr(model, CUT_ATTR, None) is not None


def queries_cut(model: nn.Module) -> bool:
    """Whether ``model``'s last block computes the first token's query alone."""
    return bool(getattr(model, QUERIES_ATTR, False))


def cut_last_block(model: nn.Module, queries: bool = True) -> bool:
    """Make ``model``'s last block run its remaining sub-layers for the first token only, in place; ``False`` (and
    nothing changed) when :func:`cut_reason` gives a reason. With ``queries`` (and no :func:`query_cut_reason`) the
    cut starts inside the attention, after the keys and values; otherwise after the attention sub-layer. The
    model's other outputs than the classifier's logits (the last block's hidden states) then hold one position."""
    if is_cut(model):
        return True
    sub, _ = _cut_site(model)
    if sub is None:
        return False
    handles = [sub.register_forward_hook(_FirstToken())]
    if queries and query_cut_reason(model) is None:
        arch = get_arch(model)
        last = arch.layers(model)[-1]
        attention = last.get_submodule(arch.pooled_query_path)
        attention.forward = _first_query_attention.__get__(attention)  # this module only, not its class
        handles.append(last.get_submodule(arch.pooled_residual_path).register_forward_pre_hook(_first_residual))
        setattr(model, QUERIES_ATTR, True)
    setattr(model, CUT_ATTR, handles)
    return True


__all__ = ["CUT_ATTR", "QUERIES_ATTR", "check_supported", "cut_last_block", "cut_reason", "is_cut",
           "query_cut_reason", "queries_cut"]
