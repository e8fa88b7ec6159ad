"""The proxy fine-tune: a short, seeded training run of one plan at one fidelity, and its metrics.

:class:`ProxyTrainer` holds what trials of one fidelity share (base weights, tokenizer, tokenised data)
so a worker loads them once; :meth:`ProxyTrainer.run` trains one plan on a fresh copy of the base model:

    inject plan -> AdamW (linear warm-up, linear decay) for ``steps`` batches -> score the validation
    split (the ``score`` objective) and the test split (recorded, never optimised)

Nothing is computed that a trial does not need: batches are padded to their longest member (and, with the
fidelity's ``length_buckets``, made of examples of similar length), collated from tensors built once per worker;
evaluation runs without autograd in large length-sorted batches; with ``frozen_cache`` the blocks below a plan's
lowest module are computed once per worker (:mod:`autopeft.proxy.cache`). The fidelity's ``compile``,
``autocast`` and ``gradient_checkpointing`` are applied here too.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import shutil
import threading
import time
import warnings
from dataclasses import dataclass, field, fields
from typing import Callable, Iterator, Sequence

import torch

from autopeft.errors import AutopeftError, StudyError
from autopeft.plan import PeftPlan
from autopeft.proxy import cache as fc
from autopeft.proxy.fidelity import Fidelity
from autopeft.proxy.graphs import StepGraphs, release
from autopeft.proxy.models import load_classifier
from autopeft.proxy.tasks import Example, TaskData, load_task


class TrialFailed(AutopeftError, RuntimeError):
    """Training could not produce a result (NaN loss, ...); the reason is stored on the trial."""


@dataclass(frozen=True)
class TrialMetrics:
    score: float  # validation metric: the objective
    test_score: float  # test-split metric, recorded for the report, never optimised
    metric: str  # "accuracy" or "macro_f1"
    trainable_params: int  # everything that trains: plan modules and task head
    module_params: int  # the plan's modules alone
    base_params: int  # the base model (with its head) before injection
    trainable_pct: float  # 100 * trainable_params / base_params
    step_time: float  # mean seconds per optimizer step (first step excluded: warm-up)
    peak_memory: float  # MiB: CUDA peak allocated, or peak RSS growth of the process on CPU
    train_loss: float  # mean loss over the last 10 % of steps
    wall_time: float  # seconds for the whole trial
    # The trained tensors (PEFT modules and head, on CPU), for the worker to store as the trial's artifact.
    # Not a metric: left out of to_dict (which goes into the database) and of comparisons.
    adapter_state: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "adapter_state"}

    def objective(self, name: str) -> float:
        return float(getattr(self, name))


# --------------------------------------------------------------------------- data
#: ``length_buckets``: training batches are sorted by length within chunks of this many batches (the mega-batch
#: factor of Hugging Face's ``LengthGroupedSampler``): enough to find similar lengths, few enough to stay random.
BUCKET_CHUNK = 50
#: Evaluation batches hold at most this many (padded) tokens and this many examples. On a GPU, few large batches
#: keep it busy. On a CPU, small ones are faster: a batch's activations then stay in the caches between one layer's
#: matmuls and the next (``benchmarks/eval_batches.py``: the quickstart's validation split at 1,024 tokens took
#: 0.6x the time it took at 16,384 on the 2-core machine of docs/benchmarks.md).
EVAL_TOKENS = 16384
EVAL_TOKENS_CPU = 1024
EVAL_MAX_BATCH = 512
#: ``compile``: compiled forms of the blocks' forward a worker keeps. Every block of every plan is a form of one
#: forward function (per adapter layout, in training and in evaluation, with or without the pooled cut), and torch
#: keeps 8 forms of a function by default: a worker spent them in its first trial and ran every later new form
#: uncompiled. Forms carry over from trial to trial (a plan whose blocks were seen compiles nothing); when the
#: worker nears this many, torch's compile caches are emptied before the next trial (256 is also torch's limit over
#: all of a function's forms).
COMPILE_FORMS = 256


@dataclass(frozen=True)
class _Encoded:
    """One tokenised split as tensors, built once per worker: batches are index lookups, not Python loops."""

    split: str  # "train", "validation" or "test": names the split in the frozen-layer cache
    input_ids: torch.Tensor  # (N, T_max) long, right-padded with the pad id
    token_type_ids: torch.Tensor | None  # (N, T_max) long, zero-padded
    lengths: torch.Tensor  # (N,) long: real tokens per example
    labels: torch.Tensor  # (N,) long
    pad_id: int = 0  # the tokenizer's padding id, for batches padded wider than the split

    def __len__(self) -> int:
        return len(self.labels)


def _encode(tokenizer, examples: Sequence[Example], max_length: int, split: str) -> _Encoded:
    texts = [e.text for e in examples]
    pairs = [e.text_pair for e in examples]
    enc = tokenizer(
        texts,
        pairs if any(p is not None for p in pairs) else None,
        truncation=True,
        max_length=max_length,
    )
    rows, tti = enc["input_ids"], enc.get("token_type_ids")
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    width = int(lengths.max()) if len(rows) else 1
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)  # (N, T_max)
    types = torch.zeros((len(rows), width), dtype=torch.long) if tti is not None else None
    for i, row in enumerate(rows):  # once per worker
        ids[i, : len(row)] = torch.tensor(row)
        if types is not None:
            types[i, : len(row)] = torch.tensor(tti[i])
    return _Encoded(split, ids, types, lengths, torch.tensor([e.label for e in examples], dtype=torch.long),
                    tokenizer.pad_token_id)


def _collate(data: _Encoded, idx: Sequence[int] | torch.Tensor, device: torch.device,
             width_to: Callable[[int], int] | None = None) -> dict[str, torch.Tensor]:
    """Rows ``idx`` padded to their longest member (dynamic padding), right-padded; ``width_to`` maps that width to
    the one to pad to (CUDA graphs: a multiple of :data:`~autopeft.proxy.graphs.GRAPH_WIDTH`)."""
    idx = torch.as_tensor(idx, dtype=torch.long)
    lengths = data.lengths[idx]  # (B,)
    width = int(lengths.max())
    if width_to is not None:
        width = width_to(width)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()  # (B, T)

    def cols(t: torch.Tensor, fill: int) -> torch.Tensor:  # (B, width): the split's columns, then fill
        rows = t[idx, :width]
        if rows.shape[1] < width:
            rows = torch.cat([rows, rows.new_full((len(idx), width - rows.shape[1]), fill)], dim=1)
        return rows

    batch = {"input_ids": cols(data.input_ids, data.pad_id), "attention_mask": mask, "labels": data.labels[idx]}
    if data.token_type_ids is not None:
        batch["token_type_ids"] = cols(data.token_type_ids, 0)
    return {k: v.to(device) for k, v in batch.items()}


def eval_tokens(device: torch.device) -> int:
    """The evaluation batches' token budget on ``device``."""
    return EVAL_TOKENS_CPU if device.type == "cpu" else EVAL_TOKENS


