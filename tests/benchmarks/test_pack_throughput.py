"""benchmarks/pack_throughput.py: three ways over the same plans; worker processes train each plan as alone."""

import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import pack_throughput  # noqa: E402

TINY = ["steps=2", "train_examples=32", "eval_examples=16", "batch_size=8", "max_length=16"]


def test_processes_row_trains_every_plan_as_one_at_a_time(capsys):
    threads = torch.get_num_threads()
    try:
        pack_throughput.main(["--plans", "2", "--pack", "2", "--procs", "2", "--repeats", "1", "--threads", "1",
                              "--set", *TINY])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    rows = [line.split("|")[1].strip() for line in out.splitlines() if re.match(r"\| (one|pack|2 proc)", line)]
    assert rows == ["one at a time", "pack 2", "2 processes"]
    diff = re.search(r"2 processes vs one at a time: validation score ([\d.]+), final training loss ([\d.]+) "
                     r"\(2 plans\)", out)
    assert diff and float(diff.group(1)) == 0.0 and float(diff.group(2)) == 0.0


def test_procs_must_fit_the_plans():
    with pytest.raises(SystemExit):
        pack_throughput.main(["--plans", "2", "--procs", "3"])


def test_graphs_need_cuda(capsys):
    with pytest.raises(SystemExit):
        pack_throughput.main(["--plans", "2", "--graphs", "--device", "cpu"])
    assert "--graphs: CUDA graphs need --device cuda" in capsys.readouterr().err
