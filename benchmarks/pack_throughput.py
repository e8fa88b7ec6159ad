"""Trials per hour with ``--pack K`` against one trial at a time, the same plans on the same trainer.

    python benchmarks/pack_throughput.py [--device cpu|cuda] [--pack 8] [--plans 8] [--repeats 3]
                                         [--autocast off|bf16] [--set steps=40 ...] [--threads 2]

One :class:`~autopeft.proxy.train.ProxyTrainer` at the quickstart budget (the default fidelity, length buckets on;
``--set FIELD=VALUE`` overrides fields) is built once; each repeat then trains ``--plans`` plans sampled (seeded)
from ``search_spaces/full.yaml`` (build_table.py's density sampler) two ways, in turn:

* *one at a time*: ``ProxyTrainer.run`` per plan (what a worker without ``--pack`` does);
* *pack K*: ``PackedTrainer(trainer, K).run_many`` (what ``autopeft worker --pack K`` does).

Reported: trials per hour of each (plans over wall seconds, the median over repeats), the ratio, and the largest
per-plan difference of validation score and final training loss between the two ways (packing draws dropout
masks for the whole pack: the differences are seeded noise, and without dropout they vanish -- see
tests/proxy/test_pack.py). The GPU goal of the proxy-throughput work is ``--pack 8`` at >= 4x on a GPU.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time
from pathlib import Path

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
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from build_table import sample_params

    from autopeft.proxy.fidelity import Fidelity
    from autopeft.proxy.models import load_config, model_dims
    from autopeft.proxy.pack import PackedTrainer
    from autopeft.proxy.train import ProxyTrainer
    from autopeft.space import SearchSpace, load_space

    overrides = dict(item.split("=", 1) for item in args.set)
    fidelity = Fidelity.build({**Fidelity().model_dump(), "length_buckets": True, "autocast": args.autocast,
                               **overrides})
    space = SearchSpace(load_space("full"), model_dims(load_config(fidelity.model)))
    rng = random.Random(args.seed)
    plans = [space.decode(sample_params(space, rng)) for _ in range(args.plans)]
    device = torch.device(args.device)
    t0 = time.perf_counter()
    trainer = ProxyTrainer(fidelity, args.device)
    setup = time.perf_counter() - t0
    packer = PackedTrainer(trainer, args.pack)

    rates: dict[str, list[float]] = {"one at a time": [], f"pack {args.pack}": []}
    last: dict[str, list] = {}
    for r in range(args.repeats):
        for name, run in (("one at a time", lambda: [trainer.run(p) for p in plans]),
                          (f"pack {args.pack}", lambda: packer.run_many(plans))):
            _sync(device)
            start = time.perf_counter()
            results = run()
            _sync(device)
            wall = time.perf_counter() - start
            rates[name].append(3600 * len(plans) / wall)
            last[name] = results
            print(f"repeat {r + 1}: {name}: {wall:.1f} s for {len(plans)} plans", flush=True)

    alone, packed = last["one at a time"], last[f"pack {args.pack}"]
    failed = [i for i, m in enumerate(packed) if isinstance(m, Exception)] + \
             [i for i, m in enumerate(alone) if isinstance(m, Exception)]
    pairs = [(a, b) for i, (a, b) in enumerate(zip(alone, packed)) if i not in failed]
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    base = statistics.median(rates["one at a time"])
    print(f"\n{card} · torch {torch.__version__} · {fidelity.describe()} · length buckets, autocast {args.autocast} · "
          f"{args.plans} plans from full.yaml (seed {args.seed}) · median of {args.repeats} · trainer set-up "
          f"{setup:.1f} s (once, not counted)\n")
    print("| how | trials per hour (median) | / one at a time |")
    print("|---|---:|---:|")
    for name, values in rates.items():
        print(f"| {name} | {statistics.median(values):.1f} | {statistics.median(values) / base:.2f}x |")
    if pairs:
        print(f"\nlargest per-plan difference, pack vs alone: validation score "
              f"{max(abs(a.score - b.score) for a, b in pairs):.4f}, final training loss "
              f"{max(abs(a.train_loss - b.train_loss) for a, b in pairs):.4f} ({len(pairs)} plans"
              + (f"; failed: {failed}" if failed else "") + ")")


if __name__ == "__main__":
    main()
