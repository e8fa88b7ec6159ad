"""The study tests that send Ctrl-C to their own process need Python's Ctrl-C handler.

A process started in the background of a non-interactive shell (`cmd &`) inherits SIGINT ignored, and Python then
installs no handler: a Ctrl-C sent by a test would be lost. Each test here runs with Python's own handler, and the
disposition it found is put back afterwards.
"""

import signal

import pytest


@pytest.fixture(autouse=True)
def python_sigint_handler():
    found = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, found)
