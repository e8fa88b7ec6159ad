"""Fidelity presets (quick, default, full): worked out from a task's sizes, with overrides on top."""

import math

import pytest

from autopeft.errors import StudyError
from autopeft.proxy.fidelity import (
    FIDELITY_PRESETS,
    FULL_EPOCHS,
    QUICK_EVAL_EXAMPLES,
    QUICK_TRAIN_EXAMPLES,
    Fidelity,
    TaskProfile,
    resolve_preset,
)
from autopeft.proxy.models import load_tokenizer
from autopeft.proxy.tasks import Example, TaskData

# rotten_tomatoes' seed-0 split; 95 % of its training reviews fit in 47 MiniLM tokens.
REVIEWS = TaskProfile(train=10202, validation=1275, test=1276, length_quantile=47, max_positions=512)
BASE = Fidelity(steps=30, batch_size=16, train_examples=500, eval_examples=100, max_length=32, learning_rate=3e-4,
                seed=2)


def test_full_trains_every_example_for_epochs_and_scores_every_example():
    f = resolve_preset(BASE, "full", REVIEWS)
    assert f.train_examples == 10202
    assert f.steps == FULL_EPOCHS * math.ceil(10202 / 16) == 1914
    assert f.eval_examples == 1276  # the larger of validation and test: both scored whole
    assert f.max_length == 64  # 47 tokens rounded up to a multiple of 32
    # The rest of the study's fidelity is kept.
    assert (f.model, f.task, f.batch_size, f.learning_rate, f.seed) == (BASE.model, BASE.task, 16, 3e-4, 2)


def test_full_never_lowers_the_study_budget_and_respects_the_model_limit():
    big = BASE.model_copy(update={"steps": 5000, "max_length": 128})
    f = resolve_preset(big, "full", REVIEWS)
    assert f.steps == 5000 and f.max_length == 128
    articles = TaskProfile(train=1779, validation=223, test=223, length_quantile=921, max_positions=512)
    assert resolve_preset(BASE, "full", articles).max_length == 512  # capped at the model's positions
    no_limit = TaskProfile(train=1779, validation=223, test=223, length_quantile=921)
    assert resolve_preset(BASE, "full", no_limit).max_length == 928


def test_quick_and_default_are_capped_at_the_task_size():
    q = resolve_preset(BASE, "quick", REVIEWS)
    assert (q.train_examples, q.steps, q.eval_examples) == (QUICK_TRAIN_EXAMPLES, math.ceil(QUICK_TRAIN_EXAMPLES / 16),
                                                            QUICK_EVAL_EXAMPLES)
    small = TaskProfile(train=200, validation=25, test=30, length_quantile=20)
    q = resolve_preset(BASE, "quick", small)
    assert (q.train_examples, q.steps, q.eval_examples) == (200, 13, 30)

    defaults = Fidelity()
    d = resolve_preset(BASE, "default", REVIEWS)
    for name in ("train_examples", "steps", "batch_size", "max_length", "eval_examples"):
        assert getattr(d, name) == getattr(defaults, name), name
    assert d.learning_rate == 3e-4 and d.seed == 2  # not part of the budget preset
    d = resolve_preset(BASE, "default", small)
    assert (d.train_examples, d.eval_examples) == (200, 30)


def test_overrides_go_on_top_and_batch_size_sets_the_epochs():
    f = resolve_preset(BASE, "full", REVIEWS, {"steps": 3, "train_examples": 32, "eval_examples": None})
    assert (f.steps, f.train_examples, f.eval_examples) == (3, 32, 1276)  # None means "not given"
    f = resolve_preset(BASE, "full", REVIEWS, {"batch_size": 64})
    assert f.batch_size == 64 and f.steps == FULL_EPOCHS * math.ceil(10202 / 64)


@pytest.mark.parametrize(("preset", "overrides", "needles"), [
    ("huge", None, ["--fidelity", "'huge'", "quick, default, full"]),
    ("full", {"steps": 0}, ["--steps", "greater than or equal to 1", "got 0"]),
    ("full", {"model": "bert-base-uncased"}, ["--model", "bert-base-uncased", "--steps"]),
    ("full", {"objective": "synthetic"}, ["--objective", "synthetic"]),
])
def test_bad_presets_and_overrides_name_the_flag_and_value(preset, overrides, needles):
    with pytest.raises(StudyError) as err:
        resolve_preset(BASE, preset, REVIEWS, overrides)
    for needle in needles:
        assert needle in str(err.value)


def test_every_preset_has_a_description():
    assert set(FIDELITY_PRESETS) == {"quick", "default", "full"}
    assert all(p.description for p in FIDELITY_PRESETS.values())


def _task(texts, pairs=None):
    examples = tuple(Example(t, pairs[i] if pairs else None, i % 2) for i, t in enumerate(texts))
    return TaskData("t", ("a", "b"), "accuracy", examples, examples[:3], examples[:5], "test")


def test_profile_measures_sizes_and_token_lengths():
    tokenizer = load_tokenizer("minilm")
    texts = [" ".join(["word"] * n) for n in range(1, 21)]  # 1..20 words: n + 2 tokens with [CLS] and [SEP]
    assert [len(ids) for ids in tokenizer(texts)["input_ids"]] == [n + 2 for n in range(1, 21)]
    p = TaskProfile.measure(_task(texts), tokenizer)
    assert (p.train, p.validation, p.test, p.eval_examples) == (20, 3, 5, 5)
    assert p.length_quantile == 21  # nearest rank: the 19th of 20 lengths (3..22)
    assert TaskProfile.measure(_task(texts), tokenizer, max_positions=10).length_quantile == 10
    paired = TaskProfile.measure(_task(texts, pairs=["word word"] * 20), tokenizer)
    assert paired.length_quantile == 21 + 3  # two more words and a second [SEP]
