"""benchmarks/trial_phases.py: phases add up to the wall time, and the operation counts are counted."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import trial_phases  # noqa: E402

TINY = ["steps=2", "train_examples=32", "eval_examples=16", "batch_size=8", "max_length=16"]


def test_the_op_counter_sees_the_backward():
    w = torch.randn(4, 4, requires_grad=True)
    counter = trial_phases._OpCounter()
    loss = (torch.randn(3, 4) @ w).sum()
    with counter:
        loss.backward()
    assert counter.count > 0 and w.grad is not None


def test_phases_and_operation_counts(capsys):
    threads = torch.get_num_threads()
    try:
        trial_phases.main(["--plans", "2", "--threads", "1", "--set", *TINY])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.split("operations per")[0].splitlines()
            if line.startswith("| ") and "---" not in line and not line.startswith("| way ")]
    for way in ("one at a time", "pack 2"):
        phases = [r for r in rows if r[0] == way and r[1]]
        assert {r[2] for r in phases} >= {"build the model", "two evaluations", "training steps (the rest)"}
        wall = float(phases[0][1])
        assert abs(sum(float(r[3]) for r in phases) - wall) < 0.02  # the rest is the wall less the timed phases
        assert [r for r in rows if r[0] == way and r[2] == "median step time per trial"]
    ops = [[c.strip() for c in line.strip("|").split("|")] for line in out.split("operations per")[1].splitlines()
           if line.startswith("| ") and "---" not in line and not line.startswith("| plan ")]
    assert len(ops) == 2
    for row in ops:
        fwd, bwd, opt, total = (int(v) for v in row[-5:-1])
        assert fwd > 0 and bwd > 0 and opt > 0 and total == fwd + bwd + opt
