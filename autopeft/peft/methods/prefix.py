"""Prefix tuning: learned virtual keys and values prepended to a layer's attention.

    attn(Q, [P_k; K], [P_v; V]),  P_k, P_v: (kv heads, L, head dim)      Li & Liang 2021, arXiv:2101.00190
Variant ``mlp`` trains P through the reparametrisation of the paper: P = MLP(E), E: (L, c), MLP c -> c -> 2c
(c = kv heads x head dim, tanh), one per layer; merge_plan replaces the MLP by the P it produces.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from autopeft.peft.methods.base import Method, SizedSpace, check_sites, check_variants


class PrefixSpace(SizedSpace):
    sites: list[str] = Field(default_factory=lambda: ["attn"], description="Always attn.")
    variant: str | list[str] = Field("direct", description="direct or mlp (reparametrised); a list searches both.")

    _sites = field_validator("sites")(classmethod(lambda cls, v: check_sites(METHOD, v)))
    _variant = field_validator("variant")(classmethod(lambda cls, v: check_variants(METHOD, v)))


class Prefix(Method):
    name = "prefix"
    sites = ("attn",)
    size_means = "virtual key/value tokens L"
    label = "prefix {size}"
    variants = ("direct", "mlp")
    merges = "variant mlp: P = MLP(E) is computed once and kept; the MLP is dropped"
    peft_type = "PREFIX_TUNING"
    paper = "Li & Liang 2021, Prefix-Tuning"
    layer_module = "autopeft.peft.modules.prefix"
    space_model = PrefixSpace

    def linears(self, site: str) -> tuple[str, ...]:
        return ()

    def count(self, spec: Any, arch: Any, config: Any) -> int:
        c = arch.num_kv_heads(config) * arch.head_dim(config)
        if spec.variant == "mlp":  # E (L, c) + Linear(c, c) + Linear(c, 2c)
            return spec.size * c + (c * c + c) + (c * 2 * c + 2 * c)
        return 2 * spec.size * c  # keys + values


METHOD = Prefix()
