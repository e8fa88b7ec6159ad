"""Scale-out, end to end: the real CLI (proposer and workers as separate processes) on real databases.

Each test checks the two promises of the queue: every trial runs exactly once (the workers' own counts
add up to the study's COMPLETE trials), and nothing is lost when a worker or the database fails.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from autopeft.study.storage import open_storage
from autopeft.study.study import load

from serving import free_port

SYNTHETIC = ["--objective", "synthetic", "--space", "autopeft"]
FAST_PROXY = ["--steps", "40", "--train-examples", "64", "--eval-examples", "32", "--batch-size", "8", "--max-length", "32"]


def _env() -> dict:
    env = dict(os.environ)
    env.update({"COLUMNS": "200", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"})
    env.pop("AUTOPEFT_STORAGE", None)
    return env


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "autopeft", *args], capture_output=True, text=True, env=_env(),
                          timeout=timeout)
    assert proc.returncode == 0, f"autopeft {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def start(*args: str, log: Path) -> subprocess.Popen:
    handle = open(log, "w")
    return subprocess.Popen([sys.executable, "-m", "autopeft", *args], stdout=handle, stderr=subprocess.STDOUT,
                            env=_env(), text=True)


def finish(procs: list[subprocess.Popen], logs: list[Path], timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        raise AssertionError("processes did not finish:\n" + "\n---\n".join(log.read_text()[-3000:] for log in logs))
    outs = [log.read_text() for log in logs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, f"exit {p.returncode}:\n{out[-3000:]}"
    return outs


def worker_completes(outs: list[str]) -> int:
    """Trials the workers say they completed, added up."""
    return sum(int(m.group(1)) for out in outs for m in re.finditer(r"worker finished: (\d+) complete", out))


def wait_for(condition, timeout: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def serve(url: str, name: str, n_trials: int, n_workers: int, tmp_path: Path, *, trial_seconds: float,
          during=None, timeout: float = 600) -> list[str]:
    """Create a synthetic study, run one proposer and ``n_workers`` workers on it until it holds
    ``n_trials`` COMPLETE trials; ``during()`` runs while they work. Returns the workers' output."""
    cli("run", *SYNTHETIC, "--trial-seconds", str(trial_seconds), "--workers", "0", "--study", name, "--storage", url)
    store = ["--study", name, "--storage", url]
    logs = [tmp_path / "proposer.log"] + [tmp_path / f"worker{i}.log" for i in range(n_workers)]
    procs = [start("propose", *store, "--trials", str(n_trials), "--sampler", "random", "--poll", "0.2", log=logs[0])]
    procs += [start("worker", *store, "--trials", str(n_trials), log=log) for log in logs[1:]]
    if during is not None:
        during()
    outs = finish(procs, logs, timeout)
    assert "proposer finished" in outs[0]
    return outs[1:]


def assert_exactly(url: str, name: str, n_trials: int, worker_outs: list[str]) -> None:
    st = load(open_storage(url), name)
    assert st.count(TrialState.COMPLETE) == n_trials
    assert st.count(TrialState.RUNNING) == 0
    assert worker_completes(worker_outs) == n_trials  # no trial ran twice
    for t in st.trials((TrialState.COMPLETE,)):
        assert t.user_attrs["metrics"]["metric"] == "synthetic" and t.user_attrs["worker"]


@pytest.mark.postgres
def test_eight_workers_and_a_proposer_on_postgres(postgres_url, study_name, tmp_path):
    outs = serve(postgres_url, study_name, 200, 8, tmp_path, trial_seconds=0.05)
    assert_exactly(postgres_url, study_name, 200, outs)
    assert load(open_storage(postgres_url), study_name).count(TrialState.FAIL) == 0


def test_four_workers_and_a_proposer_on_sqlite(tmp_path, study_name):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    outs = serve(url, study_name, 200, 4, tmp_path, trial_seconds=0.05)
    assert_exactly(url, study_name, 200, outs)


