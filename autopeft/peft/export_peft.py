"""Write a plan and its weights in Hugging Face ``peft``'s own format (``adapter_config.json`` +
``adapter_model.safetensors``), for the plans peft can express: the LoRA family (plain, rsLoRA or DoRA; per-layer
ranks and alphas through ``rank_pattern`` / ``alpha_pattern``), (IA)3, and prefix tuning (the same number of
virtual tokens in every layer). peft is not imported: the format is plain JSON and safetensors, and the tests
load what we write with ``PeftModel.from_pretrained``.

Everything else -- adapters, Compacter, Hydra, SSF, LoRA experts, and plans mixing methods -- is named part by
part by :func:`peft_inexpressible`, and the caller writes autopeft's own format instead.

Known difference: peft runs prefix tuning through the key/value cache, so the real tokens' position ids start
at the prefix length L; autopeft keeps them at 0. The exported prefix loads and computes the same keys and
values, but a model with position embeddings (absolute or RoPE) sees shifted positions under peft.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from autopeft.errors import PlanError
from autopeft.peft.arch import get_arch
from autopeft.peft.inject import head_parameters
from autopeft.peft.methods import REGISTRY
from autopeft.peft.modules import AdaptedLinear, PrefixMLP
from autopeft.peft.prefix_attention import PREFIX_ATTR
from autopeft.plan import PeftPlan, _layer_ranges

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."  # peft's key prefix for the wrapped model's modules


def peft_inexpressible(plan: PeftPlan) -> list[str]:
    """Why peft cannot express ``plan``, one line per part; empty when it can."""
    parts: list[str] = []
    groups: dict[tuple[str, str | None], dict[str, list[int]]] = {}
    for i, m in plan.modules():
        groups.setdefault((m.method, m.variant), {}).setdefault(m.site, []).append(i)
    peft_types = set()
    for (method, variant), sites in groups.items():
        peft_type = REGISTRY[method].peft_type
        where = "; ".join(f"{site} @{_layer_ranges(idx)}" for site, idx in sites.items())
        name = method if variant is None else f"{method} ({variant})"
        if not peft_type:
            parts.append(f"{name} on {where} cannot be expressed in peft (peft has no such method)")
        else:
            peft_types.add(peft_type)
    if len(peft_types) > 1 or (peft_types and parts):
        used = ", ".join(plan.methods())
        parts.append(f"peft holds one method per adapter, this plan combines {used}")
    lora_variants = {v for (m, v) in groups if m == "lora"}
    if len(lora_variants) > 1:
        named = ", ".join(sorted(v or "lora" for v in lora_variants))
        parts.append(f"lora variants {named} are mixed; peft applies one (use_rslora / use_dora) to every layer")
    if "prefix" in {m for m, _ in groups}:
        sizes = {i: m.size for i, m in plan.modules() if m.method == "prefix"}
        if len(sizes) != plan.num_layers or len(set(sizes.values())) != 1:
            parts.append(f"prefix sizes {sizes} per layer: peft puts the same number of virtual tokens in every "
                         f"one of the {plan.num_layers} layers")
    return parts


def _task_type(model: nn.Module) -> str | None:
    name = type(model).__name__
    if name.endswith("ForSequenceClassification"):
        return "SEQ_CLS"
    if name.endswith("ForCausalLM"):
        return "CAUSAL_LM"
    return "FEATURE_EXTRACTION" if get_arch(model).base_model(model) is model else None


def _head(model: nn.Module) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Top-level head modules that train (peft's ``modules_to_save``) and their tensors."""
    trained = {id(p) for p in head_parameters(model) if p.requires_grad}
    modules, tensors = [], {}
    for name, p in model.named_parameters():
        if id(p) in trained:
            modules.append(name.split(".")[0])
            tensors[PREFIX + name] = p
    return sorted(set(modules)), tensors


def _most_common(values: list[Any]) -> Any:
    return Counter(values).most_common(1)[0][0]


