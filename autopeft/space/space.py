"""Search spaces: load and validate YAML, bind to a model's shape, encode plans, decode parameters.

Every optimizer parameter is an integer index into an ordered list of choices (``IntDistribution``):
sizes are sorted, so the index is an ordinal on the size grid, and on/off switches are 0/1. The space is
kept *flat*: every parameter exists in every trial (a size of 0 turns a module off), because samplers
that model the space jointly (the GP-based ones) fall back to random sampling on conditional spaces.

``decode(params) -> PeftPlan`` and ``encode(plan) -> params`` are exact inverses on plans of the space:
``decode(encode(plan)) == plan``. Parameters that a plan does not constrain (a layer switch when
every module is off, say) get a canonical value, so ``encode(decode(p))`` is the canonical form of ``p``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml
from optuna.distributions import IntDistribution
from pydantic import ValidationError

from autopeft.errors import SpaceError
from autopeft.peft.methods import BLOCK_SITES, REGISTRY
from autopeft.peft.methods.compacter import PHM_N
from autopeft.peft.methods.serial_adapter import STYLES
from autopeft.plan import METHODS, ModuleSpec, PeftPlan
from autopeft.space.schema import OBJECTIVES, SpaceSpec


@dataclass(frozen=True)
class ModelDims:
    """The parts of a model's shape a space needs: layer count, hidden size, linear sites present."""

    num_layers: int
    hidden_size: int
    sites: tuple[str, ...] = ("q", "k", "v", "o", "up", "down")


# --------------------------------------------------------------------------- loading
def _yaml_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "list[", "literal[")):
            continue  # pydantic's union-branch markers are not part of the YAML path
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


def parse_space(text: str, source: str = "<space>") -> SpaceSpec:
    """Parse and validate space YAML text; raise :class:`SpaceError` listing every error by YAML path."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpaceError(source, [("<yaml>", f"not valid YAML: {exc}")]) from None
    if not isinstance(data, dict):
        raise SpaceError(source, [("<root>", "expected a mapping with name, modules, objectives")])
    try:
        return SpaceSpec.model_validate(data)
    except ValidationError as exc:
        errors = []
        seen = set()
        for err in exc.errors():
            path = _yaml_path(err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key; remove it or check its spelling (see docs/search_spaces.md)"
            elif "input" in err and err["type"] not in ("missing",) and not isinstance(err["input"], (dict, list)):
                msg = f"{msg} (got {err['input']!r})"
            if (path, msg) not in seen:
                seen.add((path, msg))
                errors.append((path, msg))
        raise SpaceError(source, errors) from None


def load_space(path: str | Path) -> SpaceSpec:
    """Load a space from a YAML file, or a preset name (``autopeft``, ``mola``, ``full``)."""
    from autopeft.space.presets import resolve_space_path

    resolved = resolve_space_path(path)
    return parse_space(resolved.read_text(), source=str(path))


# --------------------------------------------------------------------------- bound space
def resolve_sizes(sizes: str | list[int], hidden_size: int) -> list[int]:
    """Size choices, sorted; ``log2_hidden`` -> 0 plus hidden // 2**k down to 1."""
    if sizes == "log2_hidden":
        grid = {0}
        k = 0
        while hidden_size >> k >= 1:
            grid.add(hidden_size >> k)
            k += 1
        return sorted(grid)
    return sorted(sizes)  # type: ignore[arg-type]


