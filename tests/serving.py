"""Helpers of the tests that start servers: a free localhost port, and `autopeft dashboard` up and answering."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(base: str) -> bool:
    """Whether the Streamlit server at ``base`` answers its health check."""
    try:
        return urllib.request.urlopen(f"{base}/_stcore/health", timeout=1).read() == b"ok"
    except OSError:
        return False


def start_dashboard(url: str, log: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """`autopeft dashboard` on ``url`` and a free port, its output in ``log``; returns once the server answers
    (the process and its base URL). Fails with the server's log if it exits or does not answer within a minute."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with log.open("w") as handle:  # the child keeps its own copy of the file descriptor
        proc = subprocess.Popen([sys.executable, "-m", "autopeft", "dashboard", "--storage", url, "--port", str(port)],
                                stdout=handle, stderr=subprocess.STDOUT, env=env)
    try:
        for _ in range(240):
            if proc.poll() is not None:
                raise AssertionError(f"dashboard exited with {proc.returncode}:\n{log.read_text()}")
            if answers(base):
                return proc, base
            time.sleep(0.25)
        raise AssertionError(f"dashboard did not answer:\n{log.read_text()}")
    except BaseException:
        stop(proc)
        raise


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
