"""One wrapper around a frozen ``nn.Linear`` that holds every module placed on that linear.

Several methods may share a site (e.g. LoRA and IA3 on ``v``). They combine in this fixed order::

    x'  = x * l_in                              IA3 on down: scales the input of the frozen weight only
    y   = W x' + b + lora(x) + experts(x)       LoRA branches read the unscaled input x
    y   = y * l_out                             IA3 on k, v: scales the whole output (incl. LoRA)
    y   = y + U(relu(D y))                      serial adapter (exit linear of 'attn' -> o, of 'ffn' -> down)
    y   = y + s * U(relu(D x_sub))              parallel adapter; x_sub = input of the entry linear (q / up)

An entry linear additionally copies its input into the :class:`Stash` of each parallel adapter that reads it.
"""

from __future__ import annotations

import torch
from torch import nn

from autopeft.peft.modules.ia3 import IA3Scale
from autopeft.peft.modules.lora import LoRA
from autopeft.peft.modules.lora_experts import LoRAExperts
from autopeft.peft.modules.parallel_adapter import ParallelAdapter, Stash
from autopeft.peft.modules.serial_adapter import SerialAdapter


class AdaptedLinear(nn.Module):
    """A frozen ``base_layer`` plus optional PEFT modules; with none set it is exactly ``base_layer``."""

    def __init__(self, base_layer: nn.Linear):
        super().__init__()
        self.base_layer = base_layer
        self.ia3_in: IA3Scale | None = None
        self.lora: LoRA | None = None
        self.experts: LoRAExperts | None = None
        self.ia3_out: IA3Scale | None = None
        self.serial: SerialAdapter | None = None
        self.parallel: ParallelAdapter | None = None
        self.stashes: list[Stash] = []  # parallel adapters (elsewhere) that read this linear's input

    # Code that inspects the projection (dtype checks, shapes) still sees a Linear-like object.
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stash in self.stashes:
            stash.x = x  # (B, T, in), consumed by the parallel adapter at the sub-layer's exit
        y = self.base_layer(x if self.ia3_in is None else self.ia3_in(x))  # (B, T, out)
        if self.lora is not None:
            y = y + self.lora(x)
        if self.experts is not None:
            y = y + self.experts(x)
        if self.ia3_out is not None:
            y = self.ia3_out(y)
        if self.serial is not None:
            y = self.serial(y)
        if self.parallel is not None:
            y = y + self.parallel(self.parallel.stash.pop())
        return y
