"""CPU dropout: torch's float Bernoulli mask against autopeft's 16-bit integer mask (``autopeft.kernels.dropout``).

On the tensors a quickstart training step drops out (MiniLM: batch 16, 32 tokens, 12 heads, hidden 384): the
attention weights (16, 12, 32, 32) and the hidden states (16, 32, 384), and one larger batch of each. Each row is
forward and backward of one dropout call (p = 0.1), thread CPU time, median over ``--repeats`` rounds of
``--calls`` calls, the two ways side by side in every round (their order alternating).

    python benchmarks/dropout_mask.py
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from autopeft.kernels import dropout

SHAPES = {"attention weights (16, 12, 32, 32)": (16, 12, 32, 32), "hidden states (16, 32, 384)": (16, 32, 384),
          "attention weights (32, 12, 64, 64)": (32, 12, 64, 64), "hidden states (32, 64, 384)": (32, 64, 384)}


def time_calls(fn, x: torch.Tensor, dy: torch.Tensor, calls: int) -> float:
    """Thread CPU seconds per call of forward + backward."""
    t0 = time.thread_time()
    for _ in range(calls):
        y = fn(x)
        y.backward(dy)
    return (time.thread_time() - t0) / calls


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--p", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ways = {"torch": lambda x: torch.nn.functional.dropout(x, args.p, True), "autopeft": lambda x: dropout(x, args.p)}
    print(f"{platform.processor() or platform.machine()} · torch {torch.__version__} · {args.threads} thread(s) · "
          f"p = {args.p} · medians of {args.repeats} rounds of {args.calls} calls, forward + backward\n")
    print("| tensor | torch ms | autopeft ms | torch / autopeft |")
    print("|---|---:|---:|---:|")
    for label, shape in SHAPES.items():
        x = torch.randn(shape, requires_grad=True)
        dy = torch.randn(shape)
        times: dict[str, list[float]] = {w: [] for w in ways}
        for fn in ways.values():  # warm-up
            time_calls(fn, x, dy, 3)
        for r in range(args.repeats):
            for name in (list(ways) if r % 2 == 0 else list(reversed(ways))):
                times[name].append(time_calls(ways[name], x, dy, args.calls))
        t, a = statistics.median(times["torch"]), statistics.median(times["autopeft"])
        print(f"| {label} | {1e3 * t:.3f} | {1e3 * a:.3f} | {t / a:.2f}x |")


if __name__ == "__main__":
    main()
