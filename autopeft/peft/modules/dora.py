"""DoRA: weight-decomposed LoRA. The adapted weight is split into a trained magnitude and a direction:

    W' = m * (W + s B A) / ||W + s B A||_row,     y = W' x + b

Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation", https://arxiv.org/abs/2402.09353. As the
paper (section 4.3) and HF peft do, the row norm is detached: it scales the output but passes no gradient.
``m`` starts at ||W||_row, so with B = 0 the layer starts as the frozen one.
"""

from __future__ import annotations

import torch
from torch import nn

from autopeft.peft.modules.lora import LoRA


class DoRA(LoRA):
    fusable = False  # the output is rescaled per feature after the sum: combine() does it

    def __init__(self, base: nn.Linear, rank: int, scaling: float, generator: torch.Generator | None = None):
        super().__init__(base.in_features, base.out_features, rank, scaling, generator)
        with torch.no_grad():
            norm = torch.linalg.norm(base.weight.float(), dim=1)  # (out,), B = 0 at init
        self.magnitude = nn.Parameter(norm)  # peft: lora_magnitude_vector

    def _column_scale(self, base: nn.Linear) -> torch.Tensor:
        weight = base.weight + self.delta_weight().to(base.weight.dtype)  # (out, in)
        norm = torch.linalg.norm(weight, dim=1).detach()  # (out,), constant in the backward pass
        return self.magnitude / norm

    def combine(self, y: torch.Tensor, x: torch.Tensor, base: nn.Linear) -> torch.Tensor:
        bias = base.bias
        y_w = y if bias is None else y - bias  # (..., out): W x without the bias
        out = self._column_scale(base) * (y_w + self(x))
        return out if bias is None else out + bias

    def merge_weight(self, weight: torch.Tensor, base: nn.Linear) -> torch.Tensor:
        return self._column_scale(base)[:, None] * (weight + self.delta_weight())

    def extra_repr(self) -> str:
        return super().extra_repr() + ", dora"