def peft_adapter(model: nn.Module, plan: PeftPlan, base_model_name: str | None = None
                 ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(adapter_config, weights) in peft's format for ``model`` carrying ``plan``; :class:`PlanError` if peft
    cannot express it."""
    parts = peft_inexpressible(plan)
    if parts:
        raise PlanError("plan: " + "; ".join(parts))
    methods = plan.methods()
    head_modules, tensors = _head(model)
    config: dict[str, Any] = {"base_model_name_or_path": base_model_name, "task_type": _task_type(model),
                              "inference_mode": True, "modules_to_save": head_modules or None}
    if not methods:
        raise PlanError("plan: the head-only plan has no PEFT module for peft to hold; export it as YAML")
    if methods == ["prefix"]:
        config.update(_prefix(model, plan, tensors))
    else:
        linears = {name: m for name, m in model.named_modules() if isinstance(m, AdaptedLinear)}
        if methods == ["lora"]:
            config.update(_lora(plan, linears, tensors))
        else:
            config.update(_ia3(linears, tensors))
    weights = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    return config, weights


def _lora(plan: PeftPlan, linears: dict[str, AdaptedLinear], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    ranks, alphas, variant = {}, {}, None
    for name, lin in linears.items():
        if lin.lora is None:
            continue
        r = lin.lora.rank
        spec_variant = "dora" if hasattr(lin.lora, "magnitude") else None
        ranks[name] = r
        # peft's scale is alpha / r (rsLoRA: alpha / sqrt(r)); our module stores the scale itself
        alphas[name] = float(lin.lora.scaling * (r**0.5 if _rslora(plan) else r))
        tensors[f"{PREFIX}{name}.lora_A.weight"] = lin.lora.lora_A
        tensors[f"{PREFIX}{name}.lora_B.weight"] = lin.lora.lora_B
        if spec_variant == "dora":
            tensors[f"{PREFIX}{name}.lora_magnitude_vector"] = lin.lora.magnitude
            variant = "dora"
    r, alpha = _most_common(list(ranks.values())), _most_common(list(alphas.values()))
    return {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": alpha,
        "target_modules": sorted(ranks),  # full module names: exact, and never the BERT pooler's "dense"
        # peft matches pattern keys as (.*\.)?KEY$ -- full names match exactly one module
        "rank_pattern": {n: v for n, v in ranks.items() if v != r},
        "alpha_pattern": {n: v for n, v in alphas.items() if v != alpha},
        "use_rslora": _rslora(plan),
        "use_dora": variant == "dora",
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
    }


def _rslora(plan: PeftPlan) -> bool:
    return any(m.method == "lora" and m.variant == "rslora" for _, m in plan.modules())


def _ia3(linears: dict[str, AdaptedLinear], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    targets, feedforward = [], []
    for name, lin in linears.items():
        if lin.ia3_out is not None:  # k, v: scales the output, stored (out, 1)
            tensors[f"{PREFIX}{name}.ia3_l"] = lin.ia3_out.scale.view(-1, 1)
            targets.append(name)
        if lin.ia3_in is not None:  # FFN down: scales the input, stored (1, in)
            tensors[f"{PREFIX}{name}.ia3_l"] = lin.ia3_in.scale.view(1, -1)
            targets.append(name)
            feedforward.append(name)
    return {"peft_type": "IA3", "target_modules": sorted(targets), "feedforward_modules": sorted(feedforward),
            "fan_in_fan_out": False, "init_ia3_weights": True}


def _prefix(model: nn.Module, plan: PeftPlan, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    arch, cfg = get_arch(model), model.config
    heads, head_dim = arch.num_kv_heads(cfg), arch.head_dim(cfg)
    c = heads * head_dim
    blocks = []
    for layer in arch.layers(model):
        prefix = getattr(arch.attention(layer), PREFIX_ATTR)
        if isinstance(prefix, PrefixMLP):
            prefix = prefix.merged()  # peft stores the prefix itself (its own MLP is merged away on save too)
        size = prefix.size
        key = prefix.key.detach().permute(1, 0, 2).reshape(size, c)  # (H, L, hd) -> (L, c)
        value = prefix.value.detach().permute(1, 0, 2).reshape(size, c)
        blocks += [key, value]
    tensors["prompt_embeddings"] = torch.cat(blocks, dim=1)  # (L, num_layers * 2 * c): k0, v0, k1, v1, ...
    return {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": size, "token_dim": c,
            "num_attention_heads": heads, "num_layers": plan.num_layers, "num_transformer_submodules": 1,
            "encoder_hidden_size": c, "prefix_projection": False}


def save_peft_adapter(model: nn.Module, plan: PeftPlan, directory: str | Path,
                      base_model_name: str | None = None) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` into ``directory``; returns it."""
    config, weights = peft_adapter(model, plan, base_model_name)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))
    save_file(weights, str(directory / WEIGHTS_NAME))
    return directory


__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "peft_adapter", "peft_inexpressible", "save_peft_adapter"]
