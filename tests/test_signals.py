"""Stop signals are recorded, never raised from arbitrary code, and honoured at safe points."""

from __future__ import annotations

import gc
import signal
import time

import pytest

from hpsearch import signals


def test_handlers_only_record_and_every_signal_counts() -> None:
    with signals.installed():
        signal.raise_signal(signal.SIGTERM)  # returns: nothing raised where the signal landed
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGTERM)  # a second SIGTERM is not ignored
        assert signals.received() == [signal.SIGTERM, signal.SIGINT, signal.SIGTERM]
        with pytest.raises(signals.StopRequested, match="SIGTERM"):
            signals.check()
        assert signals.requested()  # still requested: every later safe point stops too


def test_installed_restores_the_handlers_and_starts_clean() -> None:
    before = {sig: signal.getsignal(sig) for sig in signals.STOP_SIGNALS}
    with signals.installed():
        signal.raise_signal(signal.SIGINT)
        with signals.installed():  # nested: same recording, nothing reset
            assert signals.requested()
    assert {sig: signal.getsignal(sig) for sig in signals.STOP_SIGNALS} == before
    with signals.installed():
        assert not signals.requested()  # a new run does not inherit the last one's stop


class _RaisesInFinalizer:
    """Where Python drops exceptions: a finalizer run by the garbage collector (like SQLAlchemy's)."""

    def __del__(self) -> None:
        signal.raise_signal(signal.SIGTERM)


def test_a_signal_inside_a_gc_callback_is_not_lost() -> None:
    with signals.installed():
        obj = _RaisesInFinalizer()
        obj.cycle = obj  # type: ignore[attr-defined]
        del obj
        gc.collect()
        with pytest.raises(signals.StopRequested):
            signals.check()


def test_sleep_wakes_up_within_a_tenth_of_a_second() -> None:
    with signals.installed():
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        previous = signal.signal(signal.SIGALRM, lambda *_: signal.raise_signal(signal.SIGINT))
        started = time.monotonic()
        try:
            with pytest.raises(signals.StopRequested):
                signals.sleep(30)
        finally:
            signal.signal(signal.SIGALRM, previous)
        assert time.monotonic() - started < 1.0


def test_interruptible_blocks_stop_at_once() -> None:
    with signals.installed():
        with pytest.raises(signals.StopRequested):
            with signals.interruptible():
                signal.raise_signal(signal.SIGINT)
                raise AssertionError("not reached: the handler raised inside the block")
        with pytest.raises(signals.StopRequested):
            with signals.interruptible():  # a stop already recorded: the block does not even start
                raise AssertionError("not reached")


def test_a_stop_recorded_by_an_earlier_command_does_not_end_a_later_load() -> None:
    """Outside installed() (status, validate in-process), interruptible() ignores what an earlier run recorded."""
    signals._received.append(signal.SIGINT)  # left by an earlier in-process command
    try:
        with signals.interruptible():
            pass
        with signals.installed(), pytest.raises(signals.StopRequested):  # a run starts clean: a new signal counts
            signal.raise_signal(signal.SIGINT)
            signals.check()
    finally:
        signals.reset()