class SearchSpace:
    """A :class:`SpaceSpec` bound to a model shape: the optimizer's parameters and the plan codec."""

    def __init__(self, spec: SpaceSpec, dims: ModelDims, source: str = "<space>"):
        self.spec = spec
        self.dims = dims
        self.source = source
        self._check_sites()
        self.choices: dict[str, list[Any]] = self._build_choices()

    # ------------------------------------------------------------ construction
    def _modules(self) -> list[tuple[str, Any, Any]]:
        """(name, method, YAML block) of every module type the space declares, in registry order."""
        return [(name, method, getattr(self.spec.modules, name)) for name, method in REGISTRY.items()
                if getattr(self.spec.modules, name) is not None]

    def _check_sites(self) -> None:
        errors = []
        for name, _, mod in self._modules():
            for j, site in enumerate(getattr(mod, "sites", None) or []):
                if site in BLOCK_SITES:
                    continue
                if site not in self.dims.sites:
                    errors.append(
                        (
                            f"modules.{name}.sites[{j}]",
                            f"site {site!r} does not exist in this model (it has {', '.join(self.dims.sites)}); "
                            "remove it or use a model that has it",
                        )
                    )
        if errors:
            raise SpaceError(self.source, errors)

    def _layer_switch_names(self, method: str) -> list[str]:
        placement = self.spec.placement
        if placement == "shared":
            return [f"layer.{i}" for i in range(self.dims.num_layers)]
        if placement == "per_module":
            if method == "lora_experts" and self.spec.modules.lora_experts.per_layer:
                return []  # the per-layer expert count already places experts
            return [f"{method}.layer.{i}" for i in range(self.dims.num_layers)]
        return []

    def _sizes(self, name: str, mod: Any) -> list[int]:
        sizes = resolve_sizes(mod.sizes, self.dims.hidden_size)
        if name == "compacter":  # PHM layers need multiples of n; log2_hidden keeps those (and 0)
            sizes = [s for s in sizes if s % PHM_N == 0]
        return sizes

    @staticmethod
    def _variant_choices(mod: Any, key: str) -> list[str]:
        value = getattr(mod, key, None)
        if value is None:
            return []
        return [value] if isinstance(value, str) else list(value)

    def _build_choices(self) -> dict[str, list[Any]]:
        choices: dict[str, list[Any]] = {}
        if self.spec.placement == "shared":
            for name in self._layer_switch_names(""):
                choices[name] = [0, 1]
        for name, method, mod in self._modules():
            if method.kind == "switch":
                if mod.optional:
                    choices[f"{name}.on"] = [0, 1]
            elif method.kind == "experts":
                choices["lora_experts.size"] = resolve_sizes(mod.sizes, self.dims.hidden_size)
                choices["lora_experts.top_k"] = sorted(mod.top_k)
                if mod.per_layer:
                    for i in range(self.dims.num_layers):
                        choices[f"lora_experts.layer.{i}.experts"] = sorted(mod.experts)
                else:
                    choices["lora_experts.experts"] = sorted(mod.experts)
                choices["lora_experts.routing"] = self._variant_choices(mod, "routing")
            else:
                choices[f"{name}.size"] = self._sizes(name, mod)
                if getattr(mod, "choose_sites", False):
                    for site in mod.sites:
                        choices[f"{name}.site.{site}"] = [0, 1]
                if name == "serial_adapter" and mod.styles():
                    choices["serial_adapter.style"] = mod.styles()
                choices[f"{name}.variant"] = self._variant_choices(mod, "variant")
            if self.spec.placement == "per_module":
                for switch in self._layer_switch_names(name):
                    choices[switch] = [0, 1]
        # A parameter with one choice is a constant, not a search dimension.
        return {name: vals for name, vals in choices.items() if len(vals) > 1}

    # ------------------------------------------------------------ optimizer view
    @property
    def objectives(self) -> list[str]:
        return list(self.spec.objectives)

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[o] for o in self.spec.objectives]

    def distributions(self) -> dict[str, IntDistribution]:
        """One ``IntDistribution`` over choice indices per parameter, in a fixed order."""
        return {name: IntDistribution(0, len(vals) - 1) for name, vals in self.choices.items()}

    def cardinality(self) -> int:
        """Number of distinct parameter vectors (an upper bound on distinct plans)."""
        return math.prod(len(v) for v in self.choices.values())

    def sample(self, rng: random.Random) -> dict[str, int]:
        """A uniformly random parameter vector (tests and quasi-random fallbacks)."""
        return {name: rng.randrange(len(vals)) for name, vals in self.choices.items()}

    # ------------------------------------------------------------ model inputs
    def slot_features(self) -> list[tuple[tuple[int, str, str], list[tuple[str, tuple[float, ...]]]]]:
        """What a plan puts where, as inputs for a model of the plan's score: one feature per (layer, method, site)
        slot that some plan of the space can fill, each a product of per-parameter lookups
        ``[(parameter, value per choice index), ...]`` (parameters that are not searched are folded in as
        constants), mirroring :meth:`decode`.

        A filled slot's value is its module's size on a log2 scale, ``log2(1 + size) / log2(1 + largest size)``
        (1 for modules without a size), times, for LoRA experts, their count on the same scale; an empty slot is 0.
        Parameters that no feature reads (variants, top-k, routing) are not features: the optimizer encodes
        them as they are. The default sampler reads them through :class:`autopeft.optimize.samplers.PlanInputs`.
        """
        out: list[tuple[tuple[int, str, str], list[tuple[str, tuple[float, ...]]]]] = []

        def lookup(name: str, fixed: list[Any], fn) -> tuple[str, tuple[float, ...]] | float:
            if name in self.choices:
                return name, tuple(float(fn(v)) for v in self.choices[name])
            return float(fn(fixed[0]))

        def log_scale(values: list[int]):
            top = math.log2(1 + max(values)) if values and max(values) > 0 else 1.0
            return lambda v: math.log2(1 + v) / top

        def layer(method: str, i: int):
            if self.spec.placement == "shared":
                return lookup(f"layer.{i}", [1], bool)
            if self.spec.placement == "per_module" and self._layer_switch_names(method):
                return lookup(f"{method}.layer.{i}", [1], bool)
            return 1.0

        def add(key: tuple[int, str, str], factors: list) -> None:
            scale = math.prod(f for f in factors if isinstance(f, float))
            lookups = [f for f in factors if not isinstance(f, float)]
            if scale == 0.0 or any(not any(v) for _, v in lookups):
                return  # no plan of the space fills this slot
            if lookups:
                name, values = lookups[0]
                lookups[0] = (name, tuple(scale * v for v in values))
            else:
                lookups = [("", (scale,))]
            out.append((key, lookups))

        for name, method, mod in self._modules():
            for i in range(self.dims.num_layers):
                if method.kind == "switch":
                    for site in mod.sites:
                        add((i, name, site), [lookup(f"{name}.on", [1], bool), layer(name, i)])
                elif method.kind == "experts":
                    sizes = resolve_sizes(mod.sizes, self.dims.hidden_size)
                    counts = sorted(mod.experts)
                    count = f"lora_experts.layer.{i}.experts" if mod.per_layer else "lora_experts.experts"
                    for site in mod.sites:
                        add((i, name, site), [lookup("lora_experts.size", sizes, log_scale(sizes)),
                                              lookup(count, counts, log_scale(counts)), layer(name, i)])
                else:
                    sizes = self._sizes(name, mod)
                    size = lookup(f"{name}.size", sizes, log_scale(sizes))
                    if name == "serial_adapter" and mod.styles():
                        styles = mod.styles()
                        sites = sorted({s for st in styles for s in STYLES[st]})
                        site_on = {s: lookup("serial_adapter.style", styles, lambda st, s=s: s in STYLES[st])
                                   for s in sites}
                    elif getattr(mod, "choose_sites", False):
                        site_on = {s: lookup(f"{name}.site.{s}", [1], bool) for s in mod.sites}
                    else:
                        fixed = mod.fixed_sites() if name == "serial_adapter" else list(mod.sites)
                        site_on = {s: 1.0 for s in fixed}
                    for site, on in site_on.items():
                        add((i, name, site), [size, on, layer(name, i)])
        return out

    # ------------------------------------------------------------ codec
    def _value(self, params: Mapping[str, int], name: str, fixed: list[Any]) -> Any:
        """Value of parameter ``name``; ``fixed`` is the one-choice list used when it is not searched."""
        if name not in self.choices:
            return fixed[0]
        idx = params.get(name)
        vals = self.choices[name]
        if idx is None:
            raise SpaceError(self.source, [(name, "missing from the trial's parameters")])
        if not isinstance(idx, int) or not 0 <= idx < len(vals):
            raise SpaceError(self.source, [(name, f"index {idx!r} outside 0..{len(vals) - 1}")])
        return vals[idx]

    def _layer_on(self, params: Mapping[str, int], method: str, layer: int) -> bool:
        if self.spec.placement == "shared":
            return bool(self._value(params, f"layer.{layer}", [1]))
        if self.spec.placement == "per_module" and self._layer_switch_names(method):
            return bool(self._value(params, f"{method}.layer.{layer}", [1]))
        return True

    def _fixed_sites(self, name: str, mod: Any, params: Mapping[str, int]) -> list[str]:
        if name == "serial_adapter":
            styles = mod.styles()
            if styles:
                return list(STYLES[self._value(params, "serial_adapter.style", styles)])
            return mod.fixed_sites()
        if getattr(mod, "choose_sites", False):
            return [s for s in mod.sites if self._value(params, f"{name}.site.{s}", [1])]
        return list(mod.sites)

    def decode(self, params: Mapping[str, int]) -> PeftPlan:
        """Trial parameters (choice indices) -> the plan they describe."""
        unknown = set(params) - set(self.choices)
        if unknown:
            raise SpaceError(self.source, [(sorted(unknown)[0], "not a parameter of this space")])
        layers: dict[int, list[ModuleSpec]] = {i: [] for i in range(self.dims.num_layers)}

        def place(method: str, specs: list[ModuleSpec]) -> None:
            for i in range(self.dims.num_layers):
                if self._layer_on(params, method, i):
                    layers[i].extend(specs)

        for name, method, mod in self._modules():
            if method.kind == "switch":
                if self._value(params, f"{name}.on", [1]):
                    place(name, [ModuleSpec(name, s) for s in mod.sites])
            elif method.kind == "experts":
                r = self._value(params, "lora_experts.size", resolve_sizes(mod.sizes, self.dims.hidden_size))
                k = self._value(params, "lora_experts.top_k", sorted(mod.top_k))
                routing = self._value(params, "lora_experts.routing", self._variant_choices(mod, "routing"))
                for i in range(self.dims.num_layers):
                    count_name = f"lora_experts.layer.{i}.experts" if mod.per_layer else "lora_experts.experts"
                    n = self._value(params, count_name, sorted(mod.experts))
                    if n > 0 and self._layer_on(params, "lora_experts", i):
                        layers[i].extend(
                            ModuleSpec("lora_experts", s, r, alpha=mod.alpha, num_experts=n, top_k=min(k, n),
                                       variant=routing)
                            for s in mod.sites
                        )
            else:
                size = self._value(params, f"{name}.size", self._sizes(name, mod))
                variants = self._variant_choices(mod, "variant")
                variant = self._value(params, f"{name}.variant", variants) if variants else None
                alpha = getattr(mod, "alpha", None)
                if size > 0:
                    sites = self._fixed_sites(name, mod, params)
                    place(name, [ModuleSpec(name, s, size, alpha=alpha, variant=variant) for s in sites])
        return PeftPlan.from_modules(self.dims.num_layers, layers)

    def encode(self, plan: PeftPlan) -> dict[str, int]:
        """The canonical parameters of ``plan``; raises :class:`SpaceError` if the plan is not in the space."""
        if plan.num_layers != self.dims.num_layers:
            raise SpaceError(
                self.source,
                [("plan.num_layers", f"plan has {plan.num_layers} layers, the model has {self.dims.num_layers}")],
            )
        by_method: dict[str, list[tuple[int, ModuleSpec]]] = {}
        for i, mod in plan.modules():
            by_method.setdefault(mod.method, []).append((i, mod))

        def unique(values: set[Any], absent: Any) -> Any:
            return values.pop() if len(values) == 1 else (absent if not values else -1)

        values: dict[str, Any] = {}
        used_layers = {i for i, _ in plan.modules()}
        for i in range(self.dims.num_layers):
            values[f"layer.{i}"] = int(i in used_layers or not used_layers)
            for method in METHODS:
                entries = by_method.get(method, [])
                values[f"{method}.layer.{i}"] = int(any(j == i for j, _ in entries) or not entries)
        for name, method, mod in self._modules():
            entries = by_method.get(name, [])
            variants = self._variant_choices(mod, "routing" if method.kind == "experts" else "variant")
            if variants:
                key = "lora_experts.routing" if method.kind == "experts" else f"{name}.variant"
                default = method.variants[0]
                values[key] = unique({m.variant or default for _, m in entries}, variants[0])
            if method.kind == "switch":
                values[f"{name}.on"] = int(bool(entries))
            elif method.kind == "sized":
                values[f"{name}.size"] = unique({m.size for _, m in entries}, 0)
                sites = {m.site for _, m in entries}
                for site in self.dims.sites:
                    values[f"{name}.site.{site}"] = int(site in sites or not sites)
                if name == "serial_adapter" and mod.styles():
                    by_sites = {tuple(v): k for k, v in STYLES.items()}
                    values["serial_adapter.style"] = by_sites.get(tuple(sorted(sites)), mod.styles()[0]) \
                        if sites else mod.styles()[0]
        experts = by_method.get("lora_experts", [])
        ex_space = self.spec.modules.lora_experts
        if ex_space is not None:
            values["lora_experts.size"] = unique(
                {m.size for _, m in experts}, resolve_sizes(ex_space.sizes, self.dims.hidden_size)[0]
            )
            values["lora_experts.top_k"] = max((m.top_k for _, m in experts), default=min(ex_space.top_k))
            counts = {i: m.num_experts for i, m in experts}
            for i in range(self.dims.num_layers):
                values[f"lora_experts.layer.{i}.experts"] = counts.get(i, 0)
            values["lora_experts.experts"] = unique(set(counts.values()), 0)

        params: dict[str, int] = {}
        for name, vals in self.choices.items():
            value = values.get(name)
            if value in vals:
                params[name] = vals.index(value)
            else:
                # top_k may exceed every layer's count after clipping: take the nearest choice above.
                above = [j for j, v in enumerate(vals) if isinstance(value, int) and v >= value]
                if name == "lora_experts.top_k" and above:
                    params[name] = above[0]
                else:
                    raise SpaceError(
                        self.source, [(name, f"plan needs value {value!r}, not among the choices {vals}")]
                    )
        decoded = self.decode(params)
        if decoded != plan:
            raise SpaceError(
                self.source,
                [("plan", f"not expressible in this space: {plan.summary()!r}; nearest is {decoded.summary()!r}")],
            )
        return params

    def params_to_values(self, params: Mapping[str, int]) -> dict[str, Any]:
        """Choice indices -> the values they stand for (for display)."""
        return {name: self.choices[name][idx] for name, idx in params.items() if name in self.choices}
