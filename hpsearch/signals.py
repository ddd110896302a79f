"""Stop requests: SIGINT and SIGTERM handlers only record them; the loops honour them at safe points.

A handler that raises (Python's default KeyboardInterrupt) can land anywhere, including inside a
garbage-collection callback of SQLAlchemy, where the exception is printed and dropped: the stop is
lost. Here a handler appends to a list and returns. The worker loop, the training and validation
batch loops, the supervisor's poll and every wait call :func:`check`, which raises
:class:`StopRequested` (a KeyboardInterrupt, so the usual clean-up paths apply) in code that is
ready for it. Only :func:`interruptible` blocks that hold nothing to hand back (loading data,
downloading) are cut short at once. Standard library only: the engine and the supervisor both use it.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["StopRequested", "check", "installed", "interruptible", "received", "requested", "reset", "sleep"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_SLICE_S = 0.1  # how long a wait sleeps between two looks at the flag

_received: list[int] = []
_immediate = [False]  # inside interruptible(): the handler also raises
_depth = [0]  # nesting of installed() blocks


class StopRequested(KeyboardInterrupt):
    """A stop signal arrived; raised by :func:`check` at a safe point (exit code 130)."""


def _record(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)  # a list append takes no lock: safe wherever the main thread was
    if _immediate[0]:
        raise StopRequested(signal.Signals(signum).name)


@contextmanager
def installed() -> Iterator[None]:
    """SIGINT and SIGTERM go to the recording handler inside the block (main thread only).

    The outermost block starts with no stop recorded and puts the previous handlers back at its end.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outermost = _depth[0] == 0
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    if outermost:
        reset()
        for sig in STOP_SIGNALS:
            signal.signal(sig, _record)
    _depth[0] += 1
    try:
        yield
    finally:
        _depth[0] -= 1
        if outermost:
            for sig, handler in previous.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def requested() -> bool:
    """Whether a stop signal has arrived."""
    return bool(_received)


def received() -> list[int]:
    """The stop signals received so far, oldest first."""
    return list(_received)


def check() -> None:
    """Raise :class:`StopRequested` if a stop signal has arrived; call it where stopping is safe."""
    if _received:
        raise StopRequested(signal.Signals(_received[0]).name)


def sleep(seconds: float) -> None:
    """Sleep up to `seconds`, raising :class:`StopRequested` within a tenth of a second of a stop signal."""
    deadline = time.monotonic() + seconds
    while True:
        check()
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(_SLICE_S, left))


@contextmanager
def interruptible() -> Iterator[None]:
    """A block with nothing to hand back (data loading): a stop signal raises at once inside it."""
    if handling():  # outside installed(), a stop recorded earlier (an earlier in-process command) is not ours
        check()
    previous = _immediate[0]
    _immediate[0] = True
    try:
        yield
    finally:
        _immediate[0] = previous


def handling() -> bool:
    """Whether the recording handlers are installed (inside :func:`installed`)."""
    return _depth[0] > 0


def reset() -> None:
    """Forget the signals received (tests; a process that handled its stop and goes on)."""
    _received.clear()
