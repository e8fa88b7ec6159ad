"""Compacter: a serial adapter whose projections are parameterised hypercomplex multiplication (PHM) layers.

    h' = h + U(relu(D h)),   D, U: W = sum_{i=1..n} A_i (x) (s_i t_i^T)    ((x): Kronecker product)

Mahabadi et al. 2021, "Compacter: Efficient Low-Rank Hypercomplex Adapter Layers", https://arxiv.org/abs/2106.04647.
The "slow" rule matrices A_i (n x n) are shared by every Compacter layer of a model -- one set for the down
projections, one for the up projections -- and live once in :class:`CompacterRules` on the base model
(``autopeft_shared.compacter``); each layer keeps only its "fast" rank-one factors s_i, t_i and a bias.
Init: A ~ N(0, 1/n), s, t ~ N(0, fan_in^-1/4) so the summed weight has roughly variance 1/fan_in; the up
projection's s starts at zero, so the adapter starts as the identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from autopeft.peft.methods.compacter import PHM_N

SHARED_KEY = "compacter"


class CompacterRules(nn.Module):
    """The shared slow matrices: ``down`` and ``up``, each (n, n, n) = n matrices of n x n."""

    def __init__(self, n: int = PHM_N, generator: torch.Generator | None = None):
        super().__init__()
        self.down = nn.Parameter(torch.empty(n, n, n))
        self.up = nn.Parameter(torch.empty(n, n, n))
        with torch.no_grad():
            self.down.normal_(0.0, n**-0.5, generator=generator)
            self.up.normal_(0.0, n**-0.5, generator=generator)


class PHMLinear(nn.Module):
    """``x W + b`` with ``W = sum_i A_i (x) (s_i t_i^T)`` of shape (in, out); ``A`` is a shared rule."""

    def __init__(self, rules: CompacterRules, which: str, in_features: int, out_features: int,
                 generator: torch.Generator | None = None, zero: bool = False):
        super().__init__()
        n = rules.down.shape[0]
        self._rules = (rules, which)  # a plain tuple: the shared module must not be registered here too
        self.s = nn.Parameter(torch.empty(n, in_features // n))  # (n, in/n)
        self.t = nn.Parameter(torch.empty(n, out_features // n))  # (n, out/n)
        self.bias = nn.Parameter(torch.zeros(out_features))
        std = in_features ** -0.25
        with torch.no_grad():
            self.t.normal_(0.0, std, generator=generator)
            if zero:
                self.s.zero_()
            else:
                self.s.normal_(0.0, std, generator=generator)

    @property
    def rule(self) -> torch.Tensor:
        rules, which = self._rules
        return getattr(rules, which)  # (n, n, n)

    def weight(self) -> torch.Tensor:
        a = self.rule
        n, p, q = a.shape[0], self.s.shape[1], self.t.shape[1]
        fast = self.s[:, :, None] * self.t[:, None, :]  # (n, in/n, out/n): s_i t_i^T
        w = torch.einsum("iab,icd->acbd", a, fast)  # (n, in/n, n, out/n); w[a, c, b, d] = sum_i A_i[a,b] B_i[c,d]
        return w.reshape(n * p, n * q)  # (in, out) = sum_i kron(A_i, B_i)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight().T, self.bias)  # (..., out)


class Compacter(nn.Module):
    def __init__(self, rules: CompacterRules, features: int, size: int, generator: torch.Generator | None = None):
        super().__init__()
        self.down = PHMLinear(rules, "down", features, size, generator)
        self.up = PHMLinear(rules, "up", size, features, generator, zero=True)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(torch.relu(self.down(h)))  # (..., C) -> (..., m) -> (..., C)


def inject(ctx, spec) -> None:
    from autopeft.peft.methods import EXIT_LINEAR

    exit_ = ctx.linear(EXIT_LINEAR[spec.site])
    rules = ctx.shared(SHARED_KEY, lambda: CompacterRules(PHM_N, ctx.generator), exit_)
    exit_.compacter = ctx.place(Compacter(rules, exit_.out_features, spec.size, ctx.generator), exit_)
