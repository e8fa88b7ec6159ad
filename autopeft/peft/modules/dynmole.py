"""DynMoLE routing for LoRA experts: top-p with a floor of k experts, and all experts when the router is unsure.

For each token, with router probabilities p (E,) sorted descending:

    chosen = the fewest most-probable experts whose probabilities sum to >= TOP_P, but at least k of them
    chosen = all E experts                 when S_q(p) > ENTROPY_THRESHOLD * S_q(uniform)
    g      = p * chosen / sum(p * chosen)  (renormalised over the chosen experts)

    S_q(p) = (1 - sum_e p_e^q) / (q - 1)   (Tsallis entropy; q -> 1 gives Shannon's)

The auxiliary loss adds the mean Tsallis entropy of the router (it pushes the router towards confident
choices) to the load-balancing loss counted over the chosen (token, expert) routes.
Li et al. 2025, "DynMoLE: Boosting Mixture of LoRA Experts Fine-Tuning with a Hybrid Routing Mechanism",
https://arxiv.org/abs/2504.00661. The constants below are autopeft's defaults (the threshold is relative to the
uniform distribution's entropy so that one value suits every expert count); see docs/methods.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from autopeft.peft.modules.lora_experts import LoRAExperts

TOP_P = 0.75
TSALLIS_Q = 1.5
ENTROPY_THRESHOLD = 0.9  # share of the maximum (uniform) Tsallis entropy above which every expert is used
ENTROPY_LOSS_WEIGHT = 1.0  # relative to the load-balancing loss; the trainer weights their sum


def tsallis_entropy(probs: torch.Tensor, q: float = TSALLIS_Q) -> torch.Tensor:
    """(N, E) -> (N,)."""
    return (1.0 - probs.pow(q).sum(-1)) / (q - 1.0)


class DynMoLEExperts(LoRAExperts):
    top_p = TOP_P
    q = TSALLIS_Q
    threshold = ENTROPY_THRESHOLD

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Route tokens ``x`` (N, in): dense gates (N, E), router probabilities (N, E), chosen mask (N, E)."""
        probs = F.softmax(self.router(x).float(), dim=-1)  # (N, E)
        sorted_p, order = probs.sort(dim=-1, descending=True)  # (N, E)
        before = sorted_p.cumsum(-1) - sorted_p  # probability mass of the experts ranked above
        keep = before < self.top_p  # (N, E): up to and including the expert that reaches top_p
        keep[:, : self.top_k] = True  # at least k experts
        chosen = torch.zeros_like(keep).scatter(-1, order, keep)  # back to expert order
        uniform = torch.full((1, self.num_experts), 1.0 / self.num_experts, device=probs.device)
        unsure = tsallis_entropy(probs, self.q) > self.threshold * tsallis_entropy(uniform, self.q)  # (N,)
        chosen = chosen | unsure[:, None]
        masked = probs * chosen
        gates = masked / masked.sum(-1, keepdim=True)  # (N, E), zero off the chosen experts
        return gates, probs, chosen

    def load_balancing_loss(self, probs: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        f = chosen.float().sum(0) / chosen.float().sum()  # (E,): share of the routes that go to e
        return self.num_experts * (f * probs.mean(0)).sum()

    def routing_loss(self, probs: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        return self.load_balancing_loss(probs, chosen) + ENTROPY_LOSS_WEIGHT * tsallis_entropy(probs, self.q).mean()

    def extra_repr(self) -> str:
        return super().extra_repr() + f", dynmole(top_p={self.top_p}, q={self.q}, threshold={self.threshold})"
