"""benchmarks/warm_start.py on two small hand-made replay tables (conftest.py)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import warm_start  # noqa: E402

def test_reach_counts_trials_until_the_goal_or_one_past_the_end():
    assert warm_start.reach([1.0, 2.0, 3.0], 2.0) == 2
    assert warm_start.reach([1.0, 2.0, 3.0], 0.5) == 1
    assert warm_start.reach([1.0, 2.0, 3.0], 3.5) == 4


def test_the_warm_study_starts_with_the_source_plans(tables):
    source, target = map(str, tables)
    out = warm_start.run_seed((0, source, target, 10, 12, 4, False, ()))
    assert 1 <= out["seeded"] <= 4
    assert len(out["cold"]) == len(out["warm"]) == 12
    # both start with the head-only anchor; then the cold study samples, the warm one replays the seeds
    assert out["cold"][0] == out["warm"][0]
    assert out["cold"][1:1 + out["seeded"]] != out["warm"][1:1 + out["seeded"]]


def test_the_prior_arm_queues_nothing_and_hands_the_source_to_the_sampler(tables, monkeypatch):
    given = []
    give = warm_start.give_prior
    monkeypatch.setattr(warm_start, "give_prior", lambda study, obs: (given.append(len(obs)), give(study, obs)))
    source, target = map(str, tables)
    out = warm_start.run_seed((0, source, target, 10, 12, 4, False, ("prior",)))
    assert given == [10] and len(out["prior"]) == 12  # every source result, one prior study
    assert out["prior"][:9] == out["cold"][:9]  # anchor and start-up as the cold study's: nothing queued


def test_the_command_prints_both_studies_per_measure(tables, capsys):
    source, target = map(str, tables)
    warm_start.main(["--source", source, "--target", target, "--seeds", "2", "--trials", "12",
                     "--source-trials", "10", "--top", "4"])
    out = capsys.readouterr().out
    for measure in ("project", "log-nadir"):
        for name in ("cold", "warm"):
            assert f"| {measure} | {name} | " in out
    assert "seeds 0-1" in out and "14 plans" in out
    with pytest.raises(SystemExit, match="--trials"):
        warm_start.main(["--source", source, "--target", target, "--trials", "1"])


def test_a_study_of_a_shallower_model_seeds_one_of_a_deeper_one(tables, shallow_table):
    out = warm_start.run_seed((0, str(shallow_table), str(tables[1]), 10, 12, 4, True, ()))
    assert 1 <= out["seeded"] <= 4
    assert len(out["warm"]) == 12
    assert out["cold"][1:1 + out["seeded"]] != out["warm"][1:1 + out["seeded"]]
