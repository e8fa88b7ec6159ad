"""Several trials at once on one frozen base model (the worker's ``--pack K``).

Trials of one study share the fidelity, so they share the base model, the tokenised data and -- because the
data order is seeded by the fidelity -- every training batch. :class:`PackedTrainer` trains K plans together:

* one copy of the base weights: each trial's model is a copy of the base whose frozen tensors *are* the base's
  (``copy.deepcopy`` with those tensors in its memo), plus the trial's own PEFT modules and task head;
* one batched forward per step: a *packed* model, the base again with every module that differs between trials
  (an adapted linear, a prefix attention, the head) replaced by a :class:`RowSplit` that sends trial k's rows
  (rows ``k*B .. (k+1)*B`` of the stacked batch) through trial k's module. Everything frozen and shared runs
  once on all K*B rows: fewer, larger kernels, which is where a GPU gains (in the style of S-LoRA/Punica,
  applied to training);
* one backward of the sum of the trials' losses: no parameter is shared between trials, so each trial's
  gradient is exactly what its own loss gives it, and each trial keeps its own optimizer and schedule.

What differs from training a plan alone is only the random stream of dropout (masks are drawn for K*B rows at
once): results agree within seeded noise, and exactly (up to float summation order) without dropout -- tested.
A trial whose loss turns non-finite fails alone; the others go on without it. Step time is measured for the
whole pack and recorded per trial as its share (pack step time / trials in the pack).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import time
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from autopeft.errors import AutopeftError
from autopeft.plan import PeftPlan
from autopeft.proxy.fidelity import Fidelity
from autopeft.proxy import cache as fc
from autopeft.proxy.graphs import release
from autopeft.proxy.train import ProxyTrainer, TrialFailed, TrialMetrics, _PeakMemory

#: keyword arguments of a packed module that carry the batch dimension (and are split with the rows)
_BATCHED_KWARGS = ("hidden_states", "attention_mask", "encoder_hidden_states", "encoder_attention_mask")
#: objectives a packed run cannot measure per trial: the pack shares every step's time and memory
PACK_DISTORTED_OBJECTIVES = ("step_time", "peak_memory")


class PackError(AutopeftError, ValueError):
    """The worker's ``--pack`` option cannot be used as asked."""


#: fidelity options (field: value that means "off") a pack does not apply, so a fidelity that turns one on is refused
#: rather than silently trained otherwise (the others -- length buckets, frozen-layer cache, autocast, gradient
#: checkpointing -- apply to the pack as to one trial)
PACK_UNSUPPORTED_OPTIONS = {"compile": False}


def check_pack(k: int, objectives: Sequence[str], fidelity: Fidelity | None = None) -> None:
    """Refuse ``--pack k`` for a bad ``k``, for a study whose objectives a pack would distort, or for a fidelity
    option packed training does not apply."""
    if k < 1:
        raise PackError(f"--pack: must be at least 1 (got {k}); use 1 to train one trial at a time")
    if k == 1:
        return
    distorted = [o for o in objectives if o in PACK_DISTORTED_OBJECTIVES]
    if distorted:
        raise PackError(
            f"--pack: the study optimises {', '.join(distorted)}, which trials trained together cannot measure one "
            f"by one (got --pack {k}); run this study's workers with --pack 1")
    if fidelity is not None and fidelity.objective == "proxy":
        on = [name for name, off in PACK_UNSUPPORTED_OPTIONS.items() if getattr(fidelity, name, off) != off]
        if on:
            flags = ", ".join(f"--{n.replace('_', '-')} ({getattr(fidelity, n)!r})" for n in on)
            raise PackError(f"--pack: the study's fidelity uses {flags}, which packed training does not apply "
                            f"(got --pack {k}); run this study's workers with --pack 1")


