"""benchmarks/trials_per_hour.py: its rows run the same plans, the bf16 control stands outside the chain."""

import sys
from pathlib import Path

import torch

from autopeft.proxy.fidelity import Fidelity

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import trials_per_hour  # noqa: E402

TINY = ["steps=2", "train_examples=32", "eval_examples=16", "batch_size=8", "max_length=16"]


def test_the_baseline_runs_its_loop_under_bf16_autocast_only_when_asked():
    from autopeft.space import SearchSpace, load_space
    from autopeft.proxy.models import load_config, model_dims

    f = Fidelity.build(dict(kv.split("=", 1) for kv in TINY))
    space = SearchSpace(load_space("full"), model_dims(load_config(f.model)))
    plain, mixed = trials_per_hour.PeftBaseline(f, space), trials_per_hour.PeftBaseline(f, space, bf16=True)
    with plain.autocast():
        assert not torch.is_autocast_enabled("cpu")
    with mixed.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_rows_report_one_table_with_the_control_outside_the_chain(capsys):
    threads = torch.get_num_threads()
    try:
        trials_per_hour.main(["--plans", "2", "--repeats", "1", "--threads", "1",
                              "--only", "baseline", "buckets", "pooled", "bf16", "baseline-bf16", "--set", *TINY])
    finally:
        torch.set_num_threads(threads)  # main sets the process's thread count
    out = capsys.readouterr().out
    table = out.split("the same in trials per CPU-hour")[0].split("per plan, validation score")[0]
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in table.splitlines()
            if line.startswith("| ") and "---" not in line and not line.startswith("| row ")}
    assert list(rows) == [trials_per_hour.LABELS[n] for n in ("baseline", "buckets", "pooled", "bf16", "baseline-bf16")]
    control = rows[trials_per_hour.LABELS["baseline-bf16"]]
    assert control[4] == "-"  # no "x row above": it is not a step of the chain
    assert rows[trials_per_hour.LABELS["bf16"]][4] != "-"
    for cells in rows.values():
        assert 0.0 <= float(cells[5]) <= 1.0  # mean score
    shares = next(line for line in table.splitlines() if line.startswith("share of the seconds"))
    assert "+ pooled token only" in shares and "+ bf16 autocast" in shares and "control" not in shares
    per_plan = out.split("per plan, validation score / final training loss:")[1].split("the same in")[0]
    lines = [line for line in per_plan.splitlines() if line.startswith("| ") and "---" not in line]
    assert lines[0] == "| plan | baseline | buckets | pooled | bf16 | baseline-bf16 |" and len(lines) == 3
    for line in lines[1:]:
        for cell in line.strip("| ").split(" | ")[1:]:
            score, loss = (float(v) for v in cell.split(" / "))
            assert 0.0 <= score <= 1.0 and loss > 0


def test_the_adamw_control_row_trains_with_torchs_default_optimizer(monkeypatch):
    from autopeft.proxy.train import ProxyTrainer

    kinds = []
    make = ProxyTrainer.make_optimizer

    def spy(self, model):
        opt, sched = make(self, model)
        kinds.append(bool(opt.defaults.get("fused")))
        return opt, sched

    monkeypatch.setattr(ProxyTrainer, "make_optimizer", spy)
    f = Fidelity.build(dict(kv.split("=", 1) for kv in TINY))
    from autopeft.space import SearchSpace, load_space
    from autopeft.proxy.models import load_config, model_dims

    space = SearchSpace(load_space("full"), model_dims(load_config(f.model)))
    plans, _ = trials_per_hour.draw_plans(space, 1, 0, True)
    trials_per_hour.autopeft_row(f)(plans)
    trials_per_hour.autopeft_row(f, fused_adamw=False)(plans)
    assert kinds == [True, False]
    assert "pooled-adamw" in trials_per_hour.CONTROLS


def test_the_pooled_ffn_control_keeps_every_query(monkeypatch):
    from autopeft.proxy import pooled
    from autopeft.proxy.fidelity import Fidelity
    from autopeft.proxy.models import load_config, model_dims
    from autopeft.space import SearchSpace, load_space

    cuts = []
    cut = pooled.cut_last_block

    def spy(model, queries=True):
        done = cut(model, queries)
        cuts.append(pooled.queries_cut(model))
        return done

    monkeypatch.setattr(pooled, "cut_last_block", spy)
    f = Fidelity.build(dict(kv.split("=", 1) for kv in TINY)).model_copy(update={"pooled_only": True})
    space = SearchSpace(load_space("full"), model_dims(load_config(f.model)))
    plans, _ = trials_per_hour.draw_plans(space, 1, 0, True)
    trials_per_hour.autopeft_row(f)(plans)
    n = len(cuts)
    trials_per_hour.autopeft_row(f, pooled_queries=False)(plans)
    assert n and all(cuts[:n]) and not any(cuts[n:])
    assert "pooled-ffn" in trials_per_hour.CONTROLS


def test_the_dropout_and_between_controls_turn_their_option_off(monkeypatch):
    from autopeft.proxy.fidelity import Fidelity
    from autopeft.proxy.models import load_config, model_dims
    from autopeft.proxy.train import ProxyTrainer
    from autopeft.space import SearchSpace, load_space

    seen = []
    run = ProxyTrainer.run

    def spy(self, plan, on_step=None):
        seen.append((self.fast_dropout, self.cache_between))
        return run(self, plan, on_step)

    monkeypatch.setattr(ProxyTrainer, "run", spy)
    f = Fidelity.build(dict(kv.split("=", 1) for kv in TINY))
    space = SearchSpace(load_space("full"), model_dims(load_config(f.model)))
    plans, _ = trials_per_hour.draw_plans(space, 1, 0, True)
    for kw in ({}, {"fast_dropout": False}, {"cache_between": False}):
        trials_per_hour.autopeft_row(f, **kw)(plans)
    assert seen == [(True, True), (False, True), (True, False)]
    assert {"pooled-dropout", "pooled-between"} <= set(trials_per_hour.CONTROLS)
