"""Stop signals that are not lost.

A worker turns SIGTERM (`kill`, `scancel`, a dead coordinator's PDEATHSIG) and Slurm's warning
signal into an exception, so the trial it runs is released: the attempt does not count and the
next run resumes it from its checkpoint. Python runs a signal handler between bytecodes of the
main thread, and that may be inside a weakref callback or a `__del__` run by the garbage
collector, where an exception is printed ("Exception ignored in ...") and dropped: the worker
would train on as if never told to stop. So the raise is repeated until some handler has taken
the stop in hand (`stop_handled`): a watcher thread sends the signal again while it has not.
A stop may also arrive twice (a dead coordinator's workers get two SIGTERMs): one that arrives
while the first is on its way, or once the release has begun, is ignored, so the release (a few
database writes) is not cut short. SIGKILL still stops a worker whose release hangs.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
import time

AGAIN_S = 2.0  # a stop not taken in hand after this long was swallowed: raise it again

_pending: dict[int, float] = {}  # signal -> when it was last raised
_handled = threading.Event()
_watcher: threading.Thread | None = None


def raise_on(signum: int, exc: type[BaseException]) -> None:
    """Raise `exc(128 + signum)` in the main thread on `signum`, again until it is handled."""

    def handler(sig: int, _frame) -> None:  # noqa: ANN001
        # No locks here: the handler may run inside any code of the main thread, and a
        # thread started here would deadlock with a handler run again inside its start.
        now = time.monotonic()
        if _handled.is_set():
            return  # the trial is being released: a second stop must not cut that short
        last = _pending.get(sig)
        if last is not None and now - last < AGAIN_S:
            return  # the first raise is still on its way to its handler
        _pending[sig] = now
        raise exc(128 + sig)

    _watch()
    signal.signal(signum, handler)


def stop_on_sigterm() -> None:
    """SIGTERM becomes SystemExit, released like Ctrl-C (SIGKILL cannot be caught: its trial
    is reaped once its heartbeat goes stale)."""
    raise_on(signal.SIGTERM, SystemExit)


def stop_handled() -> None:
    """The stop reached a handler (a trial's release, a worker's exit): raise it no more."""
    _handled.set()


def _watch() -> None:
    global _watcher
    if _watcher is None:
        _watcher = threading.Thread(target=_again, name="abl-stop", daemon=True)
        _watcher.start()


def _again() -> None:
    while not _handled.wait(0.2):
        for sig, at in list(_pending.items()):
            if time.monotonic() - at > AGAIN_S:
                del _pending[sig]  # so the handler takes it as a new stop
                os.kill(os.getpid(), sig)


atexit.register(stop_handled)  # an exiting interpreter is stopping already
