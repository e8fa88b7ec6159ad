"""benchmarks/promotion_budget.py: hypervolume per CPU-hour with and without promotion, from two tables."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import promotion_budget


def _table(path, scores, wall, steps, device="cpu"):
    header = {"kind": "header", "fidelity": {"steps": steps}, "device": device}
    rows = [{"id": f"p{i}", "state": "COMPLETE", "score": s, "trainable_pct": 0.1 * (i + 1), "wall_time": wall}
            for i, s in enumerate(scores)]
    path.write_text("\n".join(json.dumps(r) for r in [header, *rows, {"id": "x", "state": "FAIL"}]) + "\n")
    return path


SCORES = [0.57, 0.60, 0.80, 0.57, 0.75, 0.70]  # p2 and p4 are the best at the high fidelity


def test_promotion_spends_the_cheap_pass_then_trains_the_best_third_in_promote_order(tmp_path):
    low = promotion_budget.rows(_table(tmp_path / "low.jsonl", [s / 2 for s in SCORES], 1.0, 30))[1]
    high = promotion_budget.rows(_table(tmp_path / "high.jsonl", SCORES, 10.0, 120))[1]
    plain, promoted = promotion_budget.curves(low, high, 0.33)
    assert [t for t, _ in plain] == [10.0 * k for k in range(1, 7)]
    assert [t for t, _ in promoted] == [6.0, 16.0, 26.0]  # 6 cheap runs, then ceil(0.33 x 6) = 2 promoted
    # the Pareto front of (score, -trainable %) at the low fidelity is p0, p1, p2 (cheapest first, each better):
    # by front then score, p2 comes first, then p1
    assert [r["id"] for r in promoted[-1][1]] == ["p2", "p1"]
    assert [r["id"] for r in promotion_budget.at_budget(plain, 26.0)] == ["p0", "p1"]
    assert promotion_budget.at_budget(plain, 5.0) == []


def test_the_command_prints_both_searches_and_refuses_tables_of_two_devices(tmp_path, capsys):
    low = _table(tmp_path / "low.jsonl", [s / 2 for s in SCORES], 1.0, 30)
    high = _table(tmp_path / "high.jsonl", SCORES, 10.0, 120)
    promotion_budget.main(["--low", str(low), "--high", str(high)])
    out = capsys.readouterr().out
    assert "6 plans in both tables" in out and "| project | without, every plan | 0.02 | 6 | 100.0 |" in out
    gpu = _table(tmp_path / "gpu.jsonl", SCORES, 1.0, 120, device="cuda: card")
    with pytest.raises(SystemExit, match="seconds differ"):
        promotion_budget.main(["--low", str(low), "--high", str(gpu)])
    with pytest.raises(SystemExit, match="only 0 plans in both tables by code v9"):  # no row of that build
        promotion_budget.main(["--low", str(low), "--high", str(high), "--high-code", "v9"])
    with pytest.raises(SystemExit, match="fraction"):
        promotion_budget.main(["--low", str(low), "--high", str(high), "--fraction", "0"])
