"""Where the PEFT sites live in each supported transformer architecture.

An :class:`ArchSpec` maps the plan's abstract sites (``q``, ``k``, ``v``, ``o``, ``gate``, ``up``, ``down``)
onto the ``nn.Linear`` modules of one model family, and computes their shapes from the config alone, so that
parameter counts need no model. The registry :data:`ARCHS` is keyed by ``config.model_type``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from torch import nn

from autopeft.errors import UnsupportedModelError
from autopeft.peft.methods import LINEAR_SITES


@dataclass(frozen=True)
class ArchSpec:
    """Injection rules for one model family.

    ``layers_path`` is the dotted path of the block list inside the base model (the submodule named by
    ``model.base_model_prefix``); ``attention_path`` and ``site_paths`` are dotted paths inside one block.
    ``attention_path`` names the module that calls the attention function (it receives prefix key/values).
    ``embeddings_path`` (inside the base model) names the module that turns token ids into the first block's input.
    ``pooled_cut_path`` (inside one block) names the sub-layer after which the block works on each token alone, in
    a family whose sequence classifier reads the first token only: the last block may then cut that sub-layer's
    output to the first token (the ``pooled_only`` fidelity option). Empty where the classifier reads another token
    or the block adds a residual after that sub-layer returns. ``pooled_query_path`` names a BERT-style
    self-attention (``query``/``key``/``value`` linears, ``attention_head_size``, ``scaling``, ``dropout``) whose
    queries the cut may restrict to the first token, and ``pooled_residual_path`` the sub-layer that then adds that
    token's residual, ``f(attention output, residual)``; empty where the family has no such module.
    """

    family: str
    layers_path: str
    attention_path: str
    site_paths: Mapping[str, str] = field(default_factory=dict)
    embeddings_path: str = ""
    pooled_cut_path: str = ""
    pooled_query_path: str = ""
    pooled_residual_path: str = ""

    # ---------------------------------------------------------------- config
    def num_layers(self, config: Any) -> int:
        return int(config.num_hidden_layers)

    def hidden_size(self, config: Any) -> int:
        return int(config.hidden_size)

    def num_heads(self, config: Any) -> int:
        return int(config.num_attention_heads)

    def num_kv_heads(self, config: Any) -> int:
        """Key/value heads: fewer than query heads under grouped-query attention (GQA)."""
        kv = getattr(config, "num_key_value_heads", None)
        return int(kv) if kv else self.num_heads(config)

    def head_dim(self, config: Any) -> int:
        explicit = getattr(config, "head_dim", None)
        return int(explicit) if explicit else self.hidden_size(config) // self.num_heads(config)

    def sites(self, config: Any | None = None) -> tuple[str, ...]:
        """Linear sites present in this family, in canonical order."""
        return tuple(s for s in LINEAR_SITES if s in self.site_paths)

    def site_shape(self, config: Any, site: str) -> tuple[int, int]:
        """``(in_features, out_features)`` of the linear at ``site``."""
        if site not in self.site_paths:
            raise KeyError(f"{self.family} has no linear site {site!r}; sites: {', '.join(self.sites(config))}")
        d, inter = self.hidden_size(config), int(config.intermediate_size)
        q_dim = self.num_heads(config) * self.head_dim(config)
        kv_dim = self.num_kv_heads(config) * self.head_dim(config)
        return {
            "q": (d, q_dim),
            "k": (d, kv_dim),
            "v": (d, kv_dim),
            "o": (q_dim, d),
            "gate": (d, inter),
            "up": (d, inter),
            "down": (inter, d),
        }[site]

    # ----------------------------------------------------------------- model
    def base_model(self, model: nn.Module) -> nn.Module:
        """The headless transformer inside ``model`` (``model`` itself for a bare ``*Model``)."""
        prefix = getattr(model, "base_model_prefix", "")
        return getattr(model, prefix, model) if prefix else model

    def layers(self, model: nn.Module) -> list[nn.Module]:
        return list(_resolve(self.base_model(model), self.layers_path))

    def embeddings(self, model: nn.Module) -> nn.Module | None:
        """The input embedding module (``None`` when the family does not name it)."""
        return _resolve(self.base_model(model), self.embeddings_path) if self.embeddings_path else None

    def attention(self, layer: nn.Module) -> nn.Module:
        return _resolve(layer, self.attention_path)

    def get_linear(self, layer: nn.Module, site: str) -> nn.Module:
        return _resolve(layer, self.site_paths[site])

    def set_linear(self, layer: nn.Module, site: str, module: nn.Module) -> None:
        parent_path, _, name = self.site_paths[site].rpartition(".")
        setattr(_resolve(layer, parent_path) if parent_path else layer, name, module)


def _resolve(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


_BERT_FAMILY = ArchSpec(
    family="bert",
    layers_path="encoder.layer",
    attention_path="attention.self",
    site_paths={
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "o": "attention.output.dense",
        "up": "intermediate.dense",
        "down": "output.dense",
    },
    embeddings_path="embeddings",
    # BertAttention returns LayerNorm(x + o(attention(x))): everything after it (the feed-forward sub-layer and its
    # residual) reads only that output, and the classifier heads of these models read token 0 of the last block.
    pooled_cut_path="attention",
    # The first token's attention output reads every token's keys and values and its own query and residual only.
    pooled_query_path="attention.self",
    pooled_residual_path="attention.output",
)

_LLAMA_FAMILY = ArchSpec(
    family="llama",
    layers_path="layers",
    attention_path="self_attn",
    site_paths={
        "q": "self_attn.q_proj",
        "k": "self_attn.k_proj",
        "v": "self_attn.v_proj",
        "o": "self_attn.o_proj",
        "gate": "mlp.gate_proj",
        "up": "mlp.up_proj",
        "down": "mlp.down_proj",
    },
    embeddings_path="embed_tokens",
)

#: ``config.model_type`` -> injection rules. Add a family with :func:`register_arch`.
ARCHS: dict[str, ArchSpec] = {
    "bert": _BERT_FAMILY,
    "roberta": _BERT_FAMILY,
    "xlm-roberta": _BERT_FAMILY,
    "electra": _BERT_FAMILY,
    "llama": _LLAMA_FAMILY,
    "mistral": _LLAMA_FAMILY,
    "qwen2": _LLAMA_FAMILY,
    "qwen3": _LLAMA_FAMILY,
}


def register_arch(model_type: str, spec: ArchSpec) -> None:
    """Teach autopeft a new ``config.model_type``."""
    ARCHS[model_type] = spec


def supported_model_types() -> tuple[str, ...]:
    return tuple(sorted(ARCHS))


def get_arch(model_or_config: Any) -> ArchSpec:
    """The :class:`ArchSpec` for a model or its config; raises :class:`UnsupportedModelError` if unknown."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHS:
        raise UnsupportedModelError(
            f"model_type: {model_type!r} has no injection rules; supported model types: "
            f"{', '.join(supported_model_types())}. Use a model of one of these types, or register rules with "
            "autopeft.peft.arch.register_arch"
        )
    return ARCHS[model_type]


__all__ = ["ARCHS", "ArchSpec", "get_arch", "register_arch", "supported_model_types"]
