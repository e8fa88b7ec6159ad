"""The one plan object: which PEFT modules sit where in a transformer, layer by layer.

Everything downstream of the optimizer receives a :class:`PeftPlan`. It is plain, frozen data: it
serialises to a dict (and so to JSON and YAML) and back without loss, and it knows nothing about
models, storage or training.

Sites
-----
A *site* names where in a transformer block a module sits:

* linear sites ``q``, ``k``, ``v``, ``o`` (attention projections), ``gate``, ``up``, ``down`` (FFN
  projections; ``gate`` exists only in gated FFNs such as LLaMA's);
* block sites ``attn`` and ``ffn`` (the attention and the feed-forward sub-layer as a whole).

Methods
-------
The methods, their sites and what ``size`` means live in one registry, :data:`autopeft.peft.methods.REGISTRY`
(one unit per method; see docs/methods.md). ``variant`` picks a method's variant (LoRA: ``rslora``/``dora``;
LoRA experts: ``dynmole`` routing; prefix: ``mlp`` reparametrisation); ``None`` is the method's default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from autopeft.errors import PlanError
from autopeft.peft.methods import BLOCK_SITES, LINEAR_SITES, REGISTRY, get_method

#: method name -> sites it may sit on, read from the method registry.
METHOD_SITES: dict[str, tuple[str, ...]] = {name: m.sites for name, m in REGISTRY.items()}
METHODS: tuple[str, ...] = tuple(REGISTRY)
#: methods whose ``size`` knob is meaningful (must be >= 1 when placed).
SIZED_METHODS: frozenset[str] = frozenset(name for name, m in REGISTRY.items() if m.size_means)


@dataclass(frozen=True, order=True)
class ModuleSpec:
    """One module on one site of one layer.

    ``alpha`` is the low-rank scaling numerator of LoRA-type methods (``None`` means ``2 * size``).
    ``num_experts`` and ``top_k`` are used by ``lora_experts`` only and must be 0 elsewhere. ``variant`` names a
    non-default variant of the method (``None`` = the default; giving the default's name stores ``None``).
    """

    method: str
    site: str
    size: int = 0
    alpha: float | None = None
    num_experts: int = 0
    top_k: int = 0
    variant: str | None = None

    def __post_init__(self) -> None:
        where = f"module {self.method!r} on site {self.site!r}"
        method = get_method(self.method)
        if self.site not in method.sites:
            raise PlanError(
                f"site: {where}: {self.method} cannot sit on {self.site!r}; allowed sites: {', '.join(method.sites)}"
            )
        if method.variants and self.variant == method.variants[0]:
            object.__setattr__(self, "variant", None)  # one spelling per plan: the default is None
        method.check(self, where)

    @property
    def scaling(self) -> float:
        """Low-rank output scale (``alpha / r``; rsLoRA ``alpha / sqrt(r)``); 1.0 for methods without one."""
        return get_method(self.method).scaling(self)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "site": self.site}
        if self.method in SIZED_METHODS:
            out["size"] = self.size
        if self.alpha is not None:
            out["alpha"] = self.alpha
        if self.method == "lora_experts":
            out["num_experts"] = self.num_experts
            out["top_k"] = self.top_k
        if self.variant is not None:
            out["variant"] = self.variant
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModuleSpec":
        known = {"method", "site", "size", "alpha", "num_experts", "top_k", "variant"}
        unknown = set(data) - known
        if unknown:
            raise PlanError(f"{sorted(unknown)[0]}: unknown module field; allowed: {', '.join(sorted(known))}")
        if "method" not in data or "site" not in data:
            raise PlanError("method/site: every module needs both 'method' and 'site'")
        try:
            return cls(
                method=str(data["method"]),
                site=str(data["site"]),
                size=int(data.get("size", 0)),
                alpha=None if data.get("alpha") is None else float(data["alpha"]),
                num_experts=int(data.get("num_experts", 0)),
                top_k=int(data.get("top_k", 0)),
                variant=None if data.get("variant") is None else str(data["variant"]),
            )
        except (TypeError, ValueError) as exc:
            raise PlanError(f"module {dict(data)!r}: {exc}") from exc


@dataclass(frozen=True)
class PeftPlan:
    """Per-layer module placement for a model with ``num_layers`` transformer blocks.

    ``layers[i]`` holds the modules of block ``i``, sorted, at most one per (method, site).
    """

    num_layers: int
    layers: tuple[tuple[ModuleSpec, ...], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.num_layers < 1:
            raise PlanError(f"num_layers: {self.num_layers} must be >= 1")
        layers = tuple(tuple(sorted(layer, key=_sort_key)) for layer in self.layers) or tuple(() for _ in range(self.num_layers))
        if len(layers) != self.num_layers:
            raise PlanError(f"layers: plan lists {len(layers)} layers but num_layers is {self.num_layers}")
        for i, layer in enumerate(layers):
            keys = [(m.method, m.site) for m in layer]
            dup = {k for k in keys if keys.count(k) > 1}
            if dup:
                method, site = sorted(dup)[0]
                raise PlanError(f"layers[{i}]: {method} appears twice on site {site!r}; keep one")
        object.__setattr__(self, "layers", layers)

    @classmethod
    def from_modules(cls, num_layers: int, modules: Mapping[int, Iterable[ModuleSpec]]) -> "PeftPlan":
        """Build a plan from ``{layer_index: modules}``; absent layers are empty."""
        bad = [i for i in modules if not 0 <= i < num_layers]
        if bad:
            raise PlanError(f"layers: layer index {bad[0]} outside 0..{num_layers - 1}")
        return cls(num_layers, tuple(tuple(modules.get(i, ())) for i in range(num_layers)))

    # ------------------------------------------------------------------ views
    def modules(self) -> Iterable[tuple[int, ModuleSpec]]:
        """Every (layer index, module) pair, in layer order."""
        for i, layer in enumerate(self.layers):
            for module in layer:
                yield i, module

    def methods(self) -> list[str]:
        """Methods used anywhere in the plan, in canonical order."""
        used = {m.method for _, m in self.modules()}
        return [m for m in METHODS if m in used]

    @property
    def is_empty(self) -> bool:
        return not any(self.layers)

    def summary(self) -> str:
        """Short human-readable description, e.g. ``lora r8 q,v @L0-5 | prefix 16 @L2,4``."""
        if self.is_empty:
            return "head only"
        groups: dict[str, dict[str, list[int]]] = {}
        for i, m in self.modules():
            label = get_method(m.method).summary_label(m)
            site = f"{m.site}x{m.num_experts}" if m.method == "lora_experts" else m.site
            groups.setdefault(label, {}).setdefault(site, []).append(i)
        parts = []
        for label, sites in groups.items():
            by_layers: dict[tuple[int, ...], list[str]] = {}
            for site, idx in sites.items():
                by_layers.setdefault(tuple(idx), []).append(site)
            for idx, site_names in by_layers.items():
                parts.append(f"{label} {','.join(site_names)} @{_layer_ranges(idx)}")
        return " | ".join(parts)

    # ---------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "num_layers": self.num_layers,
            "layers": [{"index": i, "modules": [m.to_dict() for m in layer]} for i, layer in enumerate(self.layers) if layer],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PeftPlan":
        if not isinstance(data, Mapping):
            raise PlanError(f"plan: expected a mapping with num_layers and layers, got {type(data).__name__}")
        unknown = set(data) - {"num_layers", "layers"}
        if unknown:
            raise PlanError(f"{sorted(unknown)[0]}: unknown plan field; allowed: num_layers, layers")
        if "num_layers" not in data:
            raise PlanError("num_layers: missing; give the number of transformer layers of the model")
        num_layers = int(data["num_layers"])
        modules: dict[int, list[ModuleSpec]] = {}
        for j, entry in enumerate(data.get("layers") or []):
            if not isinstance(entry, Mapping) or "index" not in entry:
                raise PlanError(f"layers[{j}]: each entry needs 'index' and 'modules'")
            try:
                modules.setdefault(int(entry["index"]), []).extend(
                    ModuleSpec.from_dict(m) for m in entry.get("modules") or []
                )
            except PlanError as exc:
                raise PlanError(f"layers[{j}].{exc}") from exc
        return cls.from_modules(num_layers, modules)


def _sort_key(m: ModuleSpec) -> tuple:
    """Canonical module order in a layer; (method, site) is unique there, so None-valued fields never compare."""
    return (m.method, m.site, m.size, m.num_experts, m.top_k, m.alpha or 0.0, m.variant or "")


def _layer_ranges(indices: Iterable[int]) -> str:
    """``[0,1,2,5]`` -> ``L0-2,5``."""
    idx = sorted(indices)
    runs: list[str] = []
    start = prev = idx[0]
    for i in idx[1:] + [None]:  # type: ignore[list-item]
        if i is not None and i == prev + 1:
            prev = i
            continue
        runs.append(f"{start}" if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return "L" + ",".join(runs)


__all__ = ["BLOCK_SITES", "LINEAR_SITES", "METHODS", "METHOD_SITES", "ModuleSpec", "PeftPlan"]
