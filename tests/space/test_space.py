import math
import random

import pytest

from autopeft.errors import SpaceError
from autopeft.plan import ModuleSpec, PeftPlan
from autopeft.space import ModelDims, SearchSpace, load_space, parse_space, presets, resolve_sizes

DIMS = ModelDims(num_layers=6, hidden_size=384)
LLAMA_DIMS = ModelDims(num_layers=4, hidden_size=64, sites=("q", "k", "v", "o", "gate", "up", "down"))


def test_presets_are_packaged():
    assert {"autopeft", "mola", "full"} <= set(presets())


@pytest.mark.parametrize("name", ["autopeft", "mola", "full"])
@pytest.mark.parametrize("dims", [DIMS, LLAMA_DIMS])
def test_round_trip_on_random_plans(name, dims):
    space = SearchSpace(load_space(name), dims)
    rng = random.Random(1234)
    seen = set()
    for _ in range(300):
        params = space.sample(rng)
        plan = space.decode(params)
        canonical = space.encode(plan)
        assert space.decode(canonical) == plan  # decode is the exact inverse of encode
        assert space.encode(space.decode(canonical)) == canonical  # canonical form is a fixed point
        assert PeftPlan.from_dict(plan.to_dict()) == plan
        seen.add(plan.summary())
    assert len(seen) > 50  # the sampler explores a real space, not a handful of plans


def test_log2_hidden_grid_matches_the_autopeft_paper():
    assert resolve_sizes("log2_hidden", 768) == [0, 1, 3, 6, 12, 24, 48, 96, 192, 384, 768]
    assert resolve_sizes("log2_hidden", 384) == [0, 1, 3, 6, 12, 24, 48, 96, 192, 384]


def test_autopeft_space_parameters():
    space = SearchSpace(load_space("autopeft"), DIMS)
    assert sorted(space.choices) == sorted(
        [f"layer.{i}" for i in range(6)] + ["serial_adapter.size", "parallel_adapter.size", "prefix.size"]
    )
    assert space.cardinality() == 2**6 * 10 * 10 * 7


def test_decode_specific_params():
    space = SearchSpace(load_space("autopeft"), DIMS)
    sizes = space.choices["serial_adapter.size"]
    params = {f"layer.{i}": int(i >= 3) for i in range(6)}
    params |= {"serial_adapter.size": sizes.index(48), "parallel_adapter.size": 0, "prefix.size": space.choices["prefix.size"].index(8)}
    plan = space.decode(params)
    assert [bool(layer) for layer in plan.layers] == [False, False, False, True, True, True]
    assert set(plan.layers[4]) == {ModuleSpec("serial_adapter", "ffn", 48), ModuleSpec("prefix", "attn", 8)}


def test_mola_expert_counts_per_layer_and_top_k_clipped():
    space = SearchSpace(load_space("mola"), DIMS)
    counts = space.choices["lora_experts.layer.0.experts"]
    params = {f"lora_experts.layer.{i}.experts": counts.index(c) for i, c in enumerate([0, 2, 2, 4, 8, 8])}
    params |= {"lora_experts.size": space.choices["lora_experts.size"].index(4), "lora_experts.top_k": space.choices["lora_experts.top_k"].index(2)}
    plan = space.decode(params)
    assert plan.layers[0] == ()
    assert {m.num_experts for m in plan.layers[5]} == {8}
    assert all(m.top_k == 2 and m.size == 4 for _, m in plan.modules())
    assert space.encode(plan) == params


def test_plan_outside_space_is_refused():
    space = SearchSpace(load_space("autopeft"), DIMS)
    plan = PeftPlan.from_modules(6, {0: [ModuleSpec("lora", "q", 8)]})
    with pytest.raises(SpaceError, match="lora"):
        space.encode(plan)


