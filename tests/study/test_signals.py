"""Stop signals held back while a worker writes to the study database."""

import os
import signal
import time

import pytest
import sqlalchemy.exc

from autopeft.study.retry import with_retries
from autopeft.study.signals import signals_deferred, stop_held


def test_a_stop_signal_inside_a_deferred_block_waits_for_its_end():
    with pytest.raises(KeyboardInterrupt):
        with signals_deferred() as held:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # Python runs signal handlers between bytecodes: this one only notes it
            assert held == [signal.SIGINT]
            with signals_deferred() as inner:  # nested: the outer block's note, delivered by the outer block
                assert inner is held
        pytest.fail("the noted Ctrl-C was not delivered on leaving the block")  # pragma: no cover
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back


def test_a_held_stop_ends_the_wait_for_the_database():
    """During an outage a write is retried for minutes; Ctrl-C held meanwhile ends the retrying (the trial is then
    recovered by its heartbeat, as for a worker that died)."""
    calls = []

    def down():
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        raise sqlalchemy.exc.OperationalError("select 1", {}, Exception("connection refused"))

    with pytest.raises(KeyboardInterrupt):
        with signals_deferred():
            with pytest.raises(sqlalchemy.exc.OperationalError):
                with_retries(down, "a write", deadline=60, first_wait=0.01)  # fails in a minute, not ten
            assert stop_held()
    assert len(calls) == 2 and not stop_held()
