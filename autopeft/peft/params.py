"""Parameter counts: the exact analytic count of a plan from config dims, and the live count of a model."""

from __future__ import annotations

from typing import Any

from torch import nn

from autopeft.peft.arch import ArchSpec, get_arch
from autopeft.peft.placement import ENTRY_LINEAR, EXIT_LINEAR, check_plan
from autopeft.plan import ModuleSpec, PeftPlan


def module_parameter_count(spec: ModuleSpec, arch: ArchSpec, config: Any) -> int:
    """Parameters one module adds (d_in/d_out: the linear's in/out features, r: size, E: experts)."""
    if spec.method == "prefix":  # virtual keys + values: 2 * L * H_kv * head_dim
        return 2 * spec.size * arch.num_kv_heads(config) * arch.head_dim(config)
    if spec.method == "serial_adapter":  # bottleneck on the exit linear's output h: d -> r -> d
        d = arch.site_shape(config, EXIT_LINEAR[spec.site])[1]
        return _bottleneck_count(d, spec.size, d)
    if spec.method == "parallel_adapter":  # bottleneck from the entry linear's input to the exit's output
        d_in = arch.site_shape(config, ENTRY_LINEAR[spec.site])[0]
        d_out = arch.site_shape(config, EXIT_LINEAR[spec.site])[1]
        return _bottleneck_count(d_in, spec.size, d_out)
    d_in, d_out = arch.site_shape(config, spec.site)
    if spec.method == "lora":  # A (r, d_in) + B (d_out, r)
        return spec.size * (d_in + d_out)
    if spec.method == "lora_experts":  # E LoRA pairs + router (E, d_in)
        return spec.num_experts * spec.size * (d_in + d_out) + d_in * spec.num_experts
    if spec.method == "ia3":  # one scale per feature: input of down, output of k / v
        return d_in if spec.site == "down" else d_out
    raise ValueError(f"no parameter count for method {spec.method!r}")


def _bottleneck_count(d_in: int, r: int, d_out: int) -> int:
    return d_in * r + r + r * d_out + d_out  # D weight + bias, U weight + bias


def plan_parameter_count(plan: PeftPlan, config: Any) -> int:
    """Exact number of parameters ``plan`` adds to a model with ``config`` (task head excluded), without a model."""
    arch = get_arch(config)
    check_plan(plan, arch, config)
    return sum(module_parameter_count(spec, arch, config) for _, spec in plan.modules())


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts; shared (tied) tensors count once."""
    params = list(model.parameters())  # deduplicated by identity
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


__all__ = ["count_parameters", "module_parameter_count", "plan_parameter_count"]
