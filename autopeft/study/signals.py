"""Stop signals (Ctrl-C, SIGTERM) held back while a worker writes to the study database."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_deferred: list[list[int]] = []  # the signals held by the open signals_deferred blocks (outermost first)


@contextmanager
def signals_deferred():
    """Hold Ctrl-C and SIGTERM while trials are being claimed, reported or handed back; deliver them afterwards.

    A stop signal raises KeyboardInterrupt wherever the worker happens to be. Landing between the database write
    that makes a trial RUNNING and the code that hands it back, it left that trial RUNNING until its heartbeat went
    stale. Inside this block a stop signal is only noted, in the list the block yields (the outermost block's, when
    blocks nest), so the code can hand its trials back; on leaving the outermost block the signal goes to the handler
    it was meant for. Signals without a Python handler (default or ignored) are left alone, and so is every thread
    but the main one, the only one that receives signals.
    """
    if _deferred or threading.current_thread() is not threading.main_thread():
        yield _deferred[0] if _deferred else []
        return
    held: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}
    previous = {sig: h for sig, h in previous.items() if callable(h)}  # Ctrl-C's KeyboardInterrupt, the worker's SIGTERM
    for sig in previous:
        signal.signal(sig, lambda signum, frame: held.append(signum))
    _deferred.append(held)
    try:
        yield held
    finally:
        _deferred.pop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in dict.fromkeys(held):  # each signal once, in the order it came
            previous[signum](signum, None)


def stop_held() -> bool:
    """Whether a stop signal is being held by an open :func:`signals_deferred` block (then nothing should wait
    long: a retry loop gives up, and the signal is delivered)."""
    return bool(_deferred and _deferred[0])