def pack_note(k: int, device: str) -> str | None:
    """What to tell a user who packs trials: on a CPU packing measured slower than one trial at a time, and on a GPU
    several worker processes measured faster than one packed worker."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):  # not a device name: the trainer refuses it, naming the flag
        return None
    if k > 1 and kind == "cuda":
        return (f"--pack {k} on a GPU: a small proxy's step is bound by the host issuing its many small kernels. A "
                "study made with --cuda-graphs replays each step from a recording, and packs on top of that "
                "(docs/benchmarks.md, \"GPU check, third run\": 7.9-8.2x the trials per hour of one at a time); "
                "without graphs, several worker processes on one GPU measured more trials per hour than one worker "
                "packing as many trials. Where the base model fits on the card several times, add processes: "
                "`autopeft worker --processes N` or `autopeft run --workers N`.")
    if k > 1 and kind == "cpu":
        return (f"--pack {k} on a CPU: trials trained together do the same arithmetic as one at a time, and the "
                "frozen-layer cache saves less (a pack runs from its lowest plan's block), so packing measured slower "
                "than one trial at a time on CPU (docs/benchmarks.md, \"Trials per hour\"). Use --pack 1 on CPU "
                "workers; packing pays on GPUs.")
    return None


class RowSplit(nn.Module):
    """Trial k's module applied to trial k's rows: inputs are K equal blocks along the batch dimension."""

    def __init__(self, modules: Sequence[nn.Module]):
        super().__init__()
        self.parts = nn.ModuleList(modules)
        inner = modules[0].block if isinstance(modules[0], FrozenView) else modules[0]
        # Names of the positional parameters, so a batched argument passed by position (a BERT block's mask) is split.
        params = list(inspect.signature(inner.forward).parameters.values())
        self._positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        k = len(self.parts)
        rows = args[0].shape[0] if args else kwargs["hidden_states"].shape[0]

        def split(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows:
                return value.chunk(k, dim=0)
            return [value] * k

        names = self._positional + [""] * max(0, len(args) - len(self._positional))
        arg_parts = [split(a) if i == 0 or names[i] in _BATCHED_KWARGS else [a] * k for i, a in enumerate(args)]
        kw_parts = {n: split(v) if n in _BATCHED_KWARGS else [v] * k for n, v in kwargs.items()}
        outs = [part(*[a[i] for a in arg_parts], **{n: v[i] for n, v in kw_parts.items()})
                for i, part in enumerate(self.parts)]
        return _concat(outs, rows // k)


def _concat(outs: list[Any], block: int) -> Any:
    """Stack the trials' outputs back along the batch dimension (tuples element-wise; non-batch values: the first)."""
    first = outs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outs, dim=0) if first.dim() > 0 and first.shape[0] == block else first
    if isinstance(first, tuple):
        return tuple(_concat([o[i] for o in outs], block) for i in range(len(first)))
    return first


class FrozenView(nn.Module):
    """A trial's view of a block below its plan under the frozen-layer cache: the block without dropout, and, for
    the last such block, zeros at the padding positions it passes on -- what the trial computes alone
    (:mod:`autopeft.proxy.cache`)."""

    def __init__(self, block: nn.Module, mask: "_Mask", pad: bool):
        super().__init__()
        self.block = block
        self.mask = mask
        self.pad = pad

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        was = self.block.training
        self.block.eval()
        try:
            out = self.block(*args, **kwargs)
        finally:
            self.block.train(was)
        if not self.pad:
            return out
        keep = self.mask.value[..., None]  # (B, T, 1): this trial's rows are the batch itself
        if isinstance(out, tuple):
            return (out[0] * keep.to(out[0].dtype), *out[1:])
        return out * keep.to(out.dtype)


class _Mask:
    """The running batch's (B, T) attention mask, for the :class:`FrozenView` that zeroes padding."""

    value: torch.Tensor | None = None


def _trial_paths(model: nn.Module, shared: set[int]) -> set[str]:
    """Paths of the modules a plan changed: those holding tensors of their own, or a prefix attention."""
    from autopeft.peft.inject import SHARED_ATTR
    from autopeft.peft.modules import AdaptedLinear
    from autopeft.peft.prefix_attention import PREFIX_ATTR

    paths = set()
    for name, module in model.named_modules():
        if SHARED_ATTR in name.split("."):
            continue  # modules shared by a plan's layers (Compacter's rules): called by those, not by the base
        own = [p for p in module.parameters(recurse=False) if id(p) not in shared]
        if name and (own or isinstance(module, AdaptedLinear) or hasattr(module, PREFIX_ATTR)):
            paths.add(name)
    return paths


def _outermost(paths: set[str]) -> list[str]:
    """Drop every path that lies inside another path of the set."""
    return sorted(p for p in paths if not any(p.startswith(q + ".") for q in paths if q != p))


