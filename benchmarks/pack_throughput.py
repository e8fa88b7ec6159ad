"""Trials per hour with ``--pack K`` against one trial at a time, the same plans on the same trainer.

    python benchmarks/pack_throughput.py [--device cpu|cuda] [--pack 8] [--plans 8] [--repeats 3]
                                         [--autocast off|bf16] [--set steps=40 ...] [--threads 2] [--procs N]

One :class:`~autopeft.proxy.train.ProxyTrainer` at the quickstart budget (the default fidelity, length buckets on;
``--set FIELD=VALUE`` overrides fields) is built once; each repeat then trains ``--plans`` plans sampled (seeded)
from ``search_spaces/full.yaml`` (build_table.py's density sampler) two or three ways, in turn:

* *one at a time*: ``ProxyTrainer.run`` per plan (what a worker without ``--pack`` does);
* *pack K*: ``PackedTrainer(trainer, K).run_many`` (what ``autopeft worker --pack K`` does);
* with ``--graphs`` (CUDA), also *one at a time, CUDA graphs* and *pack K, CUDA graphs*: the same plans on a second
  trainer whose fidelity has ``cuda_graphs`` on (each step's forward and backward replayed from a recording per
  batch width; what ``autopeft run --cuda-graphs`` does);
* with ``--procs N``, also *N processes*: N worker processes on the same device, each with its own trainer
  (model, data, CUDA context) training its share of the plans one at a time -- what ``autopeft run --workers N``
  or N ``autopeft worker`` processes on one machine do. Each process sets up first (not timed, like the trainer
  above: a worker sets up once and then trains for hours); the clock runs from the moment all N are ready until the
  last one is done. On a GPU a small proxy's step is bound by the host issuing thousands of small kernels, and N
  processes issue them from N cores at once.

Reported: trials per hour of each (plans over wall seconds, the median over repeats), the ratio, and the largest
per-plan difference of validation score and final training loss against one at a time (packing draws dropout
masks for the whole pack: the differences are seeded noise, and without dropout they vanish -- see
tests/proxy/test_pack.py), and each plan's validation score and final training loss for every way (a plan whose
training takes off or not by chance shows there). The GPU goal of the proxy-throughput work is ``--pack 8`` at >= 4x on a GPU.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # build_table's sampler


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--pack", type=int, default=8)
    ap.add_argument("--plans", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0, help="seed of the plan draw")
    ap.add_argument("--autocast", default="off", choices=("off", "bf16"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE", help="fidelity overrides, e.g. steps=40")
    ap.add_argument("--graphs", action="store_true",
                    help="also time one at a time and the pack with each step replayed as CUDA graphs (CUDA only)")
    ap.add_argument("--procs", type=int, default=0, metavar="N",
                    help="also time N worker processes on the device, each training its share one at a time")
    args = ap.parse_args(argv)
    if args.procs < 0 or args.procs > args.plans:
        ap.error(f"--procs: must be between 0 and --plans ({args.plans}); got {args.procs}")
    if args.graphs and torch.device(args.device).type != "cuda":
        ap.error("--graphs: CUDA graphs need --device cuda")
    torch.set_num_threads(args.threads)

    from autopeft.proxy.pack import PackedTrainer
    from autopeft.proxy.train import ProxyTrainer

    fidelity, plans = fidelity_and_plans(args.set, args.autocast, args.plans, args.seed)
    device = torch.device(args.device)
    t0 = time.perf_counter()
    trainer = ProxyTrainer(fidelity, args.device)
    setup = time.perf_counter() - t0
    packer = PackedTrainer(trainer, args.pack)
    _timed(device, lambda: trainer.run(plans[0]))  # warm-up, not counted: CUDA kernels chosen, caches filled

    ways = [("one at a time", lambda: _timed(device, lambda: [trainer.run(p) for p in plans])),
            (f"pack {args.pack}", lambda: _timed(device, lambda: packer.run_many(plans)))]
    if args.graphs:
        graphed = ProxyTrainer(fidelity.model_copy(update={"cuda_graphs": True}), args.device)
        graphed_packer = PackedTrainer(graphed, args.pack)
        _timed(device, lambda: graphed.run(plans[0]))  # warm-up, as above
        ways += [("one at a time, CUDA graphs", lambda: _timed(device, lambda: [graphed.run(p) for p in plans])),
                 (f"pack {args.pack}, CUDA graphs", lambda: _timed(device, lambda: graphed_packer.run_many(plans)))]
    if args.procs:
        ways.append((f"{args.procs} processes", lambda: _in_processes(args.procs, fidelity, args, plans)))
    rates: dict[str, list[float]] = {name: [] for name, _ in ways}
    last: dict[str, list] = {}
    for r in range(args.repeats):
        for name, run in ways:
            wall, results = run()
            rates[name].append(3600 * len(plans) / wall)
            last[name] = results
            print(f"repeat {r + 1}: {name}: {wall:.1f} s for {len(plans)} plans", flush=True)

    alone = last["one at a time"]
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    base = statistics.median(rates["one at a time"])
    print(f"\n{card} · torch {torch.__version__} · {fidelity.describe()} · length buckets, autocast {args.autocast} · "
          f"{args.plans} plans from full.yaml (seed {args.seed}) · median of {args.repeats} · trainer set-up "
          f"{setup:.1f} s (once, not counted)\n")
    print("| how | trials per hour (median) | / one at a time |")
    print("|---|---:|---:|")
    for name, values in rates.items():
        print(f"| {name} | {statistics.median(values):.1f} | {statistics.median(values) / base:.2f}x |")
    for name, results in last.items():
        if name != "one at a time":
            print(_difference(name, alone, results))
    print("\nper plan, last repeat: validation score / final training loss\n")
    print("| plan | " + " | ".join(last) + " |")
    print("|---|" + "---:|" * len(last))
    for i, plan in enumerate(plans):
        cells = [f"{r[i].score:.4f} / {r[i].train_loss:.4f}" if not isinstance(r[i], Exception) else "failed"
                 for r in last.values()]
        print(f"| {i}: {plan.summary().replace(' | ', '; ')[:80]} | " + " | ".join(cells) + " |")


def fidelity_and_plans(overrides: list[str], autocast: str, n: int, seed: int) -> tuple[Any, list]:
    """The quickstart fidelity with length buckets, ``autocast`` and ``FIELD=VALUE`` overrides, and ``n`` plans
    sampled (seeded) from ``full.yaml`` by build_table's density sampler."""
    from build_table import sample_params

    from autopeft.proxy.fidelity import Fidelity
    from autopeft.proxy.models import load_config, model_dims
    from autopeft.space import SearchSpace, load_space

    fields = dict(item.split("=", 1) for item in overrides)
    fidelity = Fidelity.build({**Fidelity().model_dump(), "length_buckets": True, "autocast": autocast, **fields})
    space = SearchSpace(load_space("full"), model_dims(load_config(fidelity.model)))
    rng = random.Random(seed)
    return fidelity, [space.decode(sample_params(space, rng)) for _ in range(n)]


