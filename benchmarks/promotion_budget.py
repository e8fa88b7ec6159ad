"""Hypervolume per CPU-hour with and without promotion, replayed from tables of the same plans at two fidelities.

    python benchmarks/promotion_budget.py --low TABLE --high TABLE [--fraction 0.33]

Both tables come from ``benchmarks/build_table.py`` on one machine (their ``wall_time`` columns are its seconds):
``--low`` at a cheap fidelity (``--set steps=30``), ``--high`` at the fidelity the front is reported at. On the
plans both tables completed, in the table's (seeded, random) order:

* *without promotion*: every plan is trained at the high fidelity, one after another;
* *with promotion*: every plan is trained at the low fidelity first; then the best ``--fraction`` of them, ordered
  as ``autopeft promote`` orders trials (Pareto fronts of (score, trainable %) first, then by score:
  :func:`autopeft.promote.front_ranks`), are trained at the high fidelity, best first.

Only high-fidelity results count towards the front (a promoted search reports its top rung). Reported: the
hypervolume of (score up, trainable % down) in % of the front of every high-fidelity plan, on the two measures of
``benchmarks/search_quality.py``, at the CPU-hours the promoted search spent in all, and what the search without
promotion had reached at that same budget. A replay of recorded runs: it says what promotion buys on these plans
and this machine, not on a search whose proposals depend on earlier results.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def rows(path: str | Path, code: str | None = None) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(header, plan id -> completed row) in file order, only rows trained by ``code`` when given; read as the
    replay objective reads a table."""
    from autopeft.proxy.replay import read_table

    header, all_rows = read_table(path)
    return header, {r["id"]: r for r in all_rows
                    if r.get("state") == "COMPLETE" and (code is None or r.get("code_version") == code)}


def promotion_order(low: list[dict[str, Any]]) -> list[int]:
    """Indices of ``low``'s rows, most promising first, as ``autopeft promote`` ranks trials."""
    import torch

    from autopeft.promote import front_ranks

    values = torch.tensor([[r["score"], -r["trainable_pct"]] for r in low], dtype=torch.double)  # maximise both
    ranks = front_ranks(values)
    return sorted(range(len(low)), key=lambda i: (ranks[i], -low[i]["score"], i))


def curves(low: dict[str, dict], high: dict[str, dict], fraction: float):
    """Two lists of (CPU seconds so far, high-fidelity rows so far): without and with promotion."""
    shared = [k for k in high if k in low]
    plain, spent = [], 0.0
    for k in shared:
        spent += high[k]["wall_time"]
        plain.append((spent, [high[j] for j in shared[: len(plain) + 1]]))
    spent = sum(low[k]["wall_time"] for k in shared)
    order = promotion_order([low[k] for k in shared])
    chosen = [shared[i] for i in order[: max(1, math.ceil(fraction * len(shared)))]]
    promoted, done = [(spent, [])], []
    for k in chosen:
        spent += high[k]["wall_time"]
        done.append(high[k])
        promoted.append((spent, list(done)))
    return plain, promoted


def at_budget(curve, seconds: float) -> list[dict]:
    """The rows a curve had reached within ``seconds``."""
    reached = [rs for t, rs in curve if t <= seconds + 1e-9]
    return reached[-1] if reached else []


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--low", required=True, help="table at the cheap fidelity")
    ap.add_argument("--high", required=True, help="table at the fidelity the front is reported at")
    ap.add_argument("--fraction", type=float, default=0.33, help="share of the plans promoted (autopeft promote)")
    ap.add_argument("--high-code", default=None, metavar="VERSION",
                    help="only the --high rows trained by this code version (a table continued at another time, "
                    "under another load, has rows whose seconds are not comparable)")
    args = ap.parse_args(argv)
    if not 0 < args.fraction <= 1:
        sys.exit(f"--fraction: {args.fraction} is not in (0, 1]; pass e.g. 0.33 for the best third")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import search_quality as sq

    (lh, low), (hh, high) = rows(args.low), rows(args.high, args.high_code)
    if lh.get("device", "cpu") != hh.get("device", "cpu"):  # tables from before the header named it: CPU
        sys.exit(f"--low was built on {lh.get('device')!r} and --high on {hh.get('device')!r}: their seconds differ")
    plain, promoted = curves(low, high, args.fraction)
    everything = [high[k] for k in high if k in low]
    if len(everything) < 2:
        sys.exit(f"only {len(everything)} plans in both tables{' by code ' + args.high_code if args.high_code else ''}")
    budget = promoted[-1][0]
    print(f"{len(everything)} plans in both tables · low: {lh['fidelity']['steps']} steps, high: "
          f"{hh['fidelity']['steps']} steps, on {hh.get('device', 'cpu')} · promoted: {len(promoted[-1][1])} "
          f"(fraction {args.fraction:g})\n")
    print("| measure | search | CPU-hours | high-fidelity plans trained | hypervolume, % of all plans' front |")
    print("|---|---|---:|---:|---:|")
    for measure in sq.MEASURES:
        ref, full = sq.true_front(measure, everything)

        def hv(rs: list[dict]) -> float:
            return 100 * sq.hypervolume([sq.to_point(measure, r["score"], r["trainable_pct"]) for r in rs], ref) / full

        same = at_budget(plain, budget)
        print(f"| {measure} | with promotion | {budget / 3600:.2f} | {len(promoted[-1][1])} | {hv(promoted[-1][1]):.1f} |")
        print(f"| {measure} | without, same budget | {budget / 3600:.2f} | {len(same)} | {hv(same):.1f} |")
        print(f"| {measure} | without, every plan | {plain[-1][0] / 3600:.2f} | {len(everything)} | 100.0 |")


if __name__ == "__main__":
    main()
