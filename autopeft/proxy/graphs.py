"""A training step's forward and backward replayed as CUDA graphs (the fidelity's ``cuda_graphs``).

A proxy's step on a GPU is bound by the host: one Python thread issues every kernel of the forward, the backward
and the adapters (1,500 to 6,000 operations for a plan of ``full.yaml``, docs/benchmarks.md), each in microseconds,
for arithmetic the card finishes in a fraction of that. A CUDA graph records those kernels once and replays them
with one launch. :class:`StepGraphs` records, per batch shape, the loss's forward as one graph and its backward
(the gradients of every trainable parameter) as another, with ``torch.cuda.make_graphed_callables`` -- the library
made for this: it owns the static input buffers, the warm-up on a side stream and the autograd glue.

What it asks of a step, and how the trainer meets it:

* static shapes: one capture per batch shape, so the trainer pads training batches to a multiple of
  :data:`GRAPH_WIDTH` tokens (at most ``max_length / GRAPH_WIDTH`` shapes; padding is masked out of attention);
* no host synchronisation inside the step (no ``.item()``, no data-dependent shapes): routing, prefixes, the
  frozen-layer feeder and the pooled cut all stay on the device; transformers skips its "is the mask all ones"
  check while a stream is being captured;
* autocast without its weight cache (``cache_enabled=False``), the trainer's setting under this option;
* a fixed set of trainable tensors: the trainer builds the graphs after the plan is injected, and builds new ones
  for a new model (a pack without a diverged trial is a new model).

The optimizer step (torch's fused AdamW: a handful of kernels) and the learning-rate schedule stay outside the
graphs, so they are the same code as without them.

Random numbers (dropout) are drawn inside the graphs from torch's CUDA generator, whose offset advances on every
replay: each step draws fresh masks. They are other masks than the eager step draws (the warm-up runs consume
draws, and padded batches are wider), so a trial's result agrees with the eager one within seeded noise, and
without dropout up to float rounding (tested on a GPU in tests/proxy/test_graphs.py).

The CPU twin is the same :class:`StepGraphs` with an eager ``capture`` (the module itself): the same wrapper, the
same padded shapes, the same per-shape bookkeeping, exercised by the tests on any machine.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import nn

#: Training batches are padded to a multiple of this many tokens under ``cuda_graphs`` (one graph per width).
GRAPH_WIDTH = 16
#: Eager forward+backward runs ``make_graphed_callables`` makes on a side stream before it records a shape (lazy
#: initialisation -- cuBLAS workspaces, kernel selection -- must not happen inside a capture).
WARMUP_RUNS = 2

Capture = Callable[[nn.Module, tuple[torch.Tensor, ...]], Callable[..., torch.Tensor]]


def padded_width(width: int) -> int:
    """``width`` rounded up to a multiple of :data:`GRAPH_WIDTH`."""
    return -(-width // GRAPH_WIDTH) * GRAPH_WIDTH


def capture_cuda(step: nn.Module, args: tuple[torch.Tensor, ...]) -> Callable[..., torch.Tensor]:
    """Record ``step(*args)``'s forward and backward as CUDA graphs; the returned callable replays them. A trainable
    tensor the loss does not reach (e.g. a module cut off by the pooled cut) gets no gradient, as in an eager step."""
    # make_graphed_callables records on a side stream, so the parameters' gradient accumulators belong to that stream
    # while the replayed backward runs on the trainer's; torch orders the two itself and would warn about it on every
    # worker (the throughput figures in docs/benchmarks.md include that ordering).
    quiet = getattr(torch.autograd.graph, "set_warn_on_accumulate_grad_stream_mismatch", None)
    if quiet is not None:
        quiet(False)
    return torch.cuda.make_graphed_callables(step, args, num_warmup_iters=WARMUP_RUNS, allow_unused_input=True)


class _Step(nn.Module):
    """``loss_fn`` of a batch given as positional tensors (what a graphed callable takes); holds ``module`` so that
    its parameters are the graph's trainable inputs."""

    def __init__(self, module: nn.Module, loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
                 names: tuple[str, ...]):
        super().__init__()
        self.module = module
        self.loss_fn = loss_fn
        self.names = names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(dict(zip(self.names, tensors)))


class StepGraphs:
    """``loss_fn(batch)`` for a training ``module``, forward and backward replayed from one recording per batch
    shape. Call it with a batch (a dict of tensors) to get the loss; its ``backward()`` replays the backward graph
    and leaves the gradients in the parameters' ``.grad``, as an eager step does.

    ``capture`` records a step (default :func:`capture_cuda`); ``captures`` counts the shapes recorded so far. A
    step that cannot be recorded (a module that synchronises with the host, say) is not an error: a warning names
    the reason, kept in ``fallback``, and this model's steps run eagerly from then on -- the same arithmetic.
    """

    def __init__(self, module: nn.Module, loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor], *,
                 capture: Capture | None = None):
        self.module = module
        self.loss_fn = loss_fn
        self.capture = capture or capture_cuda
        self._graphs: dict[tuple, Callable[..., torch.Tensor]] = {}
        self.captures = 0  # shapes recorded so far
        self.fallback: str | None = None

    def close(self) -> None:
        """Free the recordings now. make_graphed_callables gives each recorded module a replay ``forward`` that
        refers back to the module, a cycle that would keep the graphs' device memory until Python's cycle collector
        ran; a worker trains thousands of trials."""
        for step in self._graphs.values():
            vars(step).pop("forward", None)
        self._graphs.clear()

    @property
    def live(self) -> int:
        """Recordings held now (0 after :meth:`close`)."""
        return len(self._graphs)

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.fallback is not None:
            return self.loss_fn(batch)
        names = tuple(sorted(batch))
        args = tuple(batch[n] for n in names)
        key = (names, tuple((tuple(a.shape), a.dtype) for a in args))
        graphed = self._graphs.get(key)
        if graphed is None:
            # A fresh wrapper per shape: make_graphed_callables replaces its module's forward with the replay.
            # (Not ``.train()``: that would reset the dropout modes the trainer set block by block.)
            step = _Step(self.module, self.loss_fn, names)
            try:
                graphed = self.capture(step, args)
            except RuntimeError as exc:
                self.fallback = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                warnings.warn(f"--cuda-graphs: this trial's step could not be recorded as a CUDA graph "
                              f"({self.fallback}); it trains without graphs", stacklevel=2)
                return self.loss_fn(batch)
            self._graphs[key] = graphed
            self.captures += 1
        return graphed(*args)


def release(loss_of: Callable) -> None:
    """Close ``loss_of`` if it is a :class:`StepGraphs` (the trainers' steps are one or the plain loss function)."""
    if isinstance(loss_of, StepGraphs):
        loss_of.close()


__all__ = ["GRAPH_WIDTH", "StepGraphs", "capture_cuda", "padded_width", "release"]
