"""``pooled_only``: the last block computes what the sequence classifier reads, and no more.

The classifier of a BERT-family model (BERT, RoBERTa, XLM-R, ELECTRA) reads one position of the last block's
output, the first token. In that block only the attention sub-layer mixes tokens; after it each token goes through
the feed-forward sub-layer on its own. So the feed-forward sub-layer (two thirds of a block's matmuls) and
everything after it can run for the first token alone: every logit is the same, to float rounding. Training and
evaluation both gain; nothing below the last block changes.

What does change, and why it is a fidelity option rather than always on: dropout in the last block's feed-forward
part draws masks for one token per row instead of all of them, so the random stream (and the numbers) of a seeded
trial differ, within seeded noise. A plan that puts LoRA experts after the cut keeps the whole block: their
load-balancing loss averages over every token, and cutting would change it (:func:`cut_reason`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from autopeft.errors import StudyError
from autopeft.peft.arch import ARCHS, get_arch
from autopeft.peft.modules import LoRAExperts

#: Set on a model whose last block was cut (the hook's handle), so a second call does not cut twice.
CUT_ATTR = "_autopeft_pooled_cut"


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


class _FirstToken:
    """Forward hook: keep position 0 of a sub-layer's output, ``(B, T, C) -> (B, 1, C)``."""

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (output[0][:, :1], *output[1:])
        return output[:, :1]


def is_cut(model: nn.Module) -> bool:
    return getattr(model, CUT_ATTR, None) is not None


def cut_last_block(model: nn.Module) -> bool:
    """Make ``model``'s last block run its remaining sub-layers for the first token only, in place; ``False`` (and
    nothing changed) when :func:`cut_reason` gives a reason. The model's other outputs than the classifier's logits
    (the last block's hidden states) then hold one position."""
    if is_cut(model):
        return True
    sub, _ = _cut_site(model)
    if sub is None:
        return False
    setattr(model, CUT_ATTR, sub.register_forward_hook(_FirstToken()))
    return True


__all__ = ["CUT_ATTR", "check_supported", "cut_last_block", "cut_reason", "is_cut"]
