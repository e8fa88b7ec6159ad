"""Evaluation batches: the time to score the quickstart's validation split per token budget of a batch.

    python benchmarks/eval_batches.py [--budgets 256 512 1024 2048 4096 16384] [--repeats 5] [--threads 1]
                                      [--device cpu|cuda] [--set FIELD=VALUE ...]

A trial ends with two evaluations (validation and test split), about a third of a quickstart trial on CPU. They
run under ``inference_mode`` on examples sorted by length, cut into batches of at most a token budget
(:func:`autopeft.proxy.train.eval_tokens`: 1,024 on CPU, 16,384 elsewhere). This script scores the validation
split of the default fidelity (packaged MiniLM on rotten_tomatoes, 600 examples, 64 tokens at most) with the
baseline plan LoRA r = 8 on q,v of every block (the evaluation's cost is the frozen model's) at each budget, and
at 64 examples per batch (what a plain PyTorch loop does), every repeat running each setting once, in turn.
Reported: the median seconds (wall and process CPU), the ratio to the 16,384-token budget (the budget on every
device before the CPU got its own), and the score, which must not change with the batching.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
BASELINE = 16384


def measure(trainer, model, settings: list[tuple[str, dict]], repeats: int) -> list[dict]:
    """Median wall and CPU seconds of ``trainer.evaluate`` per setting (label, keyword arguments), and its score."""
    walls: dict[str, list[float]] = {label: [] for label, _ in settings}
    cpus: dict[str, list[float]] = {label: [] for label, _ in settings}
    scores: dict[str, float] = {}
    for rep in range(repeats + 1):  # round 0 warms up
        for label, kwargs in settings:
            t0, c0 = time.perf_counter(), time.process_time()
            scores[label] = trainer.evaluate(model, trainer.eval_data, **kwargs)
            if rep:
                walls[label].append(time.perf_counter() - t0)
                cpus[label].append(time.process_time() - c0)
    return [dict(label=label, wall=statistics.median(walls[label]), cpu=statistics.median(cpus[label]),
                 score=scores[label]) for label, _ in settings]


def table(rows: list[dict]) -> str:
    base = next(r for r in rows if r["label"] == f"{BASELINE} tokens")
    lines = ["| batches | s (median) | / 16,384 tokens | CPU s | CPU / 16,384 tokens | score |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['wall']:.3f} | {r['wall'] / base['wall']:.2f}x | {r['cpu']:.3f} | "
                     f"{r['cpu'] / base['cpu']:.2f}x | {r['score']:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budgets", nargs="+", type=int, default=[256, 512, 1024, 2048, 4096, BASELINE])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                    help="fidelity fields to change (a smaller split for a quick run)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)

    from build_table import baseline_plans

    from autopeft.proxy.fidelity import Fidelity
    from autopeft.proxy.train import ProxyTrainer, eval_tokens
    from autopeft.study.runner import quiet_libraries

    quiet_libraries()
    fidelity = Fidelity.build(dict(kv.split("=", 1) for kv in args.set))
    trainer = ProxyTrainer(fidelity, args.device)
    plan = baseline_plans(trainer._base.config.num_hidden_layers)["LoRA r=8 q,v"]
    model = trainer.build_model(plan)
    budgets = sorted(set(args.budgets) | {BASELINE})
    settings = [(f"{b} tokens", {"tokens": b}) for b in budgets] + [("64 examples", {"batch_size": 64})]
    rows = measure(trainer, model, settings, args.repeats)
    print(f"`python benchmarks/eval_batches.py {' '.join(argv if argv is not None else sys.argv[1:])}` · "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {args.device} (its default budget: "
          f"{eval_tokens(torch.device(args.device))} tokens) · {time.strftime('%Y-%m-%d')} · medians of "
          f"{args.repeats} · {fidelity.describe()} · {len(trainer.eval_data)} validation examples, "
          f"{int(trainer.eval_data.lengths.sum())} tokens\n")
    print(table(rows))


if __name__ == "__main__":
    main()
