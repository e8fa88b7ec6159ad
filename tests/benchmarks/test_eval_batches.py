"""benchmarks/eval_batches.py: every budget scores the split alike, against the 16,384-token batches."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import eval_batches  # noqa: E402


def test_each_budget_is_timed_against_the_old_one_and_scores_alike(capsys):
    threads = torch.get_num_threads()
    try:
        eval_batches.main(["--repeats", "1", "--threads", "1", "--budgets", "32", "128",
                           "--set", "eval_examples=24", "max_length=16", "train_examples=8"])
    finally:
        torch.set_num_threads(threads)  # main sets the process's thread count
    out = capsys.readouterr().out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r[0].lstrip("| ") for r in rows] == ["32 tokens", "128 tokens", "16384 tokens", "64 examples"]
    assert rows[2][2] == "1.00x" and rows[2][4] == "1.00x"
    assert len({r[5] for r in rows}) == 1  # the batching changes no score
    assert "its default budget: 1024 tokens" in out and "24 validation examples" in out