def _eval_batches(data: _Encoded, tokens: int) -> list[torch.Tensor]:
    """Example indices sorted by length, cut into batches of at most ``tokens`` padded tokens (a longer example
    gets a batch of its own)."""
    order = torch.argsort(data.lengths, stable=True).tolist()
    lengths = data.lengths.tolist()
    batches: list[list[int]] = []
    for i in order:  # ascending length: the newest member is the longest
        if batches and len(batches[-1]) < EVAL_MAX_BATCH and (len(batches[-1]) + 1) * lengths[i] <= tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return [torch.tensor(b, dtype=torch.long) for b in batches]


def bucket_by_length(batches: list[list[int]], lengths: Sequence[int], seed: int,
                     chunk: int = BUCKET_CHUNK) -> list[list[int]]:
    """The same examples in batches of similar length: every ``chunk`` consecutive batches are pooled, sorted by
    length, cut again and put in a seeded random order.

    Written here rather than taken from ``LengthGroupedSampler`` because it regroups a given example stream:
    each stretch of ``chunk`` batches keeps exactly its examples, so a trial sees the same examples as
    without buckets, and epochs stay where they were.
    """
    rng = random.Random(f"length-buckets-{seed}")
    out: list[list[int]] = []
    for start in range(0, len(batches), chunk):
        group = batches[start : start + chunk]
        pool = sorted((i for b in group for i in b), key=lambda i: lengths[i])  # stable: ties keep stream order
        cut, pos = [], 0
        for b in group:
            cut.append(pool[pos : pos + len(b)])
            pos += len(b)
        rng.shuffle(cut)
        out.extend(cut)
    return out


