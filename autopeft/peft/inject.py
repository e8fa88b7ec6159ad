"""``apply_plan``: freeze a Hugging Face model and inject the plan's PEFT modules, in place."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from autopeft.errors import PlanError, UnsupportedModelError
from autopeft.peft.arch import ArchSpec, get_arch
from autopeft.peft.modules import (
    AdaptedLinear,
    IA3Scale,
    LoRA,
    LoRAExperts,
    ParallelAdapter,
    PrefixKV,
    SerialAdapter,
)
from autopeft.peft.placement import ENTRY_LINEAR, EXIT_LINEAR, check_plan
from autopeft.peft.prefix_attention import PREFIX_ATTR, enable_prefix_attention, prefix_implementation
from autopeft.plan import ModuleSpec, PeftPlan


def apply_plan(
    model: nn.Module, plan: PeftPlan, *, train_head: bool | None = None, seed: int | None = None
) -> nn.Module:
    """Freeze every base parameter of ``model`` and add the modules of ``plan``; returns ``model`` (changed in place).

    ``train_head``: also train the task head, i.e. every parameter outside the ``model.base_model_prefix``
    submodule (BERT ``classifier``, LLaMA ``score``; the BERT pooler stays frozen). ``None`` means "yes for
    ``*ForSequenceClassification`` models". ``seed`` fixes the init of the new modules; without it one seed is
    drawn from torch's global generator (its only use of global RNG).

    Raises :class:`UnsupportedModelError` for an unknown architecture and :class:`PlanError` when the plan does
    not fit the model (layer count, a site the architecture lacks) or a plan was applied already; prefix tuning
    on a model whose attention is neither ``sdpa`` nor ``eager`` is an :class:`UnsupportedModelError` too. All are
    raised before the model is touched. The plan is kept as ``model.autopeft_plan``.
    """
    arch = get_arch(model)
    config = model.config
    check_plan(plan, arch, config)
    if any(isinstance(m, AdaptedLinear) or hasattr(m, PREFIX_ATTR) for m in model.modules()):
        raise PlanError("model: a PEFT plan is already applied to this model; apply the new plan to a fresh model")
    has_prefix = any(spec.method == "prefix" for _, spec in plan.modules())
    if has_prefix:
        prefix_implementation(model)  # refuse flash/flex attention now, before anything changes

    model.requires_grad_(False)
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    generator = torch.Generator().manual_seed(seed)  # CPU generator: same init on every device

    layers = arch.layers(model)
    for i, spec in plan.modules():
        _inject(arch, config, layers[i], spec, generator)
    if has_prefix:
        enable_prefix_attention(model)

    if train_head is None:
        train_head = type(model).__name__.endswith("ForSequenceClassification")
    if train_head:
        for p in head_parameters(model):
            p.requires_grad_(True)
    model.autopeft_plan = plan
    return model


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters outside the base transformer (the ``base_model_prefix`` submodule): the task head.

    A head tied to the input embeddings (``tie_word_embeddings``) is part of the base and not listed.
    """
    base = get_arch(model).base_model(model)
    if base is model:
        return []
    inside = {id(p) for p in base.parameters()}
    return [p for p in model.parameters() if id(p) not in inside]


def _inject(arch: ArchSpec, config: Any, layer: nn.Module, spec: ModuleSpec, g: torch.Generator) -> None:
    if spec.method == "prefix":
        attention = arch.attention(layer)
        prefix = PrefixKV(arch.num_kv_heads(config), spec.size, arch.head_dim(config), g)
        setattr(attention, PREFIX_ATTR, _like(prefix, arch.get_linear(layer, "q")))
        return
    if spec.method in ("serial_adapter", "parallel_adapter"):
        exit_ = _wrap(arch, config, layer, EXIT_LINEAR[spec.site])
        if spec.method == "serial_adapter":
            exit_.serial = _like(SerialAdapter(exit_.out_features, spec.size, g), exit_)
            return
        entry = _wrap(arch, config, layer, ENTRY_LINEAR[spec.site])
        exit_.parallel = _like(ParallelAdapter(entry.in_features, spec.size, exit_.out_features, g), exit_)
        entry.stashes.append(exit_.parallel.stash)
        return
    lin = _wrap(arch, config, layer, spec.site)
    if spec.method == "lora":
        lin.lora = _like(LoRA(lin.in_features, lin.out_features, spec.size, spec.scaling, g), lin)
    elif spec.method == "lora_experts":
        experts = LoRAExperts(lin.in_features, lin.out_features, spec.size, spec.num_experts, spec.top_k,
                              spec.scaling, g)
        lin.experts = _like(experts, lin)
    elif spec.method == "ia3" and spec.site == "down":
        lin.ia3_in = _like(IA3Scale(lin.in_features), lin)
    elif spec.method == "ia3":
        lin.ia3_out = _like(IA3Scale(lin.out_features), lin)
    else:  # unreachable while plan.METHOD_SITES and this function agree
        raise PlanError(f"method: no injection rule for {spec.method!r} on {spec.site!r}")


def _wrap(arch: ArchSpec, config: Any, layer: nn.Module, site: str) -> AdaptedLinear:
    """The :class:`AdaptedLinear` at ``site``, replacing the plain linear on first use."""
    linear = arch.get_linear(layer, site)
    if isinstance(linear, AdaptedLinear):
        return linear
    expected = arch.site_shape(config, site)
    if not isinstance(linear, nn.Linear) or (linear.in_features, linear.out_features) != expected:
        raise UnsupportedModelError(
            f"site {site!r}: expected nn.Linear{expected} at {arch.site_paths[site]!r} of a {arch.family}-family "
            f"block, found {linear!r}; this model variant is not supported"
        )
    wrapped = AdaptedLinear(linear)
    arch.set_linear(layer, site, wrapped)
    return wrapped


def _like(module: nn.Module, ref: nn.Module) -> nn.Module:
    """Move a freshly initialised (CPU, float32) module to ``ref``'s device and floating dtype."""
    w = ref.weight
    return module.to(device=w.device, dtype=w.dtype if w.is_floating_point() else torch.float32)


__all__ = ["apply_plan", "head_parameters"]
