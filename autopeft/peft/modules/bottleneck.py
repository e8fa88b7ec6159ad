"""The bottleneck MLP shared by the serial and the parallel adapter: ``U(relu(D x))``.

D: in -> size (nn.Linear default init), U: size -> out, zero weight and bias, so the branch starts at 0.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import skip_init

from autopeft.peft.modules._init import linear_init_


class Bottleneck(nn.Module):
    def __init__(self, in_features: int, size: int, out_features: int, generator: torch.Generator | None = None):
        super().__init__()
        self.down = skip_init(nn.Linear, in_features, size)  # skip_init: no draw from the global RNG
        self.up = skip_init(nn.Linear, size, out_features)
        linear_init_(self.down.weight, self.down.bias, generator)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(torch.relu(self.down(x)))  # (..., in) -> (..., size) -> (..., out)
