"""One wrapper around a frozen ``nn.Linear`` that holds every module placed on that linear.

Several methods may share a site (e.g. LoRA and IA3 on ``v``). They combine in this fixed order::

    x_w = l_in * (x + s B_s A_s x)              Hydra's sequential branch, then IA3 on down (input of W only)
    y   = W x_w + b
    y   = lora.combine(y, x)                    LoRA / rsLoRA: y + s B A x;  DoRA: m/||W + sBA|| (y - b + sBAx) + b
    y   = y + experts(x) + s B_p A_p x          LoRA experts, Hydra's parallel branch (both read the unscaled x)
    y   = y * l_out                             IA3 on k, v
    y   = gamma * y + beta                      SSF
    y   = y + U(relu(D y))                      serial adapter (exit linear of 'attn' -> o, of 'ffn' -> down)
    y   = y + U'(relu(D' y))                    Compacter (PHM projections)
    y   = y + s * U(relu(D x_sub))              parallel adapter; x_sub = input of the entry linear (q / up)

Plain LoRA and rsLoRA with nothing on the input side (no Hydra, no IA3 on down) run ``W x + b + s B A x`` as one
fused kernel (:func:`autopeft.kernels.lora_linear`): one autograd node, no (B, T, out) temporaries. Without LoRA,
experts or Hydra, the linear and its IA3 and SSF vectors are one kernel (:func:`autopeft.kernels.scale_shift_linear`),
and the serial and parallel adapters are one kernel each (:func:`autopeft.kernels.bottleneck`).
Everything up to SSF is linear in x except the experts' routing, so :meth:`AdaptedLinear.merge_` folds LoRA (all
variants), Hydra, IA3 and SSF into one new weight and bias (the experts' B absorb the later output scales).
An entry linear additionally copies its input into the :class:`Stash` of each parallel adapter that reads it.
"""

from __future__ import annotations

import torch
from torch import nn

from autopeft.kernels import scale_shift_linear

from autopeft.peft.modules.compacter import Compacter
from autopeft.peft.modules.hydra import Hydra
from autopeft.peft.modules.ia3 import IA3Scale
from autopeft.peft.modules.lora import LoRA
from autopeft.peft.modules.lora_experts import LoRAExperts
from autopeft.peft.modules.parallel_adapter import ParallelAdapter, Stash
from autopeft.peft.modules.serial_adapter import SerialAdapter
from autopeft.peft.modules.ssf import SSF

#: slots merge_ folds into the base weights
MERGEABLE_SLOTS = ("hydra", "ia3_in", "lora", "ia3_out", "ssf")
SLOTS = ("ia3_in", "hydra", "lora", "experts", "ia3_out", "ssf", "serial", "compacter", "parallel")