def score_predictions(pred: Sequence[int], gold: Sequence[int], metric: str, num_labels: int) -> float:
    """Accuracy, or macro-F1 over ``num_labels`` classes."""
    if metric == "accuracy":
        return sum(p == g for p, g in zip(pred, gold)) / max(len(gold), 1)
    f1s = []
    for c in range(num_labels):
        tp = sum(p == c and g == c for p, g in zip(pred, gold))
        fp = sum(p == c and g != c for p, g in zip(pred, gold))
        fn = sum(p != c and g == c for p, g in zip(pred, gold))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / num_labels


# --------------------------------------------------------------------------- memory
class _PeakMemory:
    """Peak memory of a block: CUDA's allocator peak, or on CPU the peak growth of the process RSS
    (sampled every 10 ms from /proc, since the CPU allocator keeps no peak counter)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mb = 0.0
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            return 0

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self._peak = max(self._peak, self._rss())

    def __enter__(self) -> "_PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._start = self._peak = self._rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, self._rss())
            self.peak_mb = (self._peak - self._start) / 2**20


# --------------------------------------------------------------------------- options
def _c_compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def cpu_bf16_native() -> bool | None:
    """Whether this x86 CPU multiplies bf16 in hardware (AVX512-BF16 or AMX); None where torch cannot tell (other
    architectures). Without it oneDNN emulates bf16 matmuls, and ``autocast="bf16"`` is likely slower than float32."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if not all(probes):
        return None
    try:
        return any(probe() for probe in probes)
    except RuntimeError:
        return None


def check_device(device: str | torch.device) -> torch.device:
    """``--device`` as a torch device this machine has, or an error naming the flag, the value and the fix (before
    any worker starts: a device torch cannot open fails every trial)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise StudyError(f"--device: {str(device)!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise StudyError(f"--device: {str(device)!r} asked, but torch {torch.__version__} sees no CUDA device; use "
                             "--device cpu, or install a CUDA build of torch on a machine with an NVIDIA GPU")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise StudyError(f"--device: {str(device)!r} asked, but torch sees {count} CUDA device(s); use one of "
                             + ", ".join(f"cuda:{i}" for i in range(count)))
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise StudyError(f"--device: {str(device)!r} asked, but torch sees no MPS device; use --device cpu")
    return dev


def check_options(fidelity: Fidelity, device: str | torch.device | None) -> None:
    """Refuse a device this machine lacks and throughput options the device cannot run, naming the flag and the
    fix (before any worker starts); warn about one it runs slowly. ``device`` None: no trial trains here (a study
    created for workers on other machines), so only what does not depend on the device is checked; each worker's
    trainer checks the rest on its own device."""
    if fidelity.pooled_only:
        from autopeft.proxy.models import load_config
        from autopeft.proxy.pooled import check_supported

        check_supported(load_config(fidelity.model))
    if device is None:
        return
    dev = check_device(device)
    if fidelity.autocast == "fp16" and dev.type != "cuda":
        raise StudyError(f"--autocast: fp16 needs a CUDA device, and trials run on {str(dev)!r}; use --autocast bf16 "
                         "(supported on CPU) or --autocast off, or train on a GPU (--device cuda)")
    if fidelity.autocast == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise StudyError("--autocast: this GPU has no bf16 support; use --autocast fp16 or --autocast off")
    if fidelity.autocast == "bf16" and dev.type == "cpu" and cpu_bf16_native() is False:
        warnings.warn("--autocast bf16: this CPU has no bf16 matrix instructions (AVX512-BF16 or AMX), so bf16 is "
                      "emulated and trials likely run slower than with --autocast off; drop --autocast unless you want "
                      "bf16 numerics", stacklevel=2)
    if fidelity.cuda_graphs and dev.type != "cuda":
        raise StudyError(f"--cuda-graphs: CUDA graphs need a CUDA device, and trials run on {str(dev)!r}; train on a "
                         "GPU (--device cuda), or make the study without --cuda-graphs")
    if fidelity.compile and dev.type == "cpu" and _c_compiler() is None:
        raise StudyError("--compile: torch.compile on CPU needs a C compiler, and none was found (cc, gcc, clang or "
                         "$CC); install one (e.g. apt-get install gcc) or drop --compile")


_compiled_at_reset = 0  # torch's count of compiled frames when this process last emptied its compile caches


def _room_for_compiled_forms(blocks: int) -> None:
    """Empty torch's compile caches when the next trial's ``blocks`` blocks might not fit under
    :data:`COMPILE_FORMS` (a trial compiles at most a few forms per block: training, evaluation, the lowest block's
    input without gradient). Counted from torch's frame counter, which also counts other compiled code: the caches
    are then emptied early, never late."""
    global _compiled_at_reset
    from torch._dynamo.utils import counters

    compiled = counters["frames"]["ok"]
    if compiled - _compiled_at_reset + 4 * blocks > COMPILE_FORMS:
        torch.compiler.reset()
        _compiled_at_reset = compiled


def _form_limit() -> dict:
    """``torch.compile``'s argument that lets a block keep :data:`COMPILE_FORMS` forms; torch builds without it (before
    the argument existed) get the same limit through dynamo's global setting."""
    import inspect

    if "recompile_limit" in inspect.signature(torch.compile).parameters:
        return {"recompile_limit": COMPILE_FORMS}
    from torch._dynamo import config as cfg

    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    setattr(cfg, name, max(getattr(cfg, name), COMPILE_FORMS))
    return {}


