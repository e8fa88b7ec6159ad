"""The frozen-layer cache: what enters a plan's lowest adapted block is computed once per worker, not per step.

A plan that leaves the lowest ``L`` blocks without any module (no method of any kind sits there: every method is
injected into one block of the plan's layer list, and the prefix attention function computes untouched blocks
as before) trains nothing below block ``L``. When those blocks and the embeddings run without dropout (the
fidelity's ``frozen_cache``), the hidden states leaving block ``L - 1`` depend only on the data, so they are the
same for every step, epoch and trial of the fidelity. The trainer computes them once per split and ``L`` and
feeds them in place of the lower blocks:

    embeddings (eval) -> blocks 0..L-2 (passthrough) -> block L-1 (feeder: returns the cached states)
    -> blocks L.. (train as usual) -> head

The embeddings still run (a lookup, cheap) so every model keeps its own masks, positions and pooling code; the
feeder replaces block ``L - 1``'s output by the cached tensor, whose padding positions are zeros (a trainer
that computes the frozen blocks instead zeroes them too, so both give the same numbers). Hidden states are kept
per example without padding (a flat (tokens, hidden) tensor and offsets), so any batch composition and padding width can be
gathered from them. Entries live in RAM under a byte budget (least recently used evicted first), optionally
also on disk (memory-mapped when read back), where other workers of the same fidelity find them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from autopeft.peft.arch import get_arch
from autopeft.plan import PeftPlan

#: attribute of a model whose blocks below it are fed from the cache (the block index the model runs from)
START_ATTR = "autopeft_start_layer"
#: attribute of an unfed model that zeroes padding entering its lowest trained block, like the cache
PAD_ATTR = "autopeft_pad_zeros"
#: batch key of the cached hidden states entering the first trained block, (B, T, C)
HIDDEN_KEY = "frozen_hidden"
#: RAM budget of a worker's cache unless the trainer or AUTOPEFT_FROZEN_CACHE_MB says otherwise
DEFAULT_CACHE_MB = 2048


def first_adapted_layer(plan: PeftPlan) -> int:
    """Index of the lowest block holding a module of the plan (``num_layers`` for a head-only plan)."""
    return next((i for i, layer in enumerate(plan.layers) if layer), plan.num_layers)


def lower_modules(model: nn.Module, start: int) -> list[nn.Module]:
    """The embeddings and blocks ``0..start-1``: what runs below block ``start``."""
    arch = get_arch(model)
    emb = arch.embeddings(model)
    return ([emb] if emb is not None else []) + arch.layers(model)[:start]


def freeze_lower(model: nn.Module, start: int) -> None:
    """Put the modules below block ``start`` in eval mode (no dropout); call after ``model.train()``."""
    for module in lower_modules(model, start):
        module.eval()


# --------------------------------------------------------------------------- feeding a model
class Passthrough(nn.Module):
    """A skipped block: returns its input hidden states."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


class Feeder(nn.Module):
    """Stands in for the last frozen block and returns the cached hidden states set in :attr:`value`."""

    def __init__(self) -> None:
        super().__init__()
        self.value: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.value is None:
            raise RuntimeError("this model runs from cached hidden states: pass the batch's "
                               f"{HIDDEN_KEY!r} (ProxyTrainer.train_batches(start_layer=...))")
        return self.value.to(hidden_states.dtype)  # (B, T, C)


def _block_list(model: nn.Module) -> nn.ModuleList:
    arch = get_arch(model)
    obj: Any = arch.base_model(model)
    for part in arch.layers_path.split("."):
        obj = getattr(obj, part)
    return obj


def install_feeder(model: nn.Module, start: int) -> list[tuple[int, nn.Module]]:
    """Replace blocks ``0..start-1`` of ``model`` (in place) so it runs from cached states entering ``start``.

    Returns the replaced ``(index, block)`` pairs, for :func:`restore`.
    """
    if start < 1:
        raise ValueError(f"start layer must be >= 1 to feed cached states (got {start})")
    blocks = _block_list(model)
    replaced = [(i, blocks[i]) for i in range(start)]
    for i in range(start - 1):
        blocks[i] = Passthrough()
    blocks[start - 1] = Feeder()
    setattr(model, START_ATTR, start)
    return replaced