class PackedTrainer:
    """Trains up to ``k`` plans at a time with ``trainer``'s fidelity, data and base model."""

    def __init__(self, trainer: ProxyTrainer, k: int):
        check_pack(k, (), trainer.fidelity)
        self.trainer = trainer
        self.k = k
        base = trainer._base
        from autopeft.peft import head_parameters

        head = {id(p) for p in head_parameters(base)}
        # Frozen tensors every trial shares; the head is trained, so each trial gets its own copy of it.
        self._shared = {id(t): t for t in [*base.parameters(), *base.buffers()] if id(t) not in head}
        self._mask = _Mask()

    def _copy_base(self) -> nn.Module:
        return copy.deepcopy(self.trainer._base, memo=dict(self._shared))

    def build_model(self, plan: PeftPlan) -> nn.Module:
        """``plan`` injected into a copy of the base that shares the base's frozen tensors."""
        from autopeft.peft import apply_plan

        model = apply_plan(self._copy_base(), plan, seed=self.trainer.fidelity.seed)
        return model.to(self.trainer.device)

    def packed_model(self, models: Sequence[nn.Module], start: int | None = None) -> tuple[nn.Module, int]:
        """The base once more, with every module a plan changed replaced by a :class:`RowSplit` over ``models``,
        configured with the fidelity's options; and the block it is fed from (0: none).

        Under ``frozen_cache`` the pack is fed from the cache at the lowest of its trials' plans (when it fits), and
        every block that lies below some trial's plan is split too, that trial's part being a :class:`FrozenView`.
        ``start`` keeps the block a pack already runs from (when it is rebuilt without a failed trial).
        """
        from autopeft.peft.arch import get_arch
        from autopeft.peft.prefix_attention import PREFIX_ATTR, enable_prefix_attention

        tr = self.trainer
        plans = [m.autopeft_plan for m in models]
        depths = [tr.frozen_layers(p) for p in plans]  # blocks below each plan that run as if frozen (0: none)
        lowest = plans[depths.index(min(depths))]
        start = tr.cached_layers(lowest) if start is None else start
        shared = set(self._shared)
        paths = set().union(*(_trial_paths(m, shared) for m in models))
        packed = self._copy_base().to(tr.device)
        names = {id(mod): name for name, mod in packed.named_modules()}
        blocks = [names[id(b)] for b in get_arch(packed).layers(packed)]
        frozen_blocks = [b for b in range(start, max(depths)) if any(b < d for d in depths)]
        paths |= {blocks[b] for b in frozen_blocks}
        for path in _outermost(paths):
            parts = [m.get_submodule(path) for m in models]
            if path in blocks and blocks.index(path) in frozen_blocks:
                b = blocks.index(path)
                parts = [FrozenView(part, self._mask, pad=b == d - 1) if b < d else part for part, d in zip(parts, depths)]
            packed.set_submodule(path, RowSplit(parts))
        if hasattr(packed.config, "use_cache"):
            packed.config.use_cache = False  # a key/value cache would be shared by the trials' attentions
        if any(hasattr(m, PREFIX_ATTR) for model in models for m in model.modules()):
            enable_prefix_attention(packed)  # the mask builder must leave room for prefix columns
        # The lowest plan stands for the pack where the fidelity's options read a plan: the cache feeds (or, when it
        # does not fit, padding is zeroed) below it, and the blocks below it run without dropout for every trial.
        packed.autopeft_plan = lowest
        return tr.train_mode(tr.configure(packed, start)), start

    def run(self, plan: PeftPlan, on_step: Callable[[int, float], None] | None = None) -> TrialMetrics:
        """One plan alone: exactly :meth:`ProxyTrainer.run`."""
        return self.trainer.run(plan, on_step)

    def run_many(self, plans: Sequence[PeftPlan], on_step: Callable[[int, float], None] | None = None,
                 ) -> list[TrialMetrics | TrialFailed]:
        """Train ``plans`` ``k`` at a time; one result per plan, in order (a :class:`TrialFailed` for a failed one)."""
        results: list[TrialMetrics | TrialFailed] = []
        for start in range(0, len(plans), self.k):
            results.extend(self._run_pack(list(plans[start : start + self.k]), on_step))
        return results

    def _losses(self, packed: nn.Module, models: list[nn.Module], live: list[int], batch: dict[str, torch.Tensor],
                labels: torch.Tensor) -> list[torch.Tensor]:
        """One packed forward; the task loss (+ weighted auxiliary loss) of each live trial on its own rows."""
        from autopeft.peft import auxiliary_loss

        f = self.trainer.fidelity
        n = len(live)
        stacked = {name: t.repeat(n, *([1] * (t.dim() - 1))) for name, t in batch.items()}  # (n*B, ...)
        hidden = stacked.pop(fc.HIDDEN_KEY, None)  # cached states entering the pack's start block, (n*B, T, C)
        out = []
        self._mask.value = batch["attention_mask"]
        with fc.fed(packed, hidden, stacked["attention_mask"]), self.trainer.autocast():
            logits = packed(**stacked).logits.chunk(n, dim=0)  # n x (B, num_labels)
            for i, t in enumerate(live):
                loss = F.cross_entropy(logits[i].float(), labels)  # what the model's own loss computes alone
                aux = auxiliary_loss(models[t])
                if aux is not None and f.aux_loss_weight > 0:
                    loss = loss + f.aux_loss_weight * aux
                out.append(loss.float())
        self._mask.value = None
        return out

    def _pack_loss(self, packed: nn.Module, models: list[nn.Module], live: list[int]):
        """A batch (labels included) -> the stacked losses of the ``live`` trials, (len(live),); under the
        fidelity's ``cuda_graphs`` recorded per batch shape for this packed model."""
        live = list(live)

        def losses(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            return torch.stack(self._losses(packed, models, live, inputs, batch["labels"]))

        return self.trainer.step_graphs(packed, losses)

    def _run_pack(self, plans: list[PeftPlan], on_step) -> list[TrialMetrics | TrialFailed]:
        tr, f = self.trainer, self.trainer.fidelity
        t0 = time.perf_counter()
        torch.manual_seed(f.seed)
        models = [self.build_model(p) for p in plans]
        optims = [tr.make_optimizer(m) for m in models]  # (optimizer, scheduler) per trial
        live = list(range(len(plans)))  # trials still training
        failed: dict[int, TrialFailed] = {}
        losses: list[list[float]] = [[] for _ in plans]
        step_times: list[list[float]] = [[] for _ in plans]
        packed, start = self.packed_model(models)
        # fp16: one loss scaler for the pack; each trial's optimizer step is skipped on its own overflow, and the
        # scale drops when any trial overflowed (alone, each trial would keep a scale of its own)
        scaler = torch.amp.GradScaler(tr.device.type) if f.autocast == "fp16" else None
        with _PeakMemory(tr.device) as mem:
            for m in models:
                tr.train_mode(m)
            loss_of = self._pack_loss(packed, models, live)
            batches = tr.train_batches(start)
            for step in range(f.steps):
                ts = time.perf_counter()
                batch = next(batches)
                while live:
                    step_loss = loss_of(batch)  # (live,)
                    # every trial's loss in one copy to the host (one device sync per step, not one per trial)
                    values = step_loss.detach().tolist()
                    bad = [(t, v) for t, v in zip(live, values) if not math.isfinite(v)]
                    if not bad:
                        break
                    for t, v in bad:  # fail the diverged trials alone, then redo the step without them
                        failed[t] = TrialFailed(f"loss became {v} at step {step}; the plan diverged at "
                                                f"lr {f.learning_rate}")
                    live = [t for t in live if t not in failed]
                    if live:  # the same start block: the batch already holds its states
                        packed = self.packed_model([models[t] for t in live], start)[0]
                        release(loss_of)
                        loss_of = self._pack_loss(packed, models, live)
                if not live:
                    break
                for t in live:
                    optims[t][0].zero_grad(set_to_none=True)
                total = step_loss.sum()  # no shared trainable tensor: each trial gets its own gradient
                (scaler.scale(total) if scaler is not None else total).backward()
                for t in live:
                    if scaler is not None:
                        scaler.step(optims[t][0])
                    else:
                        optims[t][0].step()
                    optims[t][1].step()
                if scaler is not None:
                    scaler.update()
                share = (time.perf_counter() - ts) / len(live)
                for t, v in zip(live, values):
                    losses[t].append(v)
                    step_times[t].append(share)
                if on_step is not None:
                    on_step(step, sum(values) / len(values))
        step_loss = total = None  # the last step's losses hold its replay node, and through it the recordings
        release(loss_of)
        wall = (time.perf_counter() - t0) / len(plans)  # the pack's wall time, shared out
        results: list[TrialMetrics | TrialFailed] = []
        for t, (plan, model) in enumerate(zip(plans, models)):
            if t in failed:
                results.append(failed[t])
            else:
                metrics = tr.finish(model, plan, losses[t], step_times[t], mem.peak_mb, t0)
                results.append(dataclasses.replace(metrics, wall_time=wall))
        return results
