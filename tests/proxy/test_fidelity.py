"""Fidelity fields: the throughput options read as their old meaning when a stored fidelity lacks them."""

import pytest

from autopeft.errors import StudyError
from autopeft.proxy.fidelity import THROUGHPUT_FIELDS, Fidelity, TaskProfile, resolve_preset


def test_a_fidelity_stored_before_the_throughput_options_means_what_it_meant():
    stored = Fidelity(steps=30).model_dump()
    for name in THROUGHPUT_FIELDS:
        stored.pop(name)  # as written by a version without them
    old = Fidelity(**stored)
    assert (old.length_buckets, old.frozen_cache, old.compile, old.gradient_checkpointing, old.pooled_only) == (
        False,) * 5
    assert (old.frozen_cache_dtype, old.autocast) == ("float32", "off")
    assert old == Fidelity(steps=30) and old.options() == []


def test_options_are_recorded_and_described():
    f = Fidelity(length_buckets=True, frozen_cache=True, frozen_cache_dtype="bfloat16", autocast="bf16",
                 gradient_checkpointing=True, compile=True, pooled_only=True)
    assert f != Fidelity()  # trials with other options are another fidelity: never mixed
    assert {k: f.model_dump()[k] for k in THROUGHPUT_FIELDS} == {
        "length_buckets": True, "frozen_cache": True, "frozen_cache_dtype": "bfloat16", "compile": True,
        "autocast": "bf16", "gradient_checkpointing": True, "pooled_only": True, "cuda_graphs": False}
    assert f.describe().endswith("length buckets, frozen-layer cache (bfloat16), compiled, bf16 autocast, "
                                 "gradient checkpointing, pooled token only in the last block")
    graphed = Fidelity(length_buckets=True, cuda_graphs=True)
    assert graphed != Fidelity(length_buckets=True) and graphed.describe().endswith("length buckets, CUDA graphs")


def test_cuda_graphs_refuse_compile_and_checkpointing():
    for other, flag in (("compile", "--compile"), ("gradient_checkpointing", "--gradient-checkpointing")):
        with pytest.raises(StudyError, match=rf"--cuda-graphs \(cuda_graphs\): .*cannot be combined with {flag}"):
            Fidelity.build({other: True, "cuda_graphs": True})


def test_bad_option_values_name_the_flag():
    with pytest.raises(StudyError, match=r"--frozen-cache-dtype .*pass --frozen-cache too"):
        Fidelity.build({"frozen_cache_dtype": "bfloat16"})
    with pytest.raises(StudyError, match=r"--autocast .*'off', 'bf16' or 'fp16'.*'fp8'"):
        Fidelity.build({"autocast": "fp8"})


def test_a_retrain_may_change_the_throughput_options():
    profile = TaskProfile(train=1000, validation=100, test=100, length_quantile=40)
    f = resolve_preset(Fidelity(), "quick", profile, {"frozen_cache": True, "autocast": "bf16"})
    assert f.frozen_cache and f.autocast == "bf16" and f.steps == 63
    with pytest.raises(StudyError, match="--model.*--frozen-cache"):
        resolve_preset(Fidelity(), "quick", profile, {"model": "other"})
