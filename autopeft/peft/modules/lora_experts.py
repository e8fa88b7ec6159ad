"""A mixture of LoRA experts with a token-level top-k router (MoLA-style).

    g = renorm(topk(softmax(R x)))                       router R: in -> E, no bias
    y = W x + b + (alpha / r) * sum_{e in topk(x)} g_e B_e A_e x

Gao et al. 2024, "Higher Layers Need More LoRA Experts" (MoLA), https://arxiv.org/abs/2402.08562; the router
follows Shazeer et al. 2017 / Fedus et al. 2022. All experts run as two batched matmuls (no loop over experts):
the non-selected ones get gate 0; :func:`autopeft.kernels.routed_lora_experts` does it, router included, as one
autograd node. Each forward stores the Switch Transformer load-balancing loss
(Fedus et al. 2022, https://arxiv.org/abs/2101.03961, eq. 4) in ``self.aux_loss``:

    aux = E * sum_e f_e * P_e,   f_e = share of the N*k (token, slot) routes that go to e,  P_e = mean_t p_e(t)

It is 1 for a perfectly balanced router and E for one that sends every token to one expert (top-1). Padding
tokens are counted like any other token. With ``top_k = 1`` the renormalised gate is always 1, so the router
learns from this loss alone (Switch instead gates with the raw probability).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

from autopeft.kernels import lora_experts, routed_lora_experts
from autopeft.peft.modules._init import linear_init_


class LoRAExperts(nn.Module):
    """Returns the experts' branch ``scaling * sum_e g_e B_e A_e x``; :class:`AdaptedLinear` adds ``W x + b``."""

    def __init__(self, in_features: int, out_features: int, rank: int, num_experts: int, top_k: int,
                 scaling: float, generator: torch.Generator | None = None):
        super().__init__()
        self.rank, self.num_experts, self.top_k, self.scaling = rank, num_experts, top_k, scaling
        self.router = skip_init(nn.Linear, in_features, num_experts, bias=False)  # weight (E, in)
        self.lora_A = nn.Parameter(torch.empty(num_experts, rank, in_features))  # (E, r, in)
        self.lora_B = nn.Parameter(torch.zeros(num_experts, out_features, rank))  # (E, out, r)
        linear_init_(self.router.weight, None, generator)
        linear_init_(self.lora_A, None, generator)
        self.aux_loss: torch.Tensor | None = None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Route tokens ``x`` (N, in).

        Returns the dense renormalised top-k gates (N, E), zero off the top-k; the router probabilities (N, E);
        the chosen expert ids (N, k).
        """
        probs = F.softmax(self.router(x).float(), dim=-1)  # (N, E), float32 for a stable softmax
        top_p, top_i = probs.topk(self.top_k, dim=-1)  # (N, k)
        top_g = top_p / top_p.sum(dim=-1, keepdim=True)  # renormalise over the chosen k
        gates = torch.zeros_like(probs).scatter(-1, top_i, top_g)  # (N, E), zero off the top-k
        return gates, probs, top_i

    def load_balancing_loss(self, probs: torch.Tensor, top_i: torch.Tensor) -> torch.Tensor:
        n, e = probs.shape
        routed = torch.zeros_like(probs).scatter(-1, top_i, 1.0)  # (N, E), 1 where e is in the token's top-k
        f = routed.sum(0) / (n * self.top_k)  # (E,), sums to 1; not differentiable (argmax-like)
        p = probs.mean(0)  # (E,), differentiable: this is what trains the router
        return e * (f * p).sum()

    def routing_loss(self, probs: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """The auxiliary loss stored after each forward (top-k routing: the load-balancing loss)."""
        return self.load_balancing_loss(probs, chosen)

    @torch.no_grad()
    def scale_output_(self, scale: torch.Tensor) -> None:
        """Multiply the branch's output features by ``scale`` (out,) -- used when a later scale is merged."""
        self.lora_B.mul_(scale.to(self.lora_B.dtype)[None, :, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, in)
        if type(self).route is LoRAExperts.route:  # top-k routing: the router joins the experts' fused node
            y, probs, chosen = routed_lora_experts(x, self.router.weight, self.lora_A, self.lora_B, self.scaling,
                                                   self.top_k)  # (N, out)
        else:  # another routing rule (DynMoLE): route here, the experts' node takes the gates
            gates, probs, chosen = self.route(x)
            y = lora_experts(x, gates.to(x.dtype), self.lora_A, self.lora_B, self.scaling)  # (N, out)
        self.aux_loss = self.routing_loss(probs, chosen)
        return y.view(*shape[:-1], -1)  # (..., out)

    def extra_repr(self) -> str:
        _, out, _ = self.lora_B.shape
        return (f"in={self.router.in_features}, out={out}, r={self.rank}, experts={self.num_experts}, "
                f"top_k={self.top_k}, scaling={self.scaling:g}")


def inject(ctx, spec) -> None:
    lin = ctx.linear(spec.site)
    if spec.variant == "dynmole":
        from autopeft.peft.modules.dynmole import DynMoLEExperts as cls
    else:
        cls = LoRAExperts
    experts = cls(lin.in_features, lin.out_features, spec.size, spec.num_experts, spec.top_k, spec.scaling,
                  ctx.generator)
    lin.experts = ctx.place(experts, lin)
