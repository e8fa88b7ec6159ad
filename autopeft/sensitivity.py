"""A zero-cost signal: which layers of the frozen model matter most for the task (``autopeft run --seed-sensitivity``).

In the spirit of sensitivity-aware PEFT (He et al., 2023, "Sensitivity-Aware Visual Parameter-Efficient
Fine-Tuning"): one forward and backward pass over a few training batches, with every linear weight of the
transformer taking gradients, scores each weight by the first-order Taylor estimate of the loss change if it
moved, ``|w * dL/dw|``, summed per linear. The scores of one site (q, v, up, ...) are divided by that site's mean
over the layers, so large and small projections weigh alike, and averaged into one score per layer.

:func:`sensitivity_seeds` turns the layer ranking into plans of the study's own space: modules on the top
1, 2, ..., L/2, L layers (or, in a space that counts LoRA experts per layer, more experts where the model is
more sensitive), with middle sizes; they are queued first, like a warm start, with ``seed = "sensitivity"``.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from autopeft.space import SearchSpace
from autopeft.transfer import LAYER_PARAM, enqueue_new

#: User attribute of a queued sensitivity seed.
SEED_ATTR = "seed"


def layer_sensitivity(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, list[str]]:
    """Sensitivity (L, S) of every layer's linear sites, normalised per site, and the site names.

    ``model`` is a sequence classifier (its head takes gradients too; nothing is updated); ``batches`` carry labels.
    """
    from autopeft.peft.arch import get_arch

    arch = get_arch(model)
    layers = arch.layers(model)
    sites = list(arch.sites(model.config))
    linears = [[arch.get_linear(layer, s) for s in sites] for layer in layers]
    weights = [lin.weight for row in linears for lin in row]
    flags = [w.requires_grad for w in weights]
    for w in weights:
        w.requires_grad_(True)
    score = torch.zeros(len(layers), len(sites), dtype=torch.double)
    was_training = model.training
    model.eval()  # no dropout: a deterministic signal
    try:
        for batch in batches:
            model.zero_grad(set_to_none=True)
            model(**batch).loss.backward()
            for i, row in enumerate(linears):
                for j, lin in enumerate(row):
                    score[i, j] += (lin.weight.detach() * lin.weight.grad).abs().sum().double()
    finally:
        for w, flag in zip(weights, flags):
            w.requires_grad_(flag)
            w.grad = None
        model.train(was_training)
    return score / score.mean(dim=0, keepdim=True).clamp_min(1e-30), sites


def layer_ranking(sensitivity: torch.Tensor) -> list[int]:
    """Layers, most sensitive first."""
    per_layer = sensitivity.mean(dim=1)  # (L,)
    return sorted(range(per_layer.numel()), key=lambda i: (-float(per_layer[i]), i))


def _middle(values: list) -> int:
    """Index of the middle non-zero choice (the middle choice when all are non-zero)."""
    nonzero = [k for k, v in enumerate(values) if v != 0]
    pool = nonzero or list(range(len(values)))
    return pool[len(pool) // 2]


def sensitivity_seeds(space: SearchSpace, ranking: list[int]) -> list[dict[str, int]]:
    """Plans of ``space`` (as parameters) that put modules on the top 1, 2, ..., L/2, L layers of ``ranking``.

    Every other parameter takes its middle non-zero choice (switches on). In a space that counts LoRA experts per
    layer, the counts instead grow with sensitivity: the k-th most sensitive layer gets the (L-k)-th share of the
    count choices. Seeds the space cannot tell apart are given once.
    """
    n = space.dims.num_layers
    base = {name: _middle(values) for name, values in space.choices.items()}
    rank_of = {layer: r for r, layer in enumerate(ranking)}
    tops = sorted({1, 2, max(1, n // 4), max(1, n // 2), n})
    seeds: list[dict[str, int]] = []
    for top in tops:
        params = dict(base)
        for name, values in space.choices.items():
            match = LAYER_PARAM.match(name)
            if not match:
                continue
            layer = int(match[2])
            if match[3] == ".experts":  # per-layer expert count: more experts where the model is more sensitive
                share = max(0.0, 1 - rank_of[layer] / top) if rank_of[layer] < top else 0.0
                params[name] = round(share * (len(values) - 1))
            else:  # an on/off switch of this layer
                params[name] = values.index(1) if rank_of[layer] < top else values.index(0)
        if params not in seeds:
            space.decode(params)  # a valid plan (raises otherwise)
            seeds.append(params)
    return seeds


def measure_ranking(fidelity, batches: int = 4, device: str = "cpu") -> list[int]:
    """The layer ranking of ``fidelity``'s base model on ``batches`` of its training batches (proxy training's
    data and model, whatever objective the fidelity names)."""
    import copy
    import itertools

    from autopeft.proxy.fidelity import Fidelity
    from autopeft.proxy.train import ProxyTrainer

    fidelity = Fidelity.build({**fidelity.model_dump(), "objective": "proxy", "table": None})
    trainer = ProxyTrainer(fidelity, device)
    model = copy.deepcopy(trainer._base).to(trainer.device)
    sens, _ = layer_sensitivity(model, itertools.islice(trainer.train_batches(), batches))
    return layer_ranking(sens)


def seed_study(study, batches: int = 4, device: str = "cpu") -> tuple[list[int], list[int]]:
    """Measure the study's base model on ``batches`` training batches of its fidelity and queue the seeds that
    are not in the study yet. Returns the layer ranking and the queued trial numbers."""
    ranking = measure_ranking(study.fidelity, batches, device)
    attrs = {SEED_ATTR: "sensitivity", "layer_ranking": ranking}
    numbers = enqueue_new(study, [(params, attrs) for params in sensitivity_seeds(study.space, ranking)])
    return ranking, [n for n in numbers if n is not None]


__all__ = ["SEED_ATTR", "layer_ranking", "layer_sensitivity", "measure_ranking", "seed_study", "sensitivity_seeds"]
