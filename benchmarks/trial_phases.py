"""Where a proxy trial's time goes, and how many operations its training step issues.

    python benchmarks/trial_phases.py [--device cpu|cuda] [--plans 8] [--autocast off|bf16] [--threads 2]
                                      [--set steps=30 ...] [--no-pack]

One :class:`~autopeft.proxy.train.ProxyTrainer` at the quickstart fidelity (length buckets on; ``--set
FIELD=VALUE`` overrides fields, e.g. ``steps=30`` for a shorter run) trains ``--plans`` plans sampled (seeded) from
``search_spaces/full.yaml``, one at a time and then (unless ``--no-pack``) as one ``--pack`` of them all. For each
way it prints the wall time and the share of its phases: building the plan's model, the two evaluations
(validation and test, inside ``finish``), the frozen-layer states when the cache is on, and the rest -- the
training steps. Each phase is timed with the device drained at its ends. One trial trains first, untimed (CUDA
kernels chosen, caches filled).

Then, per plan, the operations one training step dispatches (forward + loss, backward, optimizer step), counted
with a ``TorchDispatchMode`` (every ATen call that reaches a kernel, views included), against the frozen model's
forward + backward to its inputs. On a GPU, where the arithmetic of a small proxy takes far less than the host's
time to issue its kernels, this count -- not the FLOPs -- sets the step time.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))  # pack_throughput's plan draw and timing
from pack_throughput import _sync, _timed, fidelity_and_plans  # noqa: E402


class _OpCounter(TorchDispatchMode):
    """Counts the ATen operations dispatched while active (the backward's too: the mode reaches autograd's thread)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def step_ops(trainer, plan) -> tuple[int, int, int]:
    """(forward + loss, backward, optimizer step) operations of one training step of ``plan``, after one untimed
    step (the optimizer's state exists then, as in every later step)."""
    start = trainer.cached_layers(plan)
    model = trainer.configure(trainer.build_model(plan), start)
    opt, _ = trainer.make_optimizer(model)
    trainer.train_mode(model)
    batch = next(trainer.train_batches(start))
    for counted in (False, True):
        counters = [_OpCounter() if counted else contextlib.nullcontext() for _ in range(3)]
        opt.zero_grad(set_to_none=True)
        with counters[0]:
            loss = trainer.step_loss(model, batch)
        with counters[1]:
            loss.backward()
        with counters[2]:
            opt.step()
    return tuple(c.count for c in counters)


def bound_ops(trainer) -> int:
    """Operations of the frozen model's forward + backward to its input embeddings on the same batch."""
    model = trainer._base
    was = [p.requires_grad for p in model.parameters()]
    batch = next(trainer.train_batches(0))
    try:
        model.requires_grad_(False)
        model.train()
        embeds = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
        counter = _OpCounter()
        with counter, trainer.autocast():
            out = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
            out.float().sum().backward()
        return counter.count
    finally:
        for p, g in zip(model.parameters(), was):
            p.requires_grad_(g)


def _timed_phases(obj, names: dict[str, str], acc: dict[str, float], device: torch.device) -> None:
    """Wrap ``obj``'s methods ``names`` (attribute: label) so their wall time, device drained, adds up in ``acc``."""
    for attr, label in names.items():
        fn = getattr(obj, attr)

        def wrapped(*a, _fn=fn, _label=label, **k):
            _sync(device)
            t = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                _sync(device)
                acc[_label] += time.perf_counter() - t

        setattr(obj, attr, wrapped)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--plans", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0, help="seed of the plan draw")
    ap.add_argument("--autocast", default="off", choices=("off", "bf16"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-pack", action="store_true", help="time the plans one at a time only")
    ap.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE", help="fidelity overrides, e.g. steps=30")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from autopeft.proxy.pack import PackedTrainer
    from autopeft.proxy.train import ProxyTrainer

    fidelity, plans = fidelity_and_plans(args.set, args.autocast, args.plans, args.seed)
    device = torch.device(args.device)
    trainer = ProxyTrainer(fidelity, args.device)
    packer = PackedTrainer(trainer, len(plans))
    print(f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'} · torch {torch.__version__} · "
          f"{fidelity.describe()} · autocast {args.autocast} · {len(plans)} plans from full.yaml (seed {args.seed})\n")

    acc: dict[str, float] = collections.defaultdict(float)
    _timed_phases(trainer, {"build_model": "build the model", "finish": "two evaluations",
                            "hidden_states": "frozen-layer states"}, acc, device)
    _timed_phases(packer, {"build_model": "build the model", "packed_model": "build the packed model"}, acc, device)
    trainer.run(plans[0])  # untimed warm-up
    ways = [("one at a time", lambda: [trainer.run(p) for p in plans])]
    if not args.no_pack:
        ways.append((f"pack {len(plans)}", lambda: packer.run_many(plans)))
    print("| way | wall s | phase | s | share |")
    print("|---|---:|---|---:|---:|")
    for name, run in ways:
        acc.clear()
        wall, results = _timed(device, run)
        phases = dict(acc)
        phases["training steps (the rest)"] = wall - sum(phases.values())
        for label, sec in phases.items():
            print(f"| {name} | {wall:.2f} | {label} | {sec:.2f} | {100 * sec / wall:.0f}% |")
        times = [m.step_time for m in results if hasattr(m, "step_time")]
        if times:
            print(f"| {name} | | median step time per trial | {1e3 * statistics.median(times):.1f} ms | |")

    bound = bound_ops(trainer)
    print(f"\noperations per training step (batch of the first step; the bound, frozen forward + backward to the "
          f"inputs: {bound})\n")
    print("| plan | forward + loss | backward | optimizer | total | / bound |")
    print("|---|---:|---:|---:|---:|---:|")
    for plan in plans:
        fwd, bwd, opt = step_ops(trainer, plan)
        total = fwd + bwd + opt
        print(f"| {plan.summary().replace(' | ', '; ')[:90]} | {fwd} | {bwd} | {opt} | {total} | {total / bound:.1f}x |")


if __name__ == "__main__":
    main()