def _timed(device: torch.device, run) -> tuple[float, list]:
    """(wall seconds, results) of ``run()``, with the device drained before and after."""
    _sync(device)
    start = time.perf_counter()
    results = run()
    _sync(device)
    return time.perf_counter() - start, results


def _difference(name: str, alone: list, other: list) -> str:
    """The largest per-plan difference of validation score and final training loss between two ways."""
    failed = [i for i, m in enumerate(other) if isinstance(m, Exception)] + \
             [i for i, m in enumerate(alone) if isinstance(m, Exception)]
    pairs = [(a, b) for i, (a, b) in enumerate(zip(alone, other)) if i not in failed]
    if not pairs:
        return f"\n{name}: no plan finished both ways (failed: {failed})"
    return (f"\nlargest per-plan difference, {name} vs one at a time: validation score "
            f"{max(abs(a.score - b.score) for a, b in pairs):.4f}, final training loss "
            f"{max(abs(a.train_loss - b.train_loss) for a, b in pairs):.4f} ({len(pairs)} plans"
            + (f"; failed: {failed}" if failed else "") + ")")


def _worker(rank: int, procs: int, fidelity_dump: dict, device: str, threads: int, plans: list, ready, go, out) -> None:
    """One worker process: set up a trainer, say so, wait for the start, train every procs-th plan one at a time."""
    torch.set_num_threads(threads)
    from autopeft.proxy.fidelity import Fidelity
    from autopeft.proxy.train import ProxyTrainer

    trainer = ProxyTrainer(Fidelity.build(fidelity_dump), device)
    trainer.run(plans[rank])  # warm-up, as the in-process ways had theirs (kernels chosen, caches filled)
    ready.put(rank)
    go.wait()
    for i in range(rank, len(plans), procs):
        try:
            m = trainer.run(plans[i])
            out.put((i, m.score, m.train_loss))
        except Exception as exc:  # a failed trial is reported, as run_many reports it
            out.put((i, None, repr(exc)))
    _sync(torch.device(device))
    out.put((-1, rank, None))


def _in_processes(procs: int, fidelity, args, plans: list) -> tuple[float, list]:
    """(wall seconds from all ready to all done, per-plan results) of ``procs`` worker processes."""
    import multiprocessing as mp
    from types import SimpleNamespace

    ctx = mp.get_context("spawn")  # a CUDA context cannot be forked
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    workers = [ctx.Process(target=_worker, args=(r, procs, fidelity.model_dump(), args.device, args.threads, plans,
                                                 ready, go, out)) for r in range(procs)]
    for w in workers:
        w.start()
    for _ in workers:
        ready.get(timeout=900)
    start = time.perf_counter()
    go.set()
    results: list = [None] * len(plans)
    done = 0
    while done < procs:
        i, a, b = out.get(timeout=3600)
        if i < 0:
            done += 1
        else:
            results[i] = SimpleNamespace(score=a, train_loss=b) if a is not None else RuntimeError(b)
    wall = time.perf_counter() - start
    for w in workers:
        w.join()
        if w.exitcode:
            raise RuntimeError(f"a worker process exited with {w.exitcode}")
    return wall, results


if __name__ == "__main__":
    main()