BAD_CASES = [
    ("name: x\nmodules: {lora: {sizes: [0, 8], sites: [attn]}}", "modules.lora.sites", "allowed sites"),
    ("name: x\nmodules: {lora: {sizes: [0, 8], rank: 4}}", "modules.lora.rank", "unknown key"),
    ("name: x\nmodules: {}", "modules", "at least one module"),
    ("name: x\nmodules: {prefix: {sizes: [-1, 4]}}", "modules.prefix.sizes", ">= 0"),
    ("name: x\nmodules: {prefix: {sizes: [4]}}\nobjectives: [trainable_pct]", "objectives", "score"),
    ("name: x\nmodules: {prefix: {sizes: [4]}}\nobjectives: [score, speed]", "objectives", "speed"),
    ("name: x\nplacement: everywhere\nmodules: {prefix: {sizes: [4]}}", "placement", "everywhere"),
    ("name: x\nmodules: {lora_experts: {sizes: [4], experts: [0, 2], top_k: [0]}}", "modules.lora_experts", "top_k"),
    ("name: x\nmodules: {prefix: {sizes: [4]}}\nbudget: {max_trainable_pct: 0}", "budget.max_trainable_pct", "greater than 0"),
    ("name: x\nmodules: [1, 2", "<yaml>", "not valid YAML"),
]


@pytest.mark.parametrize("text,path,fragment", BAD_CASES)
def test_bad_yaml_names_the_path(text, path, fragment):
    with pytest.raises(SpaceError) as info:
        parse_space(text, source="bad.yaml")
    paths = [p for p, _ in info.value.errors]
    assert path in paths, paths
    assert fragment in str(info.value)


def test_every_error_is_reported_at_once():
    text = "name: x\nmodules: {lora: {sizes: [0, 8], sites: [attn], rank: 3}}\nobjectives: [score, speed]"
    with pytest.raises(SpaceError) as info:
        parse_space(text)
    assert {"modules.lora.sites", "modules.lora.rank", "objectives"} <= {p for p, _ in info.value.errors}


def test_site_missing_from_model_is_an_error():
    spec = parse_space("name: x\nmodules: {lora: {sizes: [0, 8], sites: [q, gate]}}")
    with pytest.raises(SpaceError, match="gate"):
        SearchSpace(spec, DIMS)  # BERT has no gate projection
    SearchSpace(spec, LLAMA_DIMS)


# ----------------------------------------------------------------- method knobs from the registry's units
def test_every_registered_method_has_a_yaml_block():
    from autopeft.peft.methods import REGISTRY
    from autopeft.space.schema import ModulesSpace

    assert set(ModulesSpace.model_fields) == set(REGISTRY)


def test_lora_variant_searched_and_fixed():
    searched = SearchSpace(parse_space("name: x\nmodules: {lora: {sizes: [0, 4], variant: [lora, rslora, dora]}}"), DIMS)
    assert searched.choices["lora.variant"] == ["lora", "rslora", "dora"]
    params = {"layer.%d" % i: 1 for i in range(6)} | {"lora.size": 1, "lora.variant": 2}
    plan = searched.decode(params)
    assert {m.variant for _, m in plan.modules()} == {"dora"}
    assert searched.encode(plan) == params
    plain = searched.decode(params | {"lora.variant": 0})
    assert {m.variant for _, m in plain.modules()} == {None}  # the default variant is stored as None
    fixed = SearchSpace(parse_space("name: x\nmodules: {lora: {sizes: [0, 4], variant: rslora}}"), DIMS)
    assert "lora.variant" not in fixed.choices
    assert {m.variant for _, m in fixed.decode({"layer.0": 1, **{f"layer.{i}": 0 for i in range(1, 6)}, "lora.size": 1}).modules()} == {"rslora"}


def test_serial_adapter_style_places_pfeiffer_or_houlsby():
    space = SearchSpace(parse_space("name: x\nplacement: all\nmodules: {serial_adapter: {sizes: [0, 8], style: [pfeiffer, houlsby]}}"), DIMS)
    assert space.choices["serial_adapter.style"] == ["pfeiffer", "houlsby"]
    pfeiffer = space.decode({"serial_adapter.size": 1, "serial_adapter.style": 0})
    houlsby = space.decode({"serial_adapter.size": 1, "serial_adapter.style": 1})
    assert {m.site for _, m in pfeiffer.modules()} == {"ffn"}
    assert {m.site for _, m in houlsby.modules()} == {"attn", "ffn"}
    assert space.encode(houlsby) == {"serial_adapter.size": 1, "serial_adapter.style": 1}


