"""Serial (bottleneck) adapter on a sub-layer's output.

    h' = h + U(relu(D h)),   h = output of the sub-layer's exit linear (attention ``o`` or FFN ``down``)

Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP", https://arxiv.org/abs/1902.00751
(Pfeiffer et al. 2020 place one per block). It sits before the residual add and the LayerNorm, as Houlsby's does.
The whole ``h + U(relu(D h))`` runs as one autograd node (:func:`autopeft.kernels.bottleneck`).
"""

from __future__ import annotations

import torch

from autopeft.kernels import bottleneck
from autopeft.peft.modules.bottleneck import Bottleneck


class SerialAdapter(Bottleneck):
    def __init__(self, features: int, size: int, generator: torch.Generator | None = None):
        super().__init__(features, size, features, generator)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return bottleneck(h, None, self.down.weight, self.down.bias, self.up.weight, self.up.bias, 1.0)  # (..., C)


def inject(ctx, spec) -> None:
    from autopeft.peft.methods import EXIT_LINEAR

    exit_ = ctx.linear(EXIT_LINEAR[spec.site])
    exit_.serial = ctx.place(SerialAdapter(exit_.out_features, spec.size, ctx.generator), exit_)
