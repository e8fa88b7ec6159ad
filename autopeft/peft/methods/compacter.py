"""Compacter: a serial adapter whose two projections are PHM layers (sums of Kronecker products).

    h' = h + U(relu(D h)),   D = sum_{i=1..n} A_i (x) (s_i t_i^T),   U likewise
    A_i (n x n): "slow" rule matrices shared by every Compacter layer of the model (one set for the down
    projections, one for the up projections); s_i, t_i: "fast" per-layer rank-one factors.
Mahabadi et al. 2021, "Compacter: Efficient Low-Rank Hypercomplex Adapter Layers", arXiv:2106.04647.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from autopeft.errors import PlanError
from autopeft.peft.methods.base import BLOCK_SITES, EXIT_LINEAR, Method, SizedSpace, check_sites

#: n, the number of Kronecker products (the paper's default); hidden size and bottleneck must be multiples of it
PHM_N = 4


class CompacterSpace(SizedSpace):
    sites: list[str] = Field(default_factory=lambda: ["ffn"], description="attn and/or ffn.")

    _sites = field_validator("sites")(classmethod(lambda cls, v: check_sites(METHOD, v)))

    @field_validator("sizes")
    @classmethod
    def _multiples(cls, v):
        if isinstance(v, list):
            bad = [s for s in v if s % PHM_N]
            if bad:
                raise ValueError(f"compacter sizes must be multiples of {PHM_N} (0 = off), got {bad[0]}")
        return v


class Compacter(Method):
    name = "compacter"
    sites = BLOCK_SITES
    size_means = f"bottleneck width (a multiple of n = {PHM_N})"
    label = "compacter {size}"
    paper = "Mahabadi et al. 2021, Compacter"
    layer_module = "autopeft.peft.modules.compacter"
    space_model = CompacterSpace

    def check(self, spec: Any, where: str) -> None:
        super().check(spec, where)
        if spec.size % PHM_N:
            raise PlanError(f"size: {where}: compacter size {spec.size} must be a multiple of {PHM_N}")

    def check_model(self, spec: Any, arch: Any, config: Any) -> str | None:
        d = arch.site_shape(config, EXIT_LINEAR[spec.site])[1]
        return None if d % PHM_N == 0 else f"compacter needs a width divisible by {PHM_N}; this model's is {d}"

    def linears(self, site: str) -> tuple[str, ...]:
        return (EXIT_LINEAR[site],)

    def count(self, spec: Any, arch: Any, config: Any) -> int:
        d, m = arch.site_shape(config, EXIT_LINEAR[spec.site])[1], spec.size
        # down: s_i (d/n) and t_i (m/n) for n terms + bias m; up: s_i (m/n), t_i (d/n) + bias d
        return (d + m + m) + (m + d + d)

    def shared_count(self, specs: list[Any], arch: Any, config: Any) -> int:
        return 2 * PHM_N**3 if specs else 0  # the down and the up rule: n matrices of n x n each


METHOD = Compacter()
