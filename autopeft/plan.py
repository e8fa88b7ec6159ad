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

Methods and the sites they accept
---------------------------------
============================  ==================  =========================================
method                        sites               ``size`` means
============================  ==================  =========================================
``lora``                      linear sites        rank r
``lora_experts``              linear sites        rank of each expert (plus experts, top_k)
``ia3``                       ``k``, ``v``, ``down``  unused (0): one scale per feature
``serial_adapter``            ``attn``, ``ffn``   bottleneck width
``parallel_adapter``          ``attn``, ``ffn``   bottleneck width
``prefix``                    ``attn``            number of virtual key/value tokens
============================  ==================  =========================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from autopeft.errors import PlanError

LINEAR_SITES: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")
BLOCK_SITES: tuple[str, ...] = ("attn", "ffn")

#: method name -> sites it may sit on. The one list every part of the project reads.
METHOD_SITES: dict[str, tuple[str, ...]] = {
    "lora": LINEAR_SITES,
    "lora_experts": LINEAR_SITES,
    "ia3": ("k", "v", "down"),
    "serial_adapter": BLOCK_SITES,
    "parallel_adapter": BLOCK_SITES,
    "prefix": ("attn",),
}
METHODS: tuple[str, ...] = tuple(METHOD_SITES)
#: methods whose ``size`` knob is meaningful (must be >= 1 when placed).
SIZED_METHODS: frozenset[str] = frozenset(METHODS) - {"ia3"}


@dataclass(frozen=True, order=True)
class ModuleSpec:
    """One module on one site of one layer.

    ``alpha`` is the LoRA scaling numerator (scale = alpha / size); ``None`` means ``2 * size``.
    ``num_experts`` and ``top_k`` are used by ``lora_experts`` only and must be 0 elsewhere.
    """

    method: str
    site: str
    size: int = 0
    alpha: float | None = None
    num_experts: int = 0
    top_k: int = 0

    def __post_init__(self) -> None:
        where = f"module {self.method!r} on site {self.site!r}"
        if self.method not in METHOD_SITES:
            raise PlanError(f"method: unknown method {self.method!r}; use one of {', '.join(METHODS)}")
        if self.site not in METHOD_SITES[self.method]:
            raise PlanError(
                f"site: {where}: {self.method} cannot sit on {self.site!r}; "
                f"allowed sites: {', '.join(METHOD_SITES[self.method])}"
            )
        if self.method in SIZED_METHODS and self.size < 1:
            raise PlanError(f"size: {where}: size {self.size} must be >= 1 (leave the module out to turn it off)")
        if self.method == "ia3" and self.size != 0:
            raise PlanError(f"size: {where}: ia3 has no size knob; use size 0, not {self.size}")
        if self.method == "lora_experts":
            if self.num_experts < 1:
                raise PlanError(f"num_experts: {where}: {self.num_experts} must be >= 1")
            if not 1 <= self.top_k <= self.num_experts:
                raise PlanError(
                    f"top_k: {where}: top_k {self.top_k} must lie in 1..num_experts ({self.num_experts})"
                )
        elif self.num_experts or self.top_k:
            raise PlanError(f"num_experts/top_k: {where}: only lora_experts takes experts; set both to 0")
        if self.alpha is not None and self.method not in ("lora", "lora_experts"):
            raise PlanError(f"alpha: {where}: only LoRA methods take alpha; leave it out")

    @property
    def scaling(self) -> float:
        """LoRA output scale ``alpha / r`` (1.0 for methods without one)."""
        if self.method not in ("lora", "lora_experts"):
            return 1.0
        alpha = 2.0 * self.size if self.alpha is None else self.alpha
        return alpha / self.size

    def to_dict(self) -> dict[str, Any]:
        out = {"method": self.method, "site": self.site}
        if self.method in SIZED_METHODS:
            out["size"] = self.size
        if self.alpha is not None:
            out["alpha"] = self.alpha
        if self.method == "lora_experts":
            out["num_experts"] = self.num_experts
            out["top_k"] = self.top_k
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModuleSpec":
        known = {"method", "site", "size", "alpha", "num_experts", "top_k"}
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
        layers = tuple(tuple(sorted(layer)) for layer in self.layers) or tuple(() for _ in range(self.num_layers))
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
            if m.method == "lora_experts":
                label = f"experts r{m.size} top{m.top_k}"
                groups.setdefault(label, {}).setdefault(f"{m.site}x{m.num_experts}", []).append(i)
                continue
            label = {
                "lora": f"lora r{m.size}",
                "ia3": "ia3",
                "serial_adapter": f"serial {m.size}",
                "parallel_adapter": f"parallel {m.size}",
                "prefix": f"prefix {m.size}",
            }[m.method]
            groups.setdefault(label, {}).setdefault(m.site, []).append(i)
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
