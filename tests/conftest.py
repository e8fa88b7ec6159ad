"""Shared fixtures: storages (a real SQLite file, and a real PostgreSQL server when one is given)."""

from __future__ import annotations

import os
import uuid

import pytest

POSTGRES_ENV = "AUTOPEFT_TEST_POSTGRES_URL"

# Without a CUDA GPU the Triton kernels (tests/kernels) run under Triton's interpreter. Triton reads the switch once,
# when it is first imported -- and importing transformers' models imports it -- so it is set here, before any test.
if not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _postgres_url() -> str | None:
    url = os.environ.get(POSTGRES_ENV)
    if url is None and os.environ.get("CI"):
        pytest.fail(f"{POSTGRES_ENV} is not set: .ci/run must start PostgreSQL for the storage tests")
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def storage_url(request, tmp_path) -> str:
    """A storage URL for each backend: a fresh SQLite file, or the test PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    url = _postgres_url()
    if url is None:
        pytest.skip(f"set {POSTGRES_ENV} to run against PostgreSQL (.ci/run does)")
    return url


@pytest.fixture
def study_name() -> str:
    """Unique per test, so tests can share one PostgreSQL database."""
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def postgres_url() -> str:
    """The test PostgreSQL server (skipped locally without one; required under CI)."""
    url = _postgres_url()
    if url is None:
        pytest.skip(f"set {POSTGRES_ENV} to run against PostgreSQL (.ci/run does)")
    return url
