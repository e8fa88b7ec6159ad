"""End-to-end: the real CLI in subprocesses, against a real SQLite file, training the packaged MiniLM."""

import os
import sqlite3
import subprocess
import sys

import pytest
import yaml
from serving import answers, start_dashboard
from tiny_proxy import save_tiny

ENV = {"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
       **{k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ}}
TINY = ["--steps", "3", "--train-examples", "32", "--eval-examples", "16", "--batch-size", "8", "--max-length", "32"]


def cli(*args, cwd=None, check=True):
    proc = subprocess.run([sys.executable, "-m", "autopeft", *args], capture_output=True, text=True, cwd=cwd,
                          env=ENV, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"autopeft {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def trial_rows(db):
    with sqlite3.connect(db) as con:
        return con.execute("select number, state from trials order by number").fetchall()


@pytest.mark.slow
def test_run_resume_show_export_apply(tmp_path):
    db = tmp_path / "study.db"
    store = ["--storage", f"sqlite:///{db}"]
    opts = ["--pooled-only"]  # a throughput option: stored with the study, asked again on resume
    out = cli("run", "--trials", "2", "--workers", "1", "--sampler", "random", "--study", "s1", *store, *TINY,
              *opts).stdout
    assert "created" in out and "Pareto front of s1" in out and "2 complete" in out
    out = cli("run", "--trials", "3", "--workers", "1", "--sampler", "random", "--study", "s1", *store, *TINY,
              *opts).stdout
    assert "resuming" in out and "3 complete" in out
    assert [s for _, s in trial_rows(db)] == ["COMPLETE"] * 3

    before = trial_rows(db)
    bad = cli("run", "--trials", "4", "--study", "s1", *store, *TINY[:-2], "--max-length", "48", check=False)
    assert bad.returncode == 2 and "max_length: stored 32, asked 48" in bad.stderr and "fix:" in bad.stderr
    assert trial_rows(db) == before

    assert "s1" in cli("study", "list", *store).stdout
    shown = cli("study", "show", "s1", "--all", *store).stdout
    assert "Pareto front of s1" in shown and "all trials" in shown and "pooled token only in the last block" in shown

    best = tmp_path / "best.yaml"
    cli("export", "s1", "--max-params", "100%", "-o", str(best), *store)
    doc = yaml.safe_load(best.read_text())
    assert doc["study"] == "s1" and doc["fidelity"]["steps"] == 3 and "score" in doc["metrics"]
    assert doc["plan"]["num_layers"] == 6
    applied = cli("apply", str(best)).stdout
    assert "applied" in applied and "trainable of" in applied

    queued = cli("propose", "--study", "s1", "--n", "1", "--sampler", "random", *store).stdout
    number = int(queued.split("queued trial ")[1].split(":")[0])
    assert dict(trial_rows(db))[number] == "WAITING"
    worked = cli("worker", "--study", "s1", "--max-trials", "1", "--pack", "2", *store)
    assert "worker finished: 1 complete" in worked.stdout
    assert "note: --pack 2 on a CPU" in worked.stderr and "Use --pack 1" in worked.stderr
    assert dict(trial_rows(db))[number] == "COMPLETE"

    one = tmp_path / "one.yaml"
    cli("export", "s1", "--trial", "1", "-o", str(one), *store)
    assert yaml.safe_load(one.read_text())["trial"] == 1


def test_bad_inputs_give_clear_errors_and_write_nothing(tmp_path):
    db = tmp_path / "none.db"
    store = ["--storage", f"sqlite:///{db}"]
    r = cli("run", "--sampler", "sobol", *store, check=False)
    assert r.returncode == 2 and "--sampler" in r.stderr and "sobol" in r.stderr
    r = cli("run", "--steps", "0", *store, check=False)
    assert r.returncode == 2 and "--steps" in r.stderr
    r = cli("run", "--task", "no_such_task", *store, check=False)
    assert r.returncode == 2 and "no_such_task" in r.stderr
    bad_space = tmp_path / "bad.yaml"
    bad_space.write_text("name: x\nmodules: {lora: {sizes: [0, 8], sites: [attn], rank: 2}}\n")
    r = cli("run", "--space", str(bad_space), *store, check=False)
    assert r.returncode == 2 and "modules.lora.sites" in r.stderr and "modules.lora.rank" in r.stderr
    r = cli("run", "--autocast", "fp16", *store, check=False)  # fp16 needs a GPU
    assert r.returncode == 2 and "--autocast" in r.stderr and "bf16" in r.stderr
    r = cli("run", "--device", "gpu", *store, check=False)
    assert r.returncode == 2 and "--device: 'gpu'" in r.stderr and "cuda:N" in r.stderr and "Traceback" not in r.stderr
    r = cli("run", "--frozen-cache-dtype", "bfloat16", *store, check=False)
    assert r.returncode == 2 and "--frozen-cache-dtype" in r.stderr and "--frozen-cache too" in r.stderr
    llama = save_tiny("llama", tmp_path / "llama")
    r = cli("run", "--pooled-only", "--model", llama, *store, check=False)  # a decoder classifies from its last token
    assert r.returncode == 2 and "--pooled-only" in r.stderr and "'llama'" in r.stderr and "drop --pooled-only" in r.stderr
    assert not db.exists()  # nothing was written for bad input

    r = cli("export", "nope", "-o", str(tmp_path / "x.yaml"), "--max-params", "abc", *store, check=False)
    assert r.returncode == 2 and "--max-params" in r.stderr and "abc" in r.stderr


def test_space_validate(tmp_path):
    out = cli("space", "validate", "autopeft").stdout
    assert "valid" in out and "9 parameters" in out and "44,800 configurations" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodules: {lora: {sizes: [0, 8], sites: [q, gate]}}\n")
    r = cli("space", "validate", str(bad), check=False)
    assert r.returncode == 2 and "modules.lora.sites[1]" in r.stderr and "gate" in r.stderr


@pytest.mark.skipif(os.name != "posix", reason="SIGTERM semantics are POSIX")
def test_dashboard_stops_on_sigterm(tmp_path):
    """`kill` (or `docker stop`) on `autopeft dashboard` stops the server, leaving nothing on the port."""
    import time

    pytest.importorskip("streamlit")
    proc, base = start_dashboard(f"sqlite:///{tmp_path / 'study.db'}", tmp_path / "server.log", ENV)
    try:
        proc.terminate()
        proc.wait(20)
        for _ in range(40):  # a server that outlived the command would keep answering
            if not answers(base):
                break
            time.sleep(0.25)
        assert not answers(base), f"the server still answers at {base} after SIGTERM"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_piped_output_keeps_each_front_row_on_one_line(tmp_path):
    """Without a terminal or $COLUMNS (a log file, `docker logs`), tables are not folded to 80 columns."""
    env = {k: v for k, v in ENV.items() if k != "COLUMNS"}
    proc = subprocess.run([sys.executable, "-m", "autopeft", "run", "--objective", "synthetic", "--trials", "6",
                           "--workers", "1", "--sampler", "random", "--storage", f"sqlite:///{tmp_path / 's.db'}"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("│")]
    assert rows and max(len(r) for r in rows) > 80  # the plans are long: at 80 columns they would fold
    assert not [r for r in rows if r.split("│")[1].strip() == ""]  # no continuation line (empty trial cell)


def test_brackets_in_names_paths_and_errors_print_as_given(tmp_path):
    """A study name, a path or an error message holding "[...]" is printed as it is (rich would read it as a style
    tag: drop it, or fail on a closing tag with a traceback)."""
    store = ["--storage", f"sqlite:///{tmp_path / 's.db'}"]
    r = cli("run", "--task", str(tmp_path / "data[/x].csv"), *store, check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "data[/x].csv" in r.stderr and "does not exist" in r.stderr
    r = cli("run", "--space", str(tmp_path / "[bold]" / "s.yaml"), *store, check=False)
    assert r.returncode == 2 and "[bold]/s.yaml" in r.stderr
    r = cli("run", "--study", "exp[a]", "--objective", "synthetic", "--trials", "1", "--workers", "0", *store)
    assert "study exp[a] (created)" in r.stdout and "autopeft worker --study exp[a]" in r.stdout
    assert "Pareto front of exp[a]" in cli("study", "show", "exp[a]", *store).stdout


def test_every_help_text_shows_in_full():
    """--help renders option and command texts as rich markup: an unescaped "[default: ...]" vanished from them."""
    import typer
    from rich.text import Text

    from autopeft.cli import app

    def texts(cmd, path):
        yield path, cmd.help or ""
        for p in cmd.params:
            yield f"{path} {p.name}", getattr(p, "help", None) or ""
        for name, sub in getattr(cmd, "commands", {}).items():  # a group's commands
            yield from texts(sub, f"{path} {name}")

    checked = 0
    for where, text in texts(typer.main.get_command(app), "autopeft"):
        shown = Text.from_markup(text).plain
        assert shown == text.replace("\\[", "["), f"{where}: help text loses {text!r} -> {shown!r}"
        checked += bool(text)
    assert checked > 50


def test_a_study_for_gpu_workers_is_created_on_a_machine_without_one(tmp_path):
    """--workers 0 trains nothing here: GPU-only options are stored for the workers, which check their own device;
    with workers to start here, the same options are refused before anything is written."""
    db = tmp_path / "s.db"
    store = ["--storage", f"sqlite:///{db}"]
    refused = cli("run", "--study", "g", "--cuda-graphs", "--workers", "1", *store, *TINY, check=False)
    assert refused.returncode == 2 and "--cuda-graphs: CUDA graphs need a CUDA device" in refused.stderr
    assert not db.exists() or not trial_rows(db)
    r = cli("run", "--study", "g", "--cuda-graphs", "--autocast", "fp16", "--workers", "0", *store, *TINY)
    assert "study g (created)" in r.stdout and "autopeft worker --study g" in r.stdout
    shown = cli("study", "show", "g", *store).stdout
    assert "fp16 autocast" in shown and "CUDA graphs" in shown
