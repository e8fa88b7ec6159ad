"""Parallel adapter: a scaled bottleneck reading the sub-layer's input, added to its output.

    h' = h + s * U(relu(D x)),   x = sub-layer input, h = sub-layer output (before residual / LayerNorm), s = 4

He et al. 2022, "Towards a Unified View of Parameter-Efficient Transfer Learning", https://arxiv.org/abs/2110.04366
(s = 4 is their best scaled parallel adapter). The sub-layer input is caught at the entry linear (``q`` for
attention, ``up`` for the FFN) in a :class:`Stash` and consumed, then cleared, at the exit linear (``o``/``down``),
where :meth:`ParallelAdapter.add_to` adds the branch to h as one autograd node (:func:`autopeft.kernels.bottleneck`).
"""

from __future__ import annotations

import torch

from autopeft.kernels import bottleneck
from autopeft.peft.modules.bottleneck import Bottleneck

PARALLEL_SCALE = 4.0  # He et al. 2022, Table 4


class Stash:
    """One tensor handed from the entry linear to the exit linear of the same sub-layer within one forward.

    A plain object (not a module), shared by the two :class:`AdaptedLinear` wrappers. ``pop`` clears it, so no
    activation outlives the forward that produced it.
    """

    __slots__ = ("x",)

    def __init__(self) -> None:
        self.x: torch.Tensor | None = None

    def pop(self) -> torch.Tensor:
        x, self.x = self.x, None
        if x is None:
            raise RuntimeError(
                "parallel adapter: the sub-layer's exit linear ran before its entry linear in this forward; "
                "the architecture's site order does not match the parallel adapter's assumption"
            )
        return x


class ParallelAdapter(Bottleneck):
    def __init__(self, in_features: int, size: int, out_features: int, generator: torch.Generator | None = None,
                 scale: float = PARALLEL_SCALE):
        super().__init__(in_features, size, out_features, generator)
        self.scale = scale
        self.stash = Stash()  # filled by the entry linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The branch only, ``s * U(relu(D x))`` (..., out); :class:`AdaptedLinear` adds it to ``h``."""
        return super().forward(x) * self.scale

    def add_to(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``h + s * U(relu(D x))`` (..., out) in one node: h the sub-layer's output, x its input."""
        return bottleneck(x, h, self.down.weight, self.down.bias, self.up.weight, self.up.bias, self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}"


def inject(ctx, spec) -> None:
    from autopeft.peft.methods import ENTRY_LINEAR, EXIT_LINEAR

    exit_ = ctx.linear(EXIT_LINEAR[spec.site])
    entry = ctx.linear(ENTRY_LINEAR[spec.site])
    exit_.parallel = ctx.place(ParallelAdapter(entry.in_features, spec.size, exit_.out_features, ctx.generator), exit_)
    entry.stashes.append(exit_.parallel.stash)
