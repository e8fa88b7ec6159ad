"""The method registry: every PEFT method autopeft can place, one unit each, registered here and only here.

Plan validation, the search-space schema's module list, parameter counting, injection, merging and the
shared method test table all read :data:`REGISTRY`. Adding a method = a ``methods/<name>.py`` descriptor, a
``modules/<name>.py`` layer with ``inject``, one line below, one row in tests/peft/conftest.py.
"""

from __future__ import annotations

from autopeft.errors import PlanError
from autopeft.peft.methods import (
    compacter,
    hydra,
    ia3,
    lora,
    lora_experts,
    parallel_adapter,
    prefix,
    serial_adapter,
    ssf,
)
from autopeft.peft.methods.base import BLOCK_SITES, ENTRY_LINEAR, EXIT_LINEAR, LINEAR_SITES, Method

#: name -> method, in canonical order (plans, summaries and search spaces list methods in this order)
REGISTRY: dict[str, Method] = {
    m.name: m
    for m in (
        lora.METHOD,
        lora_experts.METHOD,
        ia3.METHOD,
        serial_adapter.METHOD,
        parallel_adapter.METHOD,
        prefix.METHOD,
        ssf.METHOD,
        compacter.METHOD,
        hydra.METHOD,
    )
}


def get_method(name: str) -> Method:
    if name not in REGISTRY:
        raise PlanError(f"method: unknown method {name!r}; use one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


__all__ = ["BLOCK_SITES", "ENTRY_LINEAR", "EXIT_LINEAR", "LINEAR_SITES", "Method", "REGISTRY", "get_method"]