def test_experts_routing_and_prefix_variant_and_new_modules_round_trip():
    text = """name: x
placement: per_module
modules:
  lora_experts: {sizes: [2], experts: [0, 2, 4], top_k: [1, 2], routing: [topk, dynmole], sites: [q]}
  prefix: {sizes: [0, 4], variant: [direct, mlp]}
  ssf: {sites: [q, down]}
  compacter: {sizes: log2_hidden}
  hydra: {sizes: [0, 2, 4], sites: [q, v], choose_sites: true}
"""
    space = SearchSpace(parse_space(text), DIMS)
    assert space.choices["compacter.size"] == [0, 12, 24, 48, 96, 192, 384]  # multiples of 4 from the log2 grid
    for name in ("lora_experts.routing", "prefix.variant", "ssf.on", "hydra.site.q", "hydra.site.v"):
        assert name in space.choices
    rng = random.Random(5)
    methods = set()
    for _ in range(200):
        plan = space.decode(space.sample(rng))
        assert space.decode(space.encode(plan)) == plan
        methods |= {(m.method, m.variant) for _, m in plan.modules()}
    assert {("lora_experts", "dynmole"), ("lora_experts", None), ("prefix", "mlp"), ("ssf", None),
            ("compacter", None), ("hydra", None)} <= methods


NEW_BAD_CASES = [
    ("name: x\nmodules: {lora: {sizes: [0, 8], variant: [lora, vera]}}", "modules.lora.variant", "no variant 'vera'"),
    ("name: x\nmodules: {serial_adapter: {sizes: [0, 8], sites: [ffn], style: houlsby}}", "modules.serial_adapter", "not both"),
    ("name: x\nmodules: {serial_adapter: {sizes: [0, 8], style: [sideways]}}", "modules.serial_adapter.style", "pfeiffer"),
    ("name: x\nmodules: {compacter: {sizes: [0, 6]}}", "modules.compacter.sizes", "multiples of 4"),
    ("name: x\nmodules: {lora_experts: {sizes: [2], experts: [2], routing: topp}}", "modules.lora_experts.routing", "dynmole"),
    ("name: x\nmodules: {ssf: {sites: [attn]}}", "modules.ssf.sites", "allowed sites"),
]


@pytest.mark.parametrize("text,path,fragment", NEW_BAD_CASES)
def test_bad_method_knobs_name_the_path(text, path, fragment):
    with pytest.raises(SpaceError) as info:
        parse_space(text, source="bad.yaml")
    assert path in [p for p, _ in info.value.errors], info.value.errors
    assert fragment in str(info.value)


def _slot_value(space: SearchSpace, module: ModuleSpec) -> float:
    """What slot_features promises for a filled slot, computed from the decoded module (the oracle)."""
    spec = getattr(space.spec.modules, module.method)
    name = "lora_experts.size" if module.method == "lora_experts" else f"{module.method}.size"
    sizes = space.choices.get(name) or [module.size]
    value = math.log2(1 + module.size) / math.log2(1 + max(sizes)) if max(sizes) > 0 else 1.0
    if module.method == "lora_experts":
        value *= math.log2(1 + module.num_experts) / math.log2(1 + max(spec.experts))
    return value


@pytest.mark.parametrize("name", ["autopeft", "mola", "full"])
@pytest.mark.parametrize("dims", [DIMS, LLAMA_DIMS])
def test_slot_features_agree_with_the_decoded_plan(name, dims):
    space = SearchSpace(load_space(name), dims)
    features = space.slot_features()
    keys = [key for key, _ in features]
    assert len(set(keys)) == len(keys)
    rng = random.Random(7)
    for _ in range(200):
        params = space.sample(rng)
        plan = space.decode(params)
        filled = {(i, m.method, m.site): m for i, m in plan.modules()}
        assert set(filled) <= set(keys)  # every slot a plan can fill has a feature
        for key, factors in features:
            value = math.prod(dict(zip(range(len(space.choices[p])), vals))[params[p]] if p else vals[0]
                              for p, vals in factors)
            expected = _slot_value(space, filled[key]) if key in filled else 0.0
            assert value == pytest.approx(expected, abs=1e-12), (key, plan.summary())


def test_slot_features_leave_out_slots_no_plan_fills():
    # serial adapters in Pfeiffer style only: no attention slot exists
    text = "name: s\nmodules:\n  serial_adapter:\n    sizes: [0, 8, 16]\n    style: [pfeiffer]\n"
    space = SearchSpace(parse_space(text), DIMS)
    sites = {key[2] for key, _ in space.slot_features()}
    assert sites == {"ffn"}