class AdaptedLinear(nn.Module):
    """A frozen ``base_layer`` plus optional PEFT modules; with none set it is exactly ``base_layer``."""

    def __init__(self, base_layer: nn.Linear):
        super().__init__()
        self.base_layer = base_layer
        self.ia3_in: IA3Scale | None = None
        self.hydra: Hydra | None = None
        self.lora: LoRA | None = None
        self.experts: LoRAExperts | None = None
        self.ia3_out: IA3Scale | None = None
        self.ssf: SSF | None = None
        self.serial: SerialAdapter | None = None
        self.compacter: Compacter | None = None
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

    @property
    def is_empty(self) -> bool:
        return all(getattr(self, slot) is None for slot in SLOTS) and not self.stashes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stash in self.stashes:
            stash.x = x  # (B, T, in), consumed by the parallel adapter at the sub-layer's exit
        if self.lora is None and self.experts is None and self.hydra is None:
            y = self._scale_shift_linear(x)  # (B, T, out): W, IA3 and SSF in one kernel
        else:
            y = self._branches(x)
        if self.serial is not None:
            y = self.serial(y)
        if self.compacter is not None:
            y = self.compacter(y)
        if self.parallel is not None:
            y = self.parallel.add_to(y, self.parallel.stash.pop())  # y + s U(relu(D x_sub)), one kernel
        return y

    def _scale_shift_linear(self, x: torch.Tensor) -> torch.Tensor:
        """``(W (l_in x) + b) l_out gamma + beta`` with whichever of IA3 and SSF are set (none: the base linear)."""
        in_scale = None if self.ia3_in is None else self.ia3_in.scale
        out_scale = None if self.ia3_out is None else self.ia3_out.scale
        shift = None
        if self.ssf is not None:
            out_scale = self.ssf.scale if out_scale is None else out_scale * self.ssf.scale  # (out,): l_out gamma
            shift = self.ssf.shift
        if in_scale is None and out_scale is None:
            return self.base_layer(x)
        return scale_shift_linear(x, self.base_layer.weight, self.base_layer.bias, in_scale, out_scale, shift)

    def _branches(self, x: torch.Tensor) -> torch.Tensor:
        """The linear with LoRA, experts or Hydra, then IA3 and SSF on its output, in the order of the module doc."""
        x_w = x if self.hydra is None else self.hydra.sequential(x)
        if self.ia3_in is not None:
            x_w = self.ia3_in(x_w)
        if self.lora is not None and self.lora.fusable and x_w is x:
            y = self.lora.fused_linear(x, self.base_layer)  # (B, T, out): W x + b + s B A x, one kernel
        else:
            y = self.base_layer(x_w)  # (B, T, out)
            if self.lora is not None:
                y = self.lora.combine(y, x, self.base_layer)
        if self.experts is not None:
            y = y + self.experts(x)
        if self.hydra is not None:
            y = y + self.hydra.parallel(x)
        if self.ia3_out is not None:
            y = self.ia3_out(y)
        if self.ssf is not None:
            y = self.ssf(y)
        return y

    @torch.no_grad()
    def merge_(self) -> bool:
        """Fold LoRA (any variant), Hydra, IA3 and SSF into a new frozen base linear; returns whether anything merged.

        The new weight and bias are computed in float32 and stored in the base's dtype.
        """
        if all(getattr(self, slot) is None for slot in MERGEABLE_SLOTS):
            return False
        base = self.base_layer
        w = base.weight.float()  # (out, in)
        b = base.bias.float() if base.bias is not None else torch.zeros(base.out_features, device=w.device)
        m_in = torch.eye(base.in_features, device=w.device)  # x_w = m_in @ x
        if self.hydra is not None:
            m_in = self.hydra.float().sequential_matrix()
        if self.ia3_in is not None:
            m_in = self.ia3_in.scale.float()[:, None] * m_in
        w_eff = w @ m_in
        if self.lora is not None:
            w_eff = self.lora.float().merge_weight(w_eff, _float_linear(base))
        if self.hydra is not None:
            w_eff = w_eff + self.hydra.parallel_delta()
        scale = torch.ones(base.out_features, device=w.device)
        shift = torch.zeros(base.out_features, device=w.device)
        if self.ia3_out is not None:
            scale = scale * self.ia3_out.scale.float()
        if self.ssf is not None:
            scale, shift = scale * self.ssf.scale.float(), self.ssf.shift.float()
        if self.experts is not None:
            self.experts.scale_output_(scale)
        has_bias = base.bias is not None or self.ssf is not None
        merged = nn.Linear(base.in_features, base.out_features, bias=has_bias, device=w.device, dtype=base.weight.dtype)
        merged.weight.copy_(scale[:, None] * w_eff)
        if has_bias:
            merged.bias.copy_(scale * b + shift)
        merged.requires_grad_(False)
        self.base_layer = merged
        for slot in MERGEABLE_SLOTS:
            setattr(self, slot, None)
        return True


def _float_linear(base: nn.Linear) -> nn.Linear:
    """A float32 view of ``base`` for merge arithmetic (DoRA reads the frozen weight)."""
    if base.weight.dtype == torch.float32:
        return base
    copy = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None, device=base.weight.device)
    copy.weight.copy_(base.weight.float())
    if base.bias is not None:
        copy.bias.copy_(base.bias.float())
    return copy
