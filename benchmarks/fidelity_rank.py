"""How well a cheap fidelity ranks plans: Kendall's tau of validation scores between tables of the same plans.

    python benchmarks/fidelity_rank.py [--top TABLE] TABLE [TABLE ...]

Every table is one ``benchmarks/build_table.py`` file: the same seeded plan set, trained at one fidelity (``--set
steps=30`` and so on) on one device. Each TABLE is compared with ``--top`` (by default the 305-plan table at the
quickstart fidelity, 120 steps) on the plans both hold and completed. Per table it reports:

* Kendall's tau-b of the validation scores (ties counted, as many plans share the majority-class score), with its
  p-value: what successive halving relies on when it promotes by the cheap score;
* how many of the top fidelity's best third are also in the cheap table's best third: of the plans that deserve
  promotion, those that a promotion of a third by the cheap score (``autopeft promote --fraction 0.33``) carries up;
* the same tau with the cheap table's final training loss (lower is better) in place of its score: a short run
  leaves many plans at one score (the majority class) while their losses still differ.

A table at the *same* fidelity as ``--top`` but trained on another device gives the ceiling: the agreement of two
runs of one fidelity, whose scores differ only by numeric noise. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TOP = ROOT / "benchmarks" / "data" / "table_rotten_tomatoes_minilm_h200.jsonl"


def scores(path: str | Path, column: str = "score") -> tuple[dict[str, Any], dict[str, float]]:
    """(header, plan id -> ``column`` of its completed row) of a table file, read as the replay objective reads it."""
    header, rows = completed(path)
    return header, column_of(rows, column)


def completed(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(header, the completed rows) of a table file."""
    from autopeft.proxy.replay import read_table

    header, rows = read_table(path)
    return header, [r for r in rows if r.get("state") == "COMPLETE"]


def column_of(rows: list[dict[str, Any]], column: str) -> dict[str, float]:
    return {r["id"]: r[column] for r in rows}


def compare(low: dict[str, float], top: dict[str, float]) -> dict[str, Any]:
    """Kendall's tau-b between the scores of the plans both hold, and how many of ``top``'s best third of those are
    in ``low``'s best third (ties broken by plan order)."""
    from scipy.stats import kendalltau

    shared = [k for k in top if k in low]
    if len(shared) < 3:
        raise ValueError(f"only {len(shared)} plans in common: a rank correlation needs at least 3")
    result = kendalltau([low[k] for k in shared], [top[k] for k in shared])  # tau-b: ties in either ranking count
    third = max(1, round(len(shared) / 3))
    best_top = sorted(shared, key=lambda k: -top[k])[:third]
    best_low = set(sorted(shared, key=lambda k: -low[k])[:third])
    return {"n": len(shared), "tau": float(result.statistic), "p": float(result.pvalue),
            "kept": sum(k in best_low for k in best_top), "of": third}


def label(header: dict[str, Any]) -> str:
    f = header.get("fidelity", {})
    return f"{f.get('steps')} steps x {f.get('batch_size')} on {header.get('device', 'cpu')}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("tables", nargs="+", help="tables of the same plans at other fidelities (or devices)")
    ap.add_argument("--top", default=str(DEFAULT_TOP), help="the table of the highest fidelity")
    args = ap.parse_args(argv)
    top_header, top = scores(args.top)
    tables = {path: completed(path) for path in args.tables}  # each file read once
    for key in ("space_yaml", "plan_seed"):
        for path, (header, _) in tables.items():
            if header.get(key) != top_header.get(key):
                sys.exit(f"{path}: made with another {key} than {args.top}; its plans are not the same set")
    print(f"Highest fidelity: `{Path(args.top).name}` ({label(top_header)}, {len(top)} plans)\n")
    print("| table | fidelity | plans in common | Kendall tau-b | p-value | best third kept by a promotion of a third "
          "| tau-b of -train loss | its best third kept |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for path, (header, rows) in tables.items():
        c = compare(column_of(rows, "score"), top)
        loss = compare({k: -v for k, v in column_of(rows, "train_loss").items()}, top)
        print(f"| `{Path(path).name}` | {label(header)} | {c['n']} | {c['tau']:.3f} | {c['p']:.2g} | "
              f"{c['kept']} of {c['of']} | {loss['tau']:.3f} | {loss['kept']} of {loss['of']} |")


if __name__ == "__main__":
    main()