def test_one_worker_command_runs_several_processes(tmp_path, study_name):
    """`autopeft worker --processes 3`: three workers (three ids), each reporting; every trial runs exactly once."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    cli("run", *SYNTHETIC, "--trial-seconds", "0.2", "--workers", "0", "--study", study_name, "--storage", url)
    out = cli("worker", "--study", study_name, "--storage", url, "--trials", "12", "--sampler", "random",
              "--processes", "3").stdout
    assert out.count("worker finished:") == 3
    assert_exactly(url, study_name, 12, [out])
    st = load(open_storage(url), study_name)
    assert len({t.user_attrs["worker"] for t in st.trials((TrialState.COMPLETE,))}) > 1


def test_several_process_worker_refuses_a_missing_study_before_starting(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    proc = subprocess.run([sys.executable, "-m", "autopeft", "worker", "--study", "nope", "--storage", url,
                           "--processes", "2"], capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 2
    assert "no study named 'nope'" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout


def test_sigterm_to_a_several_process_worker_hands_every_trial_back(tmp_path, study_name):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    cli("run", *SYNTHETIC, "--trial-seconds", "60", "--workers", "0", "--study", study_name, "--storage", url)
    log = tmp_path / "worker.log"
    proc = start("worker", "--study", study_name, "--storage", url, "--sampler", "random", "--processes", "2", log=log)
    st = load(open_storage(url), study_name)
    running = wait_for(lambda: len(r := [t for t in st.trials((TrialState.RUNNING,)) if "plan" in t.user_attrs]) == 2
                       and r, 180, "both workers to start a trial")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()
    trials = {t.number: t for t in st.trials()}
    for t in running:
        assert trials[t.number].state == TrialState.FAIL and "handed back" in trials[t.number].user_attrs["fail_reason"]
    assert st.count(TrialState.RUNNING) == 0
    assert log.read_text().count("worker finished: 0 complete") == 2


def test_ctrl_c_to_a_several_process_worker_stops_every_worker_and_counts_their_trials(tmp_path, study_name):
    """Ctrl-C in a terminal signals the whole foreground process group: each worker hands its running trial back,
    still reports the trials it completed, and the command exits 0."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    cli("run", *SYNTHETIC, "--trial-seconds", "3", "--workers", "0", "--study", study_name, "--storage", url)
    log = tmp_path / "worker.log"
    with open(log, "w") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "autopeft", "worker", "--study", study_name, "--storage", url,
                                 "--sampler", "random", "--processes", "2"], stdout=handle, stderr=subprocess.STDOUT,
                                env=_env(), text=True, start_new_session=True,
                                # as from a terminal, whatever this test runs under (a background job ignores SIGINT)
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    st = load(open_storage(url), study_name)
    wait_for(lambda: st.count(TrialState.COMPLETE) >= 3, 180, "the workers to complete some trials")
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) == 0, log.read_text()
    out = log.read_text()
    assert out.count("worker finished:") == 2 and out.count("stopped by signal") == 2
    # Counted although a signal stopped them. (A signal that lands while a result is being written can leave that
    # one trial out of its worker's count, never out of the study.)
    assert 3 <= st.count(TrialState.COMPLETE) and 1 <= worker_completes([out]) <= st.count(TrialState.COMPLETE)
    assert st.count(TrialState.RUNNING) == 0
    assert all("handed back" in t.user_attrs["fail_reason"] for t in st.trials((TrialState.FAIL,)))


def test_kill_9_mid_trial_is_retried_by_another_worker(tmp_path, study_name):
    """A worker killed while training a real proxy trial: its trial is failed by heartbeat, re-queued
    and completed by the other worker; the study ends with exactly the asked number of trials."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    cli("run", "--workers", "0", "--study", study_name, "--storage", url, *FAST_PROXY)
    fast_dead = ["--heartbeat-interval", "1", "--grace-period", "4", "--sampler", "random"]
    store = ["--study", study_name, "--storage", url, "--trials", "2", *fast_dead]
    victim = start("worker", *store, log=tmp_path / "victim.log")
    st = load(open_storage(url), study_name)
    running = wait_for(lambda: [t for t in st.trials((TrialState.RUNNING,)) if "plan" in t.user_attrs], 120,
                       "the victim to start training")
    time.sleep(1.5)  # well into training
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed = running[0].number
    outs = finish([start("worker", *store, log=tmp_path / "rescuer.log")], [tmp_path / "rescuer.log"], 600)
    trials = {t.number: t for t in st.trials()}
    assert trials[killed].state == TrialState.FAIL
    assert "no heartbeat" in trials[killed].user_attrs["fail_reason"]
    copies = [t for t in trials.values() if t.system_attrs.get("failed_trial") == killed]
    assert len(copies) == 1 and copies[0].state == TrialState.COMPLETE and copies[0].params == trials[killed].params
    assert st.count(TrialState.COMPLETE) == 2 == worker_completes(outs)


def test_a_pack_worker_trains_queued_trials_together(tmp_path, study_name):
    """`autopeft worker --pack 3` on the packaged MiniLM: the queued trials train as one pack, each reported."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    cli("run", "--workers", "0", "--study", study_name, "--storage", url, *FAST_PROXY[2:], "--steps", "8")
    cli("propose", "--study", study_name, "--storage", url, "--n", "2", "--sampler", "random")  # + the anchor: 3
    out = cli("worker", "--study", study_name, "--storage", url, "--trials", "3", "--pack", "3", timeout=600).stdout
    st = load(open_storage(url), study_name)
    done = st.trials((TrialState.COMPLETE,))
    assert worker_completes([out]) == 3 == len(done)
    assert all(t.user_attrs["packed_with"] == [0, 1, 2] for t in done)
    assert len({t.values[0] for t in done} | {t.values[1] for t in done}) > 1  # three different plans, scored


