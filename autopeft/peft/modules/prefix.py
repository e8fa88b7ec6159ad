"""Prefix tuning: learned virtual keys and values prepended to one layer's attention.

    attn(Q, [P_k; K], [P_v; V]),   P_k, P_v: (n_kv_heads, L, head_dim)

Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation", https://arxiv.org/abs/2101.00190.
Two parametrisations with one interface (``forward(batch_size) -> (keys, values)``, ``size``):

* :class:`PrefixKV` (variant ``direct``): P itself is trained. Init: normal, std 0.02 (the usual transformer
  init scale), so the prefix starts small but not zero: unlike most methods, it changes outputs from step 0.
* :class:`PrefixMLP` (variant ``mlp``): the paper's reparametrisation P = MLP(E), E: (L, c), MLP c -> c (tanh)
  -> 2c with c = n_kv_heads * head_dim, one per layer. Init as peft's (embedding N(0, 1), linears nn.Linear's
  default). :meth:`PrefixMLP.merged` returns the :class:`PrefixKV` it computes; ``merge_plan`` swaps it in.

Prefix keys are not rotated by RoPE, every query sees every prefix position, and a model's padding mask still
hides its padded tokens. The attention function that does the prepending lives in
:mod:`autopeft.peft.prefix_attention`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import skip_init

from autopeft.peft.modules._init import linear_init_

PREFIX_INIT_STD = 0.02


class PrefixKV(nn.Module):
    """``size`` virtual key/value vectors per key/value head, for one attention module."""

    def __init__(self, num_kv_heads: int, size: int, head_dim: int, generator: torch.Generator | None = None):
        super().__init__()
        self.key = nn.Parameter(torch.empty(num_kv_heads, size, head_dim))  # (H_kv, L, hd)
        self.value = nn.Parameter(torch.empty(num_kv_heads, size, head_dim))
        with torch.no_grad():
            self.key.normal_(0.0, PREFIX_INIT_STD, generator=generator)
            self.value.normal_(0.0, PREFIX_INIT_STD, generator=generator)

    @property
    def size(self) -> int:
        return self.key.shape[1]

    def forward(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values broadcast over the batch: two (B, H_kv, L, hd) views, no copy."""
        return (self.key.unsqueeze(0).expand(batch_size, -1, -1, -1),
                self.value.unsqueeze(0).expand(batch_size, -1, -1, -1))

    def extra_repr(self) -> str:
        h, l, d = self.key.shape
        return f"kv_heads={h}, size={l}, head_dim={d}"


class PrefixMLP(nn.Module):
    """P = MLP(E): an embedding of ``size`` rows through a two-layer tanh MLP into keys and values."""

    def __init__(self, num_kv_heads: int, size: int, head_dim: int, generator: torch.Generator | None = None):
        super().__init__()
        self.num_kv_heads, self.head_dim = num_kv_heads, head_dim
        c = num_kv_heads * head_dim
        self.embedding = nn.Parameter(torch.empty(size, c))  # (L, c)
        self.hidden = skip_init(nn.Linear, c, c)  # skip_init: no draw from the global RNG
        self.out = skip_init(nn.Linear, c, 2 * c)
        with torch.no_grad():
            self.embedding.normal_(0.0, 1.0, generator=generator)
        linear_init_(self.hidden.weight, self.hidden.bias, generator)
        linear_init_(self.out.weight, self.out.bias, generator)

    @property
    def size(self) -> int:
        return self.embedding.shape[0]

    def key_value(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(H_kv, L, hd) keys and values."""
        kv = self.out(torch.tanh(self.hidden(self.embedding)))  # (L, 2c)
        kv = kv.view(self.size, 2, self.num_kv_heads, self.head_dim)  # (L, 2, H_kv, hd)
        return kv[:, 0].transpose(0, 1), kv[:, 1].transpose(0, 1)  # (H_kv, L, hd) each

    def forward(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        key, value = self.key_value()
        return key.unsqueeze(0).expand(batch_size, -1, -1, -1), value.unsqueeze(0).expand(batch_size, -1, -1, -1)

    @torch.no_grad()
    def merged(self) -> PrefixKV:
        """The direct prefix this MLP produces now (the reparametrisation merged away)."""
        key, value = self.key_value()
        direct = PrefixKV(self.num_kv_heads, self.size, self.head_dim).to(device=key.device, dtype=key.dtype)
        direct.key.copy_(key)
        direct.value.copy_(value)
        return direct

    def extra_repr(self) -> str:
        return f"kv_heads={self.num_kv_heads}, size={self.size}, head_dim={self.head_dim}"


def inject(ctx, spec) -> None:
    from autopeft.peft.prefix_attention import PREFIX_ATTR

    cls = PrefixMLP if spec.variant == "mlp" else PrefixKV
    prefix = cls(ctx.arch.num_kv_heads(ctx.config), spec.size, ctx.arch.head_dim(ctx.config), ctx.generator)
    setattr(ctx.arch.attention(ctx.layer), PREFIX_ATTR, ctx.place(prefix, ctx.arch.get_linear(ctx.layer, "q")))
