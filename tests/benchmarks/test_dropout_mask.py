"""benchmarks/dropout_mask.py: torch's dropout and autopeft's, side by side on each tensor."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import dropout_mask  # noqa: E402


def test_every_tensor_is_timed_both_ways(capsys):
    threads = torch.get_num_threads()
    try:
        dropout_mask.main(["--repeats", "2", "--calls", "2", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)  # main sets the process's thread count
    out = capsys.readouterr().out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r[0].lstrip("| ") for r in rows] == list(dropout_mask.SHAPES)
    for row in rows:
        torch_ms, ours_ms, ratio = float(row[1]), float(row[2]), float(row[3].rstrip(" |x"))
        assert torch_ms > 0 and ours_ms > 0 and abs(ratio - torch_ms / ours_ms) < 0.01 * ratio + 0.01