def test_sigterm_hands_the_trial_back_and_exits_0(tmp_path, study_name):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    cli("run", *SYNTHETIC, "--trial-seconds", "60", "--workers", "0", "--study", study_name, "--storage", url)
    log = tmp_path / "worker.log"
    proc = start("worker", "--study", study_name, "--storage", url, "--sampler", "random", log=log)
    st = load(open_storage(url), study_name)
    trial = wait_for(lambda: [t for t in st.trials((TrialState.RUNNING,)) if "plan" in t.user_attrs], 120,
                     "the worker to start a trial")[0]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()
    trials = {t.number: t for t in st.trials()}
    assert trials[trial.number].state == TrialState.FAIL
    assert "handed back" in trials[trial.number].user_attrs["fail_reason"]
    copies = [t for t in trials.values() if t.system_attrs.get("failed_trial") == trial.number]
    assert len(copies) == 1 and copies[0].state == TrialState.WAITING
    assert copies[0].params == trial.params
    assert copies[0].system_attrs["retry_history"] == []  # a hand-back is not a retry
    assert "handed back" in log.read_text()
    # The proposer service stops cleanly on SIGTERM too.
    plog = tmp_path / "proposer.log"
    proposer = start("propose", "--study", study_name, "--storage", url, "--sampler", "random", log=plog)
    wait_for(lambda: "proposing for" in plog.read_text(), 120, "the proposer to start")
    proposer.send_signal(signal.SIGTERM)
    assert proposer.wait(timeout=60) == 0 and "stopped by signal" in plog.read_text()


@pytest.mark.postgres
def test_passwords_never_printed(postgres_url, study_name, tmp_path):
    """The test server trusts local connections, so any password gets in: give one and look for it."""
    url = postgres_url.replace("://postgres@", "://postgres:Sup3rSecretPw@")
    assert "Sup3rSecretPw" in url
    outs = [cli("run", *SYNTHETIC, "--workers", "0", "--study", study_name, "--storage", url).stdout,
            cli("propose", "--study", study_name, "--storage", url, "--n", "2", "--sampler", "random").stdout,
            cli("worker", "--study", study_name, "--storage", url, "--max-trials", "2").stdout,
            cli("study", "status", study_name, "--storage", url).stdout,
            cli("study", "list", "--storage", url).stdout]
    assert "postgres:***@" in outs[0] and "postgres:***@" in outs[3]
    assert not any("Sup3rSecretPw" in out for out in outs)


# --------------------------------------------------------------------------- a PostgreSQL of our own
class PrivatePostgres:
    """A throwaway PostgreSQL cluster that this test may stop and start (the shared one must stay up)."""

    def __init__(self):
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: [int(x) for x in re.findall(r"\d+", str(p))])
        found = shutil.which("pg_ctl")
        pg_ctl = bins[-1] if bins else (Path(found) if found else None)
        if pg_ctl is None:
            raise FileNotFoundError("pg_ctl")
        self.bin = pg_ctl.parent
        self.port = free_port()
        self.data = Path(tempfile.mkdtemp(prefix="autopeft-pg-"))
        self.as_postgres = os.geteuid() == 0  # the server refuses to run as root
        if self.as_postgres:
            shutil.chown(self.data, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres")
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin / tool), *args]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.data / "log"), "-w", "-o",
                  f"-p {self.port} -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=100", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.data, ignore_errors=True)


@pytest.fixture
def private_postgres():
    try:
        pg = PrivatePostgres()
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL server binaries are needed for the restart test: {exc}")
        pytest.skip(f"no PostgreSQL server binaries here: {exc}")
    pg.start()
    yield pg
    pg.remove()


@pytest.mark.postgres
def test_postgres_restart_loses_nothing(private_postgres, study_name, tmp_path):
    """PostgreSQL goes away for 60 s while a proposer and 4 workers run; they ride it out and the
    study completes with every trial run once."""
    url = private_postgres.url

    def restart_midway() -> None:
        st = load(open_storage(url), study_name)
        wait_for(lambda: st.count(TrialState.COMPLETE) >= 10, 300, "10 complete trials before the restart")
        private_postgres.stop()
        time.sleep(60)
        private_postgres.start()

    outs = serve(url, study_name, 60, 4, tmp_path, trial_seconds=0.2, during=restart_midway)
    assert_exactly(url, study_name, 60, outs)
    assert load(open_storage(url), study_name).count(TrialState.FAIL) == 0
    assert any("database unreachable" in (tmp_path / f"worker{i}.log").read_text() for i in range(4))
