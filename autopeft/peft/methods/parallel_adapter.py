"""Parallel adapter: a scaled bottleneck beside the attention or FFN sub-layer.

    h' = h + s * U(relu(D x)),  x = sub-layer input, s = 4        He et al. 2022, arXiv:2110.04366
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from autopeft.peft.methods.base import BLOCK_SITES, ENTRY_LINEAR, EXIT_LINEAR, Method, SizedSpace, check_sites
from autopeft.peft.methods.serial_adapter import bottleneck_count


class ParallelAdapterSpace(SizedSpace):
    sites: list[str] = Field(default_factory=lambda: ["ffn"], description="attn and/or ffn.")

    _sites = field_validator("sites")(classmethod(lambda cls, v: check_sites(METHOD, v)))


class ParallelAdapter(Method):
    name = "parallel_adapter"
    sites = BLOCK_SITES
    size_means = "bottleneck width"
    label = "parallel {size}"
    paper = "He et al. 2022, Towards a Unified View of Parameter-Efficient Transfer Learning"
    layer_module = "autopeft.peft.modules.parallel_adapter"
    space_model = ParallelAdapterSpace

    def linears(self, site: str) -> tuple[str, ...]:
        return (ENTRY_LINEAR[site], EXIT_LINEAR[site])

    def count(self, spec: Any, arch: Any, config: Any) -> int:
        d_in = arch.site_shape(config, ENTRY_LINEAR[spec.site])[0]
        d_out = arch.site_shape(config, EXIT_LINEAR[spec.site])[1]
        return bottleneck_count(d_in, spec.size, d_out)


METHOD = ParallelAdapter()
