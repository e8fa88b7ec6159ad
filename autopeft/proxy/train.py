"""The proxy fine-tune: a short, seeded training run of one plan at one fidelity, and its metrics.

:class:`ProxyTrainer` holds what trials of one fidelity share (base weights, tokenizer, tokenised data)
so a worker loads them once; :meth:`ProxyTrainer.run` trains one plan on a fresh copy of the base model:

    inject plan -> AdamW (linear warm-up, linear decay) for ``steps`` batches -> score the validation
    split (the ``score`` objective) and the test split (recorded, never optimised)
"""

from __future__ import annotations

import copy
import os
import random
import threading
import time
from dataclasses import dataclass, field, fields
from typing import Callable, Iterator, Sequence

import torch

from autopeft.errors import AutopeftError
from autopeft.plan import PeftPlan
from autopeft.proxy.fidelity import Fidelity
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
@dataclass(frozen=True)
class _Encoded:
    input_ids: tuple[tuple[int, ...], ...]
    token_type_ids: tuple[tuple[int, ...], ...] | None
    labels: tuple[int, ...]


def _encode(tokenizer, examples: Sequence[Example], max_length: int) -> _Encoded:
    texts = [e.text for e in examples]
    pairs = [e.text_pair for e in examples]
    enc = tokenizer(
        texts,
        pairs if any(p is not None for p in pairs) else None,
        truncation=True,
        max_length=max_length,
    )
    tti = enc.get("token_type_ids")
    return _Encoded(
        tuple(map(tuple, enc["input_ids"])),
        tuple(map(tuple, tti)) if tti is not None else None,
        tuple(e.label for e in examples),
    )


def _collate(data: _Encoded, idx: Sequence[int], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest member (dynamic padding), right-padded."""
    width = max(len(data.input_ids[i]) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(idx), width), dtype=torch.long)  # (B, T)
    tti = torch.zeros((len(idx), width), dtype=torch.long) if data.token_type_ids is not None else None
    for row, i in enumerate(idx):
        n = len(data.input_ids[i])
        ids[row, :n] = torch.tensor(data.input_ids[i])
        mask[row, :n] = 1
        if tti is not None:
            tti[row, :n] = torch.tensor(data.token_type_ids[i])
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([data.labels[i] for i in idx])}
    if tti is not None:
        batch["token_type_ids"] = tti
    return {k: v.to(device) for k, v in batch.items()}


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


# --------------------------------------------------------------------------- trainer
class ProxyTrainer:
    """Trains plans at one fidelity. Build once per worker; call :meth:`run` per trial."""

    def __init__(self, fidelity: Fidelity, device: str = "cpu", task: TaskData | None = None):
        self.fidelity = fidelity
        self.device = torch.device(device)
        self.task = task or load_task(fidelity.task, seed=fidelity.seed)
        self.num_labels = len(self.task.label_names)
        base, self.tokenizer = load_classifier(fidelity.model, self.num_labels)
        self._base = base.eval()
        self.base_params = sum(p.numel() for p in base.parameters())
        rng = random.Random(fidelity.seed)
        train = list(self.task.train)
        rng.shuffle(train)
        self.train_data = _encode(self.tokenizer, train[: fidelity.train_examples], fidelity.max_length)
        self.eval_data = _encode(self.tokenizer, self.task.validation[: fidelity.eval_examples], fidelity.max_length)
        self.test_data = _encode(self.tokenizer, self.task.test[: fidelity.eval_examples], fidelity.max_length)

    def build_model(self, plan: PeftPlan) -> torch.nn.Module:
        """A fresh copy of the base model with ``plan`` injected (base frozen, head trainable)."""
        from autopeft.peft import apply_plan

        model = copy.deepcopy(self._base)
        apply_plan(model, plan, seed=self.fidelity.seed)
        return model.to(self.device)

    def _batches(self, steps: int, batch_size: int, seed: int) -> list[list[int]]:
        """Seeded epochs over the training subset, ``steps`` batches in all."""
        rng = random.Random(seed)
        n = len(self.train_data.labels)
        order: list[int] = []
        while len(order) < steps * batch_size:
            epoch = list(range(n))
            rng.shuffle(epoch)
            order.extend(epoch)
        return [order[s * batch_size : (s + 1) * batch_size] for s in range(steps)]

    def train_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """The fidelity's ``steps`` training batches, in order, collated on the device."""
        f = self.fidelity
        pad = self.tokenizer.pad_token_id
        for idx in self._batches(f.steps, f.batch_size, f.seed):
            yield _collate(self.train_data, idx, pad, self.device)

    def make_optimizer(self, model: torch.nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """AdamW over the trainable parameters, with linear warm-up then linear decay to 0 over ``steps``."""
        f = self.fidelity
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=f.learning_rate, weight_decay=f.weight_decay)
        warmup = max(1, int(f.warmup_ratio * f.steps))

        def lr_lambda(step: int) -> float:  # linear warm-up, then linear decay to 0
            if step < warmup:
                return (step + 1) / warmup
            return max(0.0, (f.steps - step) / max(1, f.steps - warmup))

        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)

    def step_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The task loss of one batch plus the weighted auxiliary (load-balancing) loss, a scalar."""
        from autopeft.peft import auxiliary_loss

        loss = model(**batch).loss
        aux = auxiliary_loss(model)
        if aux is not None and self.fidelity.aux_loss_weight > 0:
            loss = loss + self.fidelity.aux_loss_weight * aux
        return loss

    @torch.inference_mode()
    def evaluate(self, model: torch.nn.Module, data: _Encoded, batch_size: int = 64) -> float:
        model.eval()
        pad = self.tokenizer.pad_token_id
        # Sorting by length keeps padding small; predictions are put back in the original order.
        order = sorted(range(len(data.labels)), key=lambda i: len(data.input_ids[i]))
        pred = [0] * len(order)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = _collate(data, idx, pad, self.device)
            batch.pop("labels")
            logits = model(**batch).logits  # (B, num_labels)
            for i, p in zip(idx, logits.argmax(-1).tolist()):
                pred[i] = p
        return score_predictions(pred, data.labels, self.task.metric, self.num_labels)

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
        torch.manual_seed(f.seed)
        model = self.build_model(plan)
        opt, sched = self.make_optimizer(model)
        losses: list[float] = []
        step_times: list[float] = []
        with _PeakMemory(self.device) as mem:
            model.train()
            batches = self.train_batches()
            for step in range(f.steps):
                ts = time.perf_counter()
                batch = next(batches)
                loss = self.step_loss(model, batch)
                if not torch.isfinite(loss):
                    raise TrialFailed(f"loss became {loss.item()} at step {step}; the plan diverged at lr {f.learning_rate}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(loss.item())
                step_times.append(time.perf_counter() - ts)
                if on_step is not None:
                    on_step(step, losses[-1])
        return self.finish(model, plan, losses, step_times, mem.peak_mb, t0)