def restore(model: nn.Module, replaced: list[tuple[int, nn.Module]]) -> None:
    blocks = _block_list(model)
    for i, block in replaced:
        blocks[i] = block
    if hasattr(model, START_ATTR):
        delattr(model, START_ATTR)


class _PadZeros:
    """Forward hook of the last frozen block of a model that is not fed: zeroes the padding positions of its output,
    as the cache stores them, so the two ways of running give the same numbers. (Real positions never see padding;
    what sees it is a token-level statistic such as the experts' load-balancing loss.)"""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None  # (B, T) attention mask of the running batch

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        if self.mask is None:
            return output
        out = output[0] if isinstance(output, tuple) else output
        out = out * self.mask[:, : out.shape[1], None].to(out.dtype)  # (B, T, C); T = 1 after a pooled cut
        return (out, *output[1:]) if isinstance(output, tuple) else out


def zero_padding_below(model: nn.Module, start: int) -> None:
    """Make an unfed ``model`` pass zeros at padding positions into block ``start`` (see :func:`fed`)."""
    hook = _PadZeros()
    _block_list(model)[start - 1].register_forward_hook(hook)
    setattr(model, PAD_ATTR, hook)


@contextlib.contextmanager
def fed(model: nn.Module, hidden: torch.Tensor | None, attention_mask: torch.Tensor | None = None) -> Iterator[None]:
    """Run ``model`` on ``hidden`` (the states entering its start layer) and the batch's ``attention_mask``;
    a no-op for a plain model."""
    pad = getattr(model, PAD_ATTR, None)
    start = getattr(model, START_ATTR, 0)
    feeder = _block_list(model)[start - 1] if start else None
    if pad is not None:
        pad.mask = attention_mask
    if feeder is not None:
        feeder.value = hidden
    try:
        yield
    finally:
        if pad is not None:
            pad.mask = None
        if feeder is not None:
            feeder.value = None


# --------------------------------------------------------------------------- stored states
@dataclass(frozen=True)
class HiddenStates:
    """Per-example hidden states of one split, unpadded: example ``i`` is ``flat[offsets[i] : offsets[i] + lengths[i]]``.

    ``flat``'s last row is zeros: padding positions gather it.
    """

    flat: torch.Tensor  # (tokens + 1, C)
    offsets: torch.Tensor  # (N,) long
    lengths: torch.Tensor  # (N,) long

    @property
    def nbytes(self) -> int:
        return self.flat.numel() * self.flat.element_size()

    def gather(self, idx: torch.Tensor, width: int) -> torch.Tensor:
        """The batch ``idx`` right-padded to ``width`` tokens with zeros: (B, width, C)."""
        pos = torch.arange(width)  # (T,)
        rows = self.offsets[idx, None] + pos[None, :]  # (B, T)
        rows = torch.where(pos[None, :] < self.lengths[idx, None], rows, self.flat.shape[0] - 1)
        return self.flat[rows]  # (B, T, C)


def pack_states(per_example: list[torch.Tensor], dtype: torch.dtype) -> HiddenStates:
    """Concatenate per-example (T_i, C) states into a :class:`HiddenStates` stored in ``dtype``."""
    lengths = torch.tensor([h.shape[0] for h in per_example], dtype=torch.long)
    offsets = torch.cumsum(lengths, 0) - lengths
    width = per_example[0].shape[1]
    flat = torch.cat([*(h.to(dtype) for h in per_example), torch.zeros(1, width, dtype=dtype)])  # (tokens + 1, C)
    return HiddenStates(flat, offsets, lengths)


class _Stop(Exception):
    """Raised by the capture hook: nothing above the captured block needs computing."""