def _cache_mb_from_env() -> float:
    raw = os.environ.get("AUTOPEFT_FROZEN_CACHE_MB", str(fc.DEFAULT_CACHE_MB))
    try:
        mb = float(raw)
    except ValueError:
        mb = -1.0
    if mb < 0:
        raise StudyError(f"AUTOPEFT_FROZEN_CACHE_MB: {raw!r} is not a size in MiB; set it to a number such as 2048 "
                         "(0 keeps nothing cached) or unset it")
    return mb


# --------------------------------------------------------------------------- trainer
class ProxyTrainer:
    """Trains plans at one fidelity. Build once per worker; call :meth:`run` per trial.

    ``run`` is made of public steps so that other drivers (several plans at once) train exactly as it does:
    :meth:`build_model`, :meth:`configure`, :meth:`make_optimizer`, :meth:`train_mode`, :meth:`train_batches`,
    :meth:`step_loss`, :meth:`finish`. ``cache_mb`` and ``cache_dir`` bound the frozen-layer cache (RAM budget,
    optional folder shared by workers; defaults from ``AUTOPEFT_FROZEN_CACHE_MB`` and ``AUTOPEFT_FROZEN_CACHE_DIR``);
    ``use_cache=False`` keeps ``frozen_cache``'s meaning (no dropout below the plan) but computes every layer.
    """

    #: AdamW as torch's fused kernel (``fused=True``) on the devices that have one. torch's defaults issue one to ten
    #: operations per parameter tensor every step (a plan has up to a few hundred tensors), the fused kernel a handful
    #: in all; on a GPU a proxy's step is bound by the host issuing operations (docs/benchmarks.md, "Operations per
    #: training step"). Same update rule, different float rounding. ``False`` restores torch's default (benchmarks).
    fused_adamw: bool = True
    #: Under ``pooled_only``, cut the last block's queries to the first token too, not only what follows its
    #: attention sub-layer (:func:`autopeft.proxy.pooled.cut_last_block`). ``False``: the cut after the attention
    #: sub-layer alone (benchmarks).
    pooled_queries: bool = True
    #: On CPU, draw dropout masks with :func:`autopeft.kernels.dropout` (16-bit integer masks, a third of the cost of
    #: torch's float Bernoulli mask; another random stream) in the model's dropout modules and attention weights
    #: (:func:`autopeft.peft.prefix_attention.use_fast_dropout`). ``False``: torch's dropout (benchmarks).
    fast_dropout: bool = True
    #: Let one pass that computes frozen blocks for the cache offer it the states entering the blocks in between too
    #: (:meth:`hidden_states`). ``False``: keep only the states asked for (benchmarks).
    cache_between: bool = True
    #: How a step is recorded under the fidelity's ``cuda_graphs`` (None: :func:`autopeft.proxy.graphs.capture_cuda`).
    #: The tests give an eager stand-in: the CPU twin of the recorded step.
    graph_capture = None

    def __init__(self, fidelity: Fidelity, device: str = "cpu", task: TaskData | None = None, *,
                 cache_mb: float | None = None, cache_dir: str | None = None, use_cache: bool = True):
        check_options(fidelity, device)
        self.fidelity = fidelity
        self.device = torch.device(device)
        self.task = task or load_task(fidelity.task, seed=fidelity.seed)
        self.num_labels = len(self.task.label_names)
        base, self.tokenizer = load_classifier(fidelity.model, self.num_labels, fidelity.seed)
        self._base = base.eval()
        self.base_params = sum(p.numel() for p in base.parameters())
        rng = random.Random(fidelity.seed)
        train = list(self.task.train)
        rng.shuffle(train)
        self.train_data = _encode(self.tokenizer, train[: fidelity.train_examples], fidelity.max_length, "train")
        self.eval_data = _encode(self.tokenizer, self.task.validation[: fidelity.eval_examples], fidelity.max_length,
                                 "validation")
        self.test_data = _encode(self.tokenizer, self.task.test[: fidelity.eval_examples], fidelity.max_length, "test")
        self.use_cache = use_cache
        mb = cache_mb if cache_mb is not None else _cache_mb_from_env()
        self.cache = fc.FrozenCache(int(mb * 2**20), cache_dir or os.environ.get("AUTOPEFT_FROZEN_CACHE_DIR") or None)
        self._cache_id: dict | None = None  # what cached states depend on, for their file names (made on first use)

    def build_model(self, plan: PeftPlan) -> torch.nn.Module:
        """A fresh copy of the base model with ``plan`` injected (base frozen, head trainable)."""
        from autopeft.peft import apply_plan

        model = copy.deepcopy(self._base)
        apply_plan(model, plan, seed=self.fidelity.seed)
        return model.to(self.device)

    # ------------------------------------------------------------------ options
    def autocast(self) -> contextlib.AbstractContextManager:
        """The fidelity's mixed-precision context (a no-op when ``autocast`` is off)."""
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.fidelity.autocast)
        if not dtype:
            return contextlib.nullcontext()
        # A recorded graph must cast the weights itself on every replay, not read autocast's per-forward cache.
        return torch.autocast(self.device.type, dtype=dtype, cache_enabled=not self.fidelity.cuda_graphs)

    def frozen_layers(self, plan: PeftPlan) -> int:
        """Blocks that run without dropout below ``plan``'s lowest module (0 unless ``frozen_cache``)."""
        return fc.first_adapted_layer(plan) if self.fidelity.frozen_cache else 0

    def cached_layers(self, plan: PeftPlan) -> int:
        """Blocks :meth:`run` feeds from the cache for ``plan`` (0: none): the frozen blocks, when the three
        splits' states fit the cache's RAM budget."""
        start = self.frozen_layers(plan) if self.use_cache else 0
        if start < 1:
            return 0
        tokens = sum(int(d.lengths.sum()) + 1 for d in (self.train_data, self.eval_data, self.test_data))
        itemsize = torch.finfo(getattr(torch, self.fidelity.frozen_cache_dtype)).bits // 8
        return start if tokens * self._base.config.hidden_size * itemsize <= self.cache.budget else 0

    def configure(self, model: torch.nn.Module, start_layer: int = 0) -> torch.nn.Module:
        """Apply the fidelity's options to a built model, in place: feed it from the cache at ``start_layer``
        (its batches then come from ``train_batches(start_layer)``), the last block cut to the pooled token,
        gradient checkpointing, compile."""
        from autopeft.peft.arch import get_arch
        from autopeft.peft.prefix_attention import use_fast_dropout
        from autopeft.proxy.pooled import cut_last_block

        f = self.fidelity
        if self.fast_dropout and self.device.type == "cpu" and not f.compile:
            use_fast_dropout(model)  # inductor fuses torch's own dropout
        if start_layer:
            fc.install_feeder(model, start_layer)
        elif f.frozen_cache and (frozen := self.frozen_layers(model.autopeft_plan)):
            fc.zero_padding_below(model, frozen)  # what the cache would feed, computed
        if f.pooled_only:
            cut_last_block(model, self.pooled_queries)  # not when the cache feeds past the last block, or experts follow the cut
        if f.gradient_checkpointing:
            # Non-reentrant checkpointing: the frozen base's inputs need no gradient, and dropout masks are replayed.
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        if f.compile:
            # Block by block (as large-model trainers do): the blocks are where the time goes, and the model's own
            # Python around them (masks, pooling, the feeder) stays eager.
            blocks = [b for b in get_arch(model).layers(model) if not isinstance(b, (fc.Passthrough, fc.Feeder))]
            _room_for_compiled_forms(len(blocks))
            for block in blocks:
                block.compile(dynamic=True, **_form_limit())
        return model

    def train_mode(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model.train()``, then no dropout below the plan's lowest module under ``frozen_cache``."""
        model.train()
        if self.fidelity.frozen_cache:
            fc.freeze_lower(model, self.frozen_layers(model.autopeft_plan))
        return model

    # ------------------------------------------------------------------ frozen-layer cache
    def _disk_key(self, split: str, start: int) -> str | None:
        if self.cache.directory is None:
            return None
        if self._cache_id is None:
            f = self.fidelity
            self._cache_id = {"weights": fc.weights_digest(self._base), "tokens": [
                int(d.input_ids.sum()) for d in (self.train_data, self.eval_data, self.test_data)],
                **{k: getattr(f, k) for k in ("model", "task", "seed", "train_examples", "eval_examples",
                                              "max_length", "frozen_cache_dtype", "autocast")}}
        return fc.disk_key({**self._cache_id, "split": split, "start": start})

    def hidden_states(self, data: _Encoded, start: int) -> fc.HiddenStates:
        """The states entering block ``start`` for every example of ``data``: from the cache, or computed (from the
        highest cached block below ``start`` when there is one) and cached. The same pass offers the cache the
        states entering the blocks in between, where they fit beside what it keeps, so a later plan starting lower
        does not compute those blocks again."""
        key = (data.split, start)
        entry = self.cache.get(key, self._disk_key(data.split, start))
        if entry is not None:
            return entry
        below = max((k[1] for k in self.cache.keys() if k[0] == data.split and k[1] < start), default=0)
        lower = self.cache.get((data.split, below)) if below else None
        between = [d for d in range(below + 1, start) if (data.split, d) not in self.cache and self.cache_between]
        model = self._base if self.device.type == "cpu" else copy.deepcopy(self._base).to(self.device)
        replaced = fc.install_feeder(model, below) if lower is not None else []
        groups = _eval_batches(data, eval_tokens(self.device))
        try:
            batches = ((self._inputs(data, idx), lower.gather(idx, int(data.lengths[idx].max())).to(self.device)
                        if lower is not None else None) for idx in groups)
            states = fc.capture(model, [*between, start], batches, self.autocast())
        finally:
            if replaced:
                fc.restore(model, replaced)
        order = torch.cat(groups).tolist()  # capture() returns examples in batch order; put them back in data order
        dtype = getattr(torch, self.fidelity.frozen_cache_dtype)

        def packed(per_batch: list[torch.Tensor]) -> fc.HiddenStates:
            per_example: list[torch.Tensor] = [torch.empty(0)] * len(order)
            for i, h in zip(order, per_batch):
                per_example[i] = h
            return fc.pack_states(per_example, dtype)

        entry = packed(states.pop(start))
        self.cache.put(key, entry, self._disk_key(data.split, start))
        for d in between:
            self.cache.offer((data.split, d), packed(states.pop(d)), self._disk_key(data.split, d))
        return entry

    def _inputs(self, data: _Encoded, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Model inputs of rows ``idx`` (no labels), on the device."""
        batch = _collate(data, idx, self.device)
        batch.pop("labels")
        return batch

    # ------------------------------------------------------------------ training
    def _batches(self, steps: int, batch_size: int, seed: int) -> list[list[int]]:
        """Seeded epochs over the training subset, ``steps`` batches in all (length-bucketed when asked)."""
        rng = random.Random(seed)
        n = len(self.train_data.labels)
        order: list[int] = []
        while len(order) < steps * batch_size:
            epoch = list(range(n))
            rng.shuffle(epoch)
            order.extend(epoch)
        batches = [order[s * batch_size : (s + 1) * batch_size] for s in range(steps)]
        if self.fidelity.length_buckets:
            batches = bucket_by_length(batches, self.train_data.lengths.tolist(), seed)
        return batches

    def train_batches(self, start_layer: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """The fidelity's ``steps`` training batches, in order, collated on the device.

        With ``start_layer`` > 0 each batch also holds the cached states entering that block (``frozen_hidden``),
        for a model configured with the same ``start_layer``.
        """
        from autopeft.proxy.graphs import padded_width

        f = self.fidelity
        states = self.hidden_states(self.train_data, start_layer) if start_layer else None
        # one recorded graph per width; never past max_length (the model's positions may end there)
        width_to = (lambda w: max(w, min(padded_width(w), f.max_length))) if f.cuda_graphs else None
        for idx in self._batches(f.steps, f.batch_size, f.seed):
            batch = _collate(self.train_data, idx, self.device, width_to)
            if states is not None:
                width = batch["input_ids"].shape[1]
                batch[fc.HIDDEN_KEY] = states.gather(torch.as_tensor(idx), width).to(self.device)  # (B, T, C)
            yield batch

    def make_optimizer(self, model: torch.nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """AdamW over the trainable parameters, with linear warm-up then linear decay to 0 over ``steps``."""
        f = self.fidelity
        params = [p for p in model.parameters() if p.requires_grad]
        fused = {"fused": True} if self.fused_adamw and self.device.type in ("cpu", "cuda") else {}
        opt = torch.optim.AdamW(params, lr=f.learning_rate, weight_decay=f.weight_decay, **fused)
        warmup = max(1, int(f.warmup_ratio * f.steps))

        def lr_lambda(step: int) -> float:  # linear warm-up, then linear decay to 0
            if step < warmup:
                return (step + 1) / warmup
            return max(0.0, (f.steps - step) / max(1, f.steps - warmup))

        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)

    def step_graphs(self, model: torch.nn.Module, loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor]):
        """Under the fidelity's ``cuda_graphs``, ``loss_fn`` recorded per batch shape (a
        :class:`~autopeft.proxy.graphs.StepGraphs` over ``model``'s parameters); otherwise ``loss_fn`` itself.
        Built once the model is configured and in training mode: a recording keeps the modes it saw."""
        if not self.fidelity.cuda_graphs:
            return loss_fn
        return StepGraphs(model, loss_fn, capture=self.graph_capture)

    def step_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The task loss of one batch plus the weighted auxiliary (load-balancing) loss, a scalar."""
        from autopeft.peft import auxiliary_loss

        inputs = {k: v for k, v in batch.items() if k != fc.HIDDEN_KEY}
        with fc.fed(model, batch.get(fc.HIDDEN_KEY), inputs["attention_mask"]), self.autocast():
            loss = model(**inputs).loss
            aux = auxiliary_loss(model)
            if aux is not None and self.fidelity.aux_loss_weight > 0:
                loss = loss + self.fidelity.aux_loss_weight * aux
        return loss.float()

    @torch.inference_mode()
    def evaluate(self, model: torch.nn.Module, data: _Encoded, batch_size: int | None = None,
                 tokens: int | None = None) -> float:
        """Score ``model`` on ``data``; batches are length-sorted, of up to ``tokens`` tokens (default:
        :func:`eval_tokens` of the device), or of ``batch_size`` examples when given. Predictions are put back in
        the data's order."""
        model.eval()
        start = getattr(model, fc.START_ATTR, 0)
        states = self.hidden_states(data, start) if start else None
        if batch_size:
            order = torch.argsort(data.lengths, stable=True)
            batches = list(order.split(batch_size))
        else:
            batches = _eval_batches(data, tokens or eval_tokens(self.device))
        pred = torch.zeros(len(data), dtype=torch.long)
        for idx in batches:
            inputs = self._inputs(data, idx)
            hidden = None
            if states is not None:
                hidden = states.gather(idx, inputs["input_ids"].shape[1]).to(self.device)  # (B, T, C)
            with fc.fed(model, hidden, inputs["attention_mask"]), self.autocast():
                logits = model(**inputs).logits  # (B, num_labels)
            pred[idx] = logits.argmax(-1).cpu()
        return score_predictions(pred.tolist(), data.labels.tolist(), self.task.metric, self.num_labels)

    def finish(self, model: torch.nn.Module, plan: PeftPlan, losses: Sequence[float], step_times: Sequence[float],
               peak_mb: float, t0: float) -> TrialMetrics:
        """Score the trained ``model`` on the validation and test splits and build its metrics record.

        ``losses`` and ``step_times`` are per step; ``t0`` is the trial's ``time.perf_counter()`` start.
        """
        from autopeft.peft import adapter_state_dict, count_parameters, plan_parameter_count

        trainable, _ = count_parameters(model)
        score = self.evaluate(model, self.eval_data)
        test_score = self.evaluate(model, self.test_data)
        tail = losses[-max(1, len(losses) // 10) :]
        timed = step_times[1:] or step_times
        return TrialMetrics(
            score=score,
            test_score=test_score,
            metric=self.task.metric,
            trainable_params=trainable,
            module_params=plan_parameter_count(plan, model.config),
            base_params=self.base_params,
            trainable_pct=100.0 * trainable / self.base_params,
            step_time=sum(timed) / len(timed),
            peak_memory=peak_mb,
            train_loss=sum(tail) / len(tail),
            wall_time=time.perf_counter() - t0,
            adapter_state={name: t.to("cpu") for name, t in adapter_state_dict(model).items()},
        )

    def run(self, plan: PeftPlan, on_step: Callable[[int, float], None] | None = None) -> TrialMetrics:
        """Train ``plan`` and return its metrics; raises :class:`TrialFailed` on a non-finite loss."""
        f = self.fidelity
        t0 = time.perf_counter()
        start = self.cached_layers(plan)
        if start:  # the first trial at this depth computes the states (counted in its wall time)
            for data in (self.train_data, self.eval_data, self.test_data):
                self.hidden_states(data, start)
        torch.manual_seed(f.seed)
        model = self.configure(self.build_model(plan), start)
        opt, sched = self.make_optimizer(model)
        scaler = torch.amp.GradScaler(self.device.type) if f.autocast == "fp16" else None
        losses: list[float] = []
        step_times: list[float] = []
        with _PeakMemory(self.device) as mem:
            self.train_mode(model)
            loss_of = self.step_graphs(model, lambda batch: self.step_loss(model, batch))
            batches = self.train_batches(start)
            try:
                for step in range(f.steps):
                    ts = time.perf_counter()
                    batch = next(batches)
                    loss = loss_of(batch)
                    value = loss.item()  # the step's one device sync
                    if not math.isfinite(value):
                        raise TrialFailed(f"loss became {value} at step {step}; the plan diverged at lr "
                                          f"{f.learning_rate}")
                    opt.zero_grad(set_to_none=True)
                    if scaler is not None:  # fp16: scaled loss, steps skipped on overflow
                        scaler.scale(loss).backward()
                        scaler.step(opt)
                        scaler.update()
                    else:
                        loss.backward()
                        opt.step()
                    sched.step()
                    losses.append(value)
                    step_times.append(time.perf_counter() - ts)
                    if on_step is not None:
                        on_step(step, losses[-1])
            finally:
                loss = None  # the last step's loss holds its replay node, and through it the recordings
                release(loss_of)
        return self.finish(model, plan, losses, step_times, mem.peak_mb, t0)
