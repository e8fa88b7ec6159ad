"""Prefix tuning: learned virtual keys and values prepended to one layer's attention.

    attn(Q, [P_k; K], [P_v; V]),   P_k, P_v: (n_kv_heads, L, head_dim)

Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation", https://arxiv.org/abs/2101.00190.
The prefix is parametrised directly (no reparametrisation MLP). Init: normal, std 0.02 (the usual transformer
init scale), so the prefix starts small but not zero: unlike the other methods, it changes outputs from step 0.
Prefix keys are not rotated by RoPE, every query sees every prefix position, and a model's padding mask still
hides its padded tokens. The attention function that does the prepending lives in
:mod:`autopeft.peft.prefix_attention`.
"""

from __future__ import annotations

import torch
from torch import nn

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
