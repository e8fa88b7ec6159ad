"""docker-compose.yml and the worker image: every service runs a real autopeft command line."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import typer
import yaml

from autopeft.cli import app

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def expand(arg: str) -> str:
    """Compose's ``${VAR:-default}`` / ``${VAR:?message}`` with the variables unset."""
    arg = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", arg)
    return re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", "secret", arg)


def parse(argv: list[str]):
    """Parse a command line with the real CLI, without running it (unknown options raise)."""
    assert argv[0] == "autopeft"
    group = typer.main.get_command(app)
    parent = group.context_class(group, info_name="autopeft")
    command = group.get_command(parent, argv[1])
    assert command is not None, f"no command {argv[1]!r}"
    return command.make_context(argv[1], list(argv[2:]), parent=parent)


def test_services_run_real_commands():
    services = compose()["services"]
    assert {"postgres", "study", "proposer", "worker", "dashboard"} <= set(services)
    for name in ("study", "proposer", "worker", "dashboard"):
        argv = [expand(a) for a in services[name]["command"]]
        ctx = parse(argv)
        assert ctx.info_name == argv[1]
    worker = parse([expand(a) for a in services["worker"]["command"]]).params
    assert worker["device"] == "cuda:0" and worker["processes"] == 1
    assert parse([expand(a) for a in services["dashboard"]["command"]]).params["host"] == "0.0.0.0"


def test_unknown_option_would_be_caught():
    with pytest.raises(Exception, match="No such option: --gpus"):
        parse(["autopeft", "worker", "--study", "s", "--gpus", "2"])


def test_workers_get_a_gpu_and_hand_back_on_stop():
    services = compose()["services"]
    worker = services["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert worker["stop_signal"] == "SIGTERM" and worker["restart"] == "on-failure"
    for name in ("study", "proposer", "worker", "dashboard"):
        env = services[name]["environment"]
        assert env["AUTOPEFT_STORAGE"].startswith("postgresql+psycopg2://") and "@postgres:5432/" in env["AUTOPEFT_STORAGE"]
        assert services[name]["build"]["dockerfile"] == "worker/Dockerfile"
    assert "POSTGRES_PASSWORD:?" in COMPOSE.read_text()  # no default password


def test_image_copies_what_exists():
    dockerfile = (ROOT / "worker" / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"
    entry = ROOT / "worker" / "entrypoint.sh"
    assert os.access(entry, os.X_OK)
    subprocess.run(["bash", "-n", str(entry)], check=True)


def test_docker_compose_config_accepts_it():
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed here")
    proc = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True,
                          text=True, env={**os.environ, "POSTGRES_PASSWORD": "test"})
    assert proc.returncode == 0, proc.stderr
