"""benchmarks/fidelity_rank.py: Kendall's tau between tables of the same plans, and what a promotion keeps."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import fidelity_rank


def _table(path, scores, steps, seed=0, cut=False):
    header = {"kind": "header", "fidelity": {"steps": steps, "batch_size": 16}, "space_yaml": "name: s",
              "plan_seed": seed, "device": "cpu"}
    lines = [json.dumps(header)] + [json.dumps({"id": k, "state": "COMPLETE", "score": v, "train_loss": 1 - v})
                                    for k, v in scores.items()]
    lines.append(json.dumps({"id": "failed", "state": "FAIL", "reason": "nan"}))
    text = "\n".join(lines) + "\n"
    path.write_text(text + ('{"id": "cut", "sta' if cut else ""))
    return path


def test_identical_rankings_give_tau_one_and_keep_the_whole_best_third():
    top = {f"p{i}": i / 10 for i in range(9)}
    c = fidelity_rank.compare({k: 2 * v for k, v in top.items()}, top)
    assert c["n"] == 9 and c["tau"] == pytest.approx(1.0) and (c["kept"], c["of"]) == (3, 3)


def test_reversed_rankings_give_tau_minus_one_and_keep_nothing():
    top = {f"p{i}": i / 10 for i in range(9)}
    c = fidelity_rank.compare({k: -v for k, v in top.items()}, top)
    assert c["tau"] == pytest.approx(-1.0) and c["kept"] == 0


def test_only_plans_both_tables_completed_count_and_ties_are_tau_b():
    top = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6, "only-top": 0.5}
    low = {"a": 0.57, "b": 0.57, "c": 0.6, "d": 0.5, "only-low": 0.1}  # a tie, as at the majority-class score
    c = fidelity_rank.compare(low, top)
    assert c["n"] == 4
    # tau-b by hand: of 6 pairs, (a,b) tied in low only; concordant (a,d),(b,d),(c,d) = 3; discordant (a,c),(b,c) = 2
    assert c["tau"] == pytest.approx((3 - 2) / ((6 - 1) * 6) ** 0.5)
    with pytest.raises(ValueError, match="3"):
        fidelity_rank.compare({"a": 1.0, "x": 2.0}, top)


def test_the_command_reads_tables_skips_cut_lines_and_refuses_another_plan_set(tmp_path, capsys):
    scores = {f"p{i}": i / 10 for i in range(6)}
    top = _table(tmp_path / "top.jsonl", scores, 120)
    low = _table(tmp_path / "low.jsonl", {k: v / 2 for k, v in scores.items()}, 30, cut=True)
    assert fidelity_rank.scores(low)[1] == {k: v / 2 for k, v in scores.items()}
    fidelity_rank.main([str(low), "--top", str(top)])
    out = capsys.readouterr().out
    assert "| `low.jsonl` | 30 steps x 16 on cpu | 6 | 1.000 |" in out and "2 of 2 | 1.000 | 2 of 2 |" in out
    assert fidelity_rank.scores(low, "train_loss")[1]["p0"] == 1.0
    other = _table(tmp_path / "other.jsonl", scores, 30, seed=1)
    with pytest.raises(SystemExit, match="plan_seed"):
        fidelity_rank.main([str(other), "--top", str(top)])
