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
    def _check_sites(self) -> None:
        errors = []
        for method in METHODS:
            mod = getattr(self.spec.modules, method)
            if mod is None:
                continue
            for j, site in enumerate(mod.sites):
                if site in ("attn", "ffn"):
                    continue
                if site not in self.dims.sites:
                    errors.append(
                        (
                            f"modules.{method}.sites[{j}]",
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

    def _build_choices(self) -> dict[str, list[Any]]:
        m = self.spec.modules
        hidden = self.dims.hidden_size
        choices: dict[str, list[Any]] = {}
        if self.spec.placement == "shared":
            for name in self._layer_switch_names(""):
                choices[name] = [0, 1]
        for method in METHODS:
            mod = getattr(m, method)
            if mod is None:
                continue
            if method == "ia3":
                if mod.optional:
                    choices["ia3.on"] = [0, 1]
            elif method == "lora_experts":
                choices["lora_experts.size"] = resolve_sizes(mod.sizes, hidden)
                choices["lora_experts.top_k"] = sorted(mod.top_k)
                if mod.per_layer:
                    for i in range(self.dims.num_layers):
                        choices[f"lora_experts.layer.{i}.experts"] = sorted(mod.experts)
                else:
                    choices["lora_experts.experts"] = sorted(mod.experts)
            else:
                choices[f"{method}.size"] = resolve_sizes(mod.sizes, hidden)
                if method == "lora" and mod.choose_sites:
                    for site in mod.sites:
                        choices[f"lora.site.{site}"] = [0, 1]
            if self.spec.placement == "per_module":
                for name in self._layer_switch_names(method):
                    choices[name] = [0, 1]
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

    def decode(self, params: Mapping[str, int]) -> PeftPlan:
        """Trial parameters (choice indices) -> the plan they describe."""
        unknown = set(params) - set(self.choices)
        if unknown:
            raise SpaceError(self.source, [(sorted(unknown)[0], "not a parameter of this space")])
        m = self.spec.modules
        hidden = self.dims.hidden_size
        layers: dict[int, list[ModuleSpec]] = {i: [] for i in range(self.dims.num_layers)}

        def place(method: str, specs: list[ModuleSpec]) -> None:
            for i in range(self.dims.num_layers):
                if self._layer_on(params, method, i):
                    layers[i].extend(specs)

        if m.lora is not None:
            r = self._value(params, "lora.size", resolve_sizes(m.lora.sizes, hidden))
            sites = [s for s in m.lora.sites if not m.lora.choose_sites or self._value(params, f"lora.site.{s}", [1])]
            if r > 0:
                place("lora", [ModuleSpec("lora", s, r, alpha=m.lora.alpha) for s in sites])
        for method in ("serial_adapter", "parallel_adapter", "prefix"):
            mod = getattr(m, method)
            if mod is not None:
                size = self._value(params, f"{method}.size", resolve_sizes(mod.sizes, hidden))
                if size > 0:
                    place(method, [ModuleSpec(method, s, size) for s in mod.sites])
        if m.ia3 is not None and self._value(params, "ia3.on", [1]):
            place("ia3", [ModuleSpec("ia3", s) for s in m.ia3.sites])
        if m.lora_experts is not None:
            ex = m.lora_experts
            r = self._value(params, "lora_experts.size", resolve_sizes(ex.sizes, hidden))
            k = self._value(params, "lora_experts.top_k", sorted(ex.top_k))
            for i in range(self.dims.num_layers):
                name = f"lora_experts.layer.{i}.experts" if ex.per_layer else "lora_experts.experts"
                n = self._value(params, name, sorted(ex.experts))
                if n > 0 and self._layer_on(params, "lora_experts", i):
                    layers[i].extend(
                        ModuleSpec("lora_experts", s, r, alpha=ex.alpha, num_experts=n, top_k=min(k, n))
                        for s in ex.sites
                    )
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

        values: dict[str, Any] = {}
        used_layers = {i for i, _ in plan.modules()}
        for i in range(self.dims.num_layers):
            values[f"layer.{i}"] = int(i in used_layers or not used_layers)
            for method in METHODS:
                entries = by_method.get(method, [])
                values[f"{method}.layer.{i}"] = int(any(j == i for j, _ in entries) or not entries)
        for method in ("lora", "serial_adapter", "parallel_adapter", "prefix"):
            sizes = {m.size for _, m in by_method.get(method, [])}
            values[f"{method}.size"] = sizes.pop() if len(sizes) == 1 else (0 if not sizes else -1)
        lora_sites = {m.site for _, m in by_method.get("lora", [])}
        for site in self.dims.sites:
            values[f"lora.site.{site}"] = int(site in lora_sites or not lora_sites)
        values["ia3.on"] = int("ia3" in by_method)
        experts = by_method.get("lora_experts", [])
        ex_space = self.spec.modules.lora_experts
        ranks = {m.size for _, m in experts}
        if ex_space is not None:
            values["lora_experts.size"] = ranks.pop() if len(ranks) == 1 else (
                resolve_sizes(ex_space.sizes, self.dims.hidden_size)[0] if not ranks else -1
            )
            values["lora_experts.top_k"] = max((m.top_k for _, m in experts), default=min(ex_space.top_k))
            counts = {i: m.num_experts for i, m in experts}
            for i in range(self.dims.num_layers):
                values[f"lora_experts.layer.{i}.experts"] = counts.get(i, 0)
            distinct = set(counts.values())
            values["lora_experts.experts"] = distinct.pop() if len(distinct) == 1 else (0 if not distinct else -1)

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
