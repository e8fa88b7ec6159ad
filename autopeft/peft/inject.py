"""``apply_plan``: freeze a Hugging Face model and inject the plan's PEFT modules, in place.

Each method's own ``inject(ctx, spec)`` (in ``autopeft/peft/modules/<method>.py``, found through the method
registry) places its module; :class:`Injection` gives it the block, the wrapped linears and the seeded generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from autopeft.errors import PlanError, UnsupportedModelError
from autopeft.peft.arch import ArchSpec, get_arch
from autopeft.peft.methods import get_method
from autopeft.peft.modules import AdaptedLinear
from autopeft.peft.placement import check_plan
from autopeft.peft.prefix_attention import PREFIX_ATTR, enable_prefix_attention, prefix_implementation
from autopeft.plan import PeftPlan

#: attribute of the base model holding modules shared across layers (e.g. Compacter's rule matrices)
SHARED_ATTR = "autopeft_shared"


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

    base = arch.base_model(model)
    layers = arch.layers(model)
    for i, spec in plan.modules():
        get_method(spec.method).impl().inject(Injection(arch, config, base, layers[i], generator), spec)
    if has_prefix:
        enable_prefix_attention(model)

    if train_head is None:
        train_head = type(model).__name__.endswith("ForSequenceClassification")
    if train_head:
        for p in head_parameters(model):
            p.requires_grad_(True)
    model.autopeft_plan = plan
    return model


@dataclass
class Injection:
    """What a method's ``inject`` sees: one block of one model, and the plan's seeded generator."""

    arch: ArchSpec
    config: Any
    base: nn.Module  # the headless transformer (holds shared modules)
    layer: nn.Module  # the block the module goes into
    generator: torch.Generator

    def linear(self, site: str) -> AdaptedLinear:
        """The :class:`AdaptedLinear` at ``site`` of this block, replacing the plain linear on first use."""
        linear = self.arch.get_linear(self.layer, site)
        if isinstance(linear, AdaptedLinear):
            return linear
        expected = self.arch.site_shape(self.config, site)
        if not isinstance(linear, nn.Linear) or (linear.in_features, linear.out_features) != expected:
            raise UnsupportedModelError(
                f"site {site!r}: expected nn.Linear{expected} at {self.arch.site_paths[site]!r} of a "
                f"{self.arch.family}-family block, found {linear!r}; this model variant is not supported"
            )
        wrapped = AdaptedLinear(linear)
        self.arch.set_linear(self.layer, site, wrapped)
        return wrapped

    @staticmethod
    def place(module: nn.Module, ref: nn.Module) -> nn.Module:
        """Move a freshly initialised (CPU, float32) module to ``ref``'s device and floating dtype."""
        w = ref.weight
        return module.to(device=w.device, dtype=w.dtype if w.is_floating_point() else torch.float32)

    def shared(self, key: str, make: Callable[[], nn.Module], ref: nn.Module) -> nn.Module:
        """The model-wide module ``key`` (made on first request), kept in ``base.autopeft_shared``."""
        store = getattr(self.base, SHARED_ATTR, None)
        if store is None:
            store = nn.ModuleDict()
            setattr(self.base, SHARED_ATTR, store)
        if key not in store:
            store[key] = self.place(make(), ref)
        return store[key]


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters outside the base transformer (the ``base_model_prefix`` submodule): the task head.

    A head tied to the input embeddings (``tie_word_embeddings``) is part of the base and not listed.
    """
    base = get_arch(model).base_model(model)
    if base is model:
        return []
    inside = {id(p) for p in base.parameters()}
    return [p for p in model.parameters() if id(p) not in inside]


__all__ = ["Injection", "SHARED_ATTR", "apply_plan", "head_parameters"]
