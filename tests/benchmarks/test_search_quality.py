"""benchmarks/search_quality.py: seeded starts and the distinct replay, on a small hand-made table (conftest.py)."""

import json
import sys
from pathlib import Path

import optuna
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import search_quality  # noqa: E402


def test_distinct_replay_answers_every_trial_with_another_recorded_plan(tables):
    _, target = tables
    job = ("random", 0, str(target), 12, 1, True, 1)
    distinct = search_quality.run_search(job)
    assert len(set(distinct["rows"])) >= 11  # only an exact repeat of a recorded plan may come back
    nearest = search_quality.run_search(job[:5] + (False, 1))
    assert len(nearest["rows"]) == 12 and len(set(nearest["rows"])) < len(set(distinct["rows"]))


def test_a_batch_keeps_that_many_trials_running_as_workers_would(tables, monkeypatch):
    _, target = tables
    running = []
    ask = optuna.Study.ask

    def counting(self, *args, **kwargs):
        running.append(len(self.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))))
        return ask(self, *args, **kwargs)

    monkeypatch.setattr(optuna.Study, "ask", counting)
    res = search_quality.run_search(("botorch", 0, str(target), 12, 1, False, 3))
    assert len(res["values"]) == len(res["propose_s"]) == 12 and None not in res["values"]
    assert running == [0, 1] + [2] * 10  # every later proposal is made with 2 others pending
    running.clear()
    search_quality.run_search(("botorch", 0, str(target), 5, 1, False, 1))
    assert running == [0] * 5


def test_the_command_writes_the_section_of_its_replay_mode(tables, tmp_path):
    _, target = tables
    doc = tmp_path / "bench.md"
    doc.write_text("# Benchmarks\n\n## Search quality (issue 6)\n\nthe nearest-replay section\n")
    out = tmp_path / "sq.json"
    search_quality.main(["--table", str(target), "--samplers", "random,botorch", "--seeds", "1", "--trials", "12",
                         "--replay", "distinct", "--doc", str(doc), "--plot", "", "--json", str(out), "--batch", "2"])
    text = doc.read_text()
    assert "the nearest-replay section" in text  # the other mode's section is kept
    assert "## Search quality, distinct replay (issue 6)" in text and "not answered this search yet" in text
    assert "| botorch (default) | 1 |" in text and "2 trials are kept running, as 2 workers would" in text
    saved = json.loads(out.read_text())
    assert saved["meta"]["replay"] == "distinct" and {r["sampler"] for r in saved["results"]} == {"random", "botorch"}


def test_a_sensitivity_start_queues_the_seeds_after_the_anchor(tables, monkeypatch):
    import autopeft.sensitivity as sensitivity

    _, target = tables
    monkeypatch.setattr(sensitivity, "measure_ranking", lambda fidelity: [5, 4, 3, 2, 1, 0])
    search_quality._RANKINGS.clear()
    _, space, fidelity = search_quality.replay_setup(str(target))
    study = optuna.create_study(directions=space.directions)
    search_quality.enqueue_sensitivity_seeds(study, space, fidelity, "sensitivity")
    queued = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    expected = sensitivity.sensitivity_seeds(space, [5, 4, 3, 2, 1, 0])
    assert [t.system_attrs["fixed_params"] for t in queued] == expected
    reversed_study = optuna.create_study(directions=space.directions)
    search_quality.enqueue_sensitivity_seeds(reversed_study, space, fidelity, "reversed-sensitivity")
    assert [t.system_attrs["fixed_params"] for t in reversed_study.get_trials()] == \
        sensitivity.sensitivity_seeds(space, [0, 1, 2, 3, 4, 5])
    with pytest.raises(SystemExit, match="unknown start"):
        search_quality.main(["--table", str(target), "--samplers", "random+nothing", "--doc", "", "--seeds", "1"])


def test_the_lead_interval_holds_the_difference_and_separates_only_separate_samples():
    d, lo, hi = search_quality.difference_ci([1.0, 2.0, 3.0, 4.0], [1.5, 2.5, 3.5, 2.0])
    assert d == pytest.approx(0.125) and lo < 0 < hi  # overlapping samples: no difference
    d, lo, hi = search_quality.difference_ci([10.0, 11.0, 12.0], [1.0, 2.0, 1.5])
    assert d == pytest.approx(9.5) and 0 < lo <= d <= hi
    assert search_quality.difference_ci([1.0, 3.0], [2.0, 2.5]) == search_quality.difference_ci([1.0, 3.0], [2.0, 2.5])

    curves = {"a": [[90.0] * 25, [92.0] * 25], "b": [[80.0] * 25, [81.0] * 25], "c": [[90.0] * 25]}
    summary = {"measures": {m: {"curves": curves} for m in search_quality.MEASURES}}
    text = "\n".join(search_quality.difference_lines(summary, [25], "a"))
    assert "| b | +10.5 [" in text and "| c | not run" in text  # one run of c: no interval


def test_a_stored_run_is_summarised_again_for_some_of_its_seeds(tables, tmp_path, capsys):
    _, target = tables
    out = tmp_path / "sq.json"
    search_quality.main(["--table", str(target), "--samplers", "random,botorch", "--seeds", "2", "--trials", "10",
                         "--doc", "", "--plot", "", "--json", str(out)])
    capsys.readouterr()
    saved = json.loads(out.read_text())
    before = search_quality.DEFAULT_DOC.read_text()
    search_quality.main(["--from-json", str(out), "--seed-range", "1-1"])
    text = capsys.readouterr().out
    assert search_quality.DEFAULT_DOC.read_text() == before  # no --doc: the docs are not rewritten
    assert "| random | 1 |" in text and "| botorch (default) | 1 |" in text and "seeds 1-1 of that run" in text
    # the row is seed 1's own hypervolume after 10 trials
    table, _, _ = search_quality.replay_setup(str(target))
    ref, full = search_quality.true_front("project", table.rows)
    seed1 = next(r for r in saved["results"] if r["sampler"] == "random" and r["seed"] == 1)
    hv = search_quality.curve(seed1["values"], "project", ref, full)[9]
    assert f"| random | 1 | {hv:.1f} ± 0.0 [{hv:.1f}-{hv:.1f}] |" in text
    with pytest.raises(SystemExit, match="no search of seeds 5-6"):
        search_quality.main(["--from-json", str(out), "--seed-range", "5-6"])
    with pytest.raises(SystemExit, match="A <= B"):
        search_quality.main(["--from-json", str(out), "--seed-range", "3-1"])
    with pytest.raises(SystemExit):  # a search run takes --seeds
        search_quality.main(["--seed-range", "0-1"])


def test_a_missing_plotting_library_stops_the_run_before_any_search(tables, monkeypatch):
    import importlib.util

    _, target = tables
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    monkeypatch.setattr(search_quality, "run_search", lambda job: pytest.fail("a search ran"))
    with pytest.raises(SystemExit, match=r"matplotlib is not installed.*--plot ''"):
        search_quality.main(["--table", str(target), "--samplers", "random", "--seeds", "1", "--trials", "10",
                             "--doc", "", "--json", ""])