@torch.inference_mode()
def capture(model: nn.Module, starts: Sequence[int],
            batches: Iterator[tuple[dict[str, torch.Tensor], torch.Tensor | None]],
            autocast: contextlib.AbstractContextManager | None = None) -> dict[int, list[torch.Tensor]]:
    """For each ``start`` in ``starts``, the states leaving block ``start - 1`` for every example of ``batches``,
    unpadded, on the CPU: one pass, stopped after the highest block asked for.

    ``batches`` yields ``(model inputs, hidden states to feed or None)``; the inputs hold an ``attention_mask``
    giving each row's real tokens. ``model`` is in eval mode; when it is fed (:func:`install_feeder` at a lower
    layer) the fed states are passed through the blocks in between.
    """
    starts = sorted(set(starts))
    out: dict[int, list[torch.Tensor]] = {s: [] for s in starts}
    grabbed: dict[int, torch.Tensor] = {}

    def hook_for(start: int):
        def hook(module, args, output):
            grabbed[start] = output[0] if isinstance(output, tuple) else output
            if start == starts[-1]:
                raise _Stop

        return hook

    layers = get_arch(model).layers(model)
    handles = [layers[s - 1].register_forward_hook(hook_for(s)) for s in starts]
    try:
        for inputs, hidden in batches:
            grabbed.clear()
            with fed(model, hidden), (autocast or contextlib.nullcontext()):
                try:
                    model(**inputs)
                except _Stop:
                    pass
            real = inputs["attention_mask"].sum(-1).tolist()
            for s in starts:
                states = grabbed[s].float().cpu()  # (B, T, C)
                out[s].extend(states[row, :n].clone() for row, n in enumerate(real))
    finally:
        for handle in handles:
            handle.remove()
    return out


# --------------------------------------------------------------------------- the cache
class FrozenCache:
    """Least-recently-used :class:`HiddenStates` under a RAM byte budget, optionally mirrored on disk.

    Keys are hashable tuples; ``disk_key`` names the entry's file (a digest of everything the states depend on).
    """

    def __init__(self, budget_bytes: int, directory: str | os.PathLike | None = None):
        self.budget = budget_bytes
        self.directory = Path(directory) if directory else None
        self._entries: OrderedDict[Any, HiddenStates] = OrderedDict()
        self.hits = self.misses = 0

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def __contains__(self, key: Any) -> bool:
        return key in self._entries

    def keys(self) -> list[Any]:
        return list(self._entries)

    def _path(self, disk_key: str) -> Path | None:
        return self.directory / f"{disk_key}.pt" if self.directory else None

    def get(self, key: Any, disk_key: str | None = None) -> HiddenStates | None:
        entry = self._entries.get(key)
        if entry is None and disk_key and (path := self._path(disk_key)) is not None and path.exists():
            blob = torch.load(path, mmap=True, weights_only=True)
            entry = HiddenStates(blob["flat"], blob["offsets"], blob["lengths"])
            self._keep(key, entry)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return entry

    def put(self, key: Any, entry: HiddenStates, disk_key: str | None = None) -> None:
        if disk_key and (path := self._path(disk_key)) is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save({"flat": entry.flat, "offsets": entry.offsets, "lengths": entry.lengths}, tmp)
            os.replace(tmp, path)  # atomic: another worker never reads half a file
        self._keep(key, entry)

    def offer(self, key: Any, entry: HiddenStates, disk_key: str | None = None) -> bool:
        """:meth:`put`, but only where ``entry`` fits beside what is kept (nothing is evicted for it); whether kept."""
        if key in self._entries or self.nbytes + entry.nbytes > self.budget:
            return False
        self.put(key, entry, disk_key)
        return True

    def _keep(self, key: Any, entry: HiddenStates) -> None:
        self._entries.pop(key, None)
        if entry.nbytes > self.budget:  # larger than the whole budget: used by the caller, not kept
            return
        while self._entries and self.nbytes + entry.nbytes > self.budget:
            self._entries.popitem(last=False)  # least recently used first
        self._entries[key] = entry


def disk_key(parts: dict[str, Any]) -> str:
    """A file-name-safe digest of what an entry depends on."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def weights_digest(model: nn.Module) -> str:
    """A cheap fingerprint of a model's frozen weights (shapes and a few sums), so a changed checkpoint at the same
    path never reads another's cached states."""
    h = hashlib.sha256()
    for name, p in model.state_dict().items():
        h.update(f"{name}{tuple(p.shape)}{float(p.float().sum()) if p.is_floating_point() else 0:.6e}".encode())
    return h.hexdigest()[:16]


__all__ = ["DEFAULT_CACHE_MB", "Feeder", "FrozenCache", "HIDDEN_KEY", "HiddenStates", "Passthrough", "START_ATTR",
           "PAD_ATTR", "capture", "disk_key", "fed", "first_adapted_layer", "freeze_lower", "install_feeder", "lower_modules",
           "pack_states", "restore", "weights_digest", "zero_padding_below"]
