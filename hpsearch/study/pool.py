"""The connection pool of PostgreSQL engines: one kept connection per process, taken in turns by its threads.

A worker's main thread and its heartbeat thread share one storage. With a plain pool of one, a beat that holds
the kept connection when the main thread writes (or the reverse) makes the pool open a second connection, once
per trial (issue #21). Here a checkout first waits until no *other* thread holds a connection of this pool, then
takes the kept one: threads take turns and the process keeps one connection. A thread's own nested checkout
never waits for itself (it may still open a second connection). No wait is for ever: after its patience (the
pool's timeout, or what :func:`patience` sets for the calling thread) a checkout goes on without its turn, as a
plain pool would.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.pool import ConnectionPoolEntry, QueuePool

_local = threading.local()
_MADE: weakref.WeakSet[TurnPool] = weakref.WeakSet()


@contextmanager
def patience(seconds: float | None) -> Iterator[None]:
    """Checkouts of this thread wait at most `seconds` for their turn (None: the pool's own timeout)."""
    before = getattr(_local, "patience", None)
    _local.patience = seconds
    try:
        yield
    finally:
        _local.patience = before


@contextmanager
def closed_on_failure() -> Iterator[None]:
    """Pools made in the block are closed if it fails: an engine Optuna made and dropped keeps its connection."""
    before = set(_MADE)
    try:
        yield
    except BaseException:
        for pool in set(_MADE) - before:
            pool.dispose()
        raise


class TurnPool(QueuePool):
    """A QueuePool whose threads take turns: while one thread holds a connection, the others wait."""

    _sqla_logger_namespace = "sqlalchemy.pool.impl.QueuePool"  # not a child of the "hpsearch" logger

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _MADE.add(self)
        self._turn = threading.Condition()  # an RLock: a checkin run by the garbage collector may land inside
        self._holds: dict[int, int] = {}  # thread ident -> its connections checked out
        self._total = 0
        self._holder: dict[int, int] = {}  # id(record) -> the thread that checked it out

    def _others_hold(self, me: int) -> bool:
        return self._total - self._holds.get(me, 0) > 0

    def _take(self, me: int, delta: int) -> None:
        self._holds[me] = self._holds.get(me, 0) + delta
        if self._holds[me] <= 0:
            del self._holds[me]
        self._total += delta

    def _do_get(self) -> ConnectionPoolEntry:
        me = threading.get_ident()
        wait = getattr(_local, "patience", None)
        with self._turn:
            self._turn.wait_for(lambda: not self._others_hold(me), self._timeout if wait is None else wait)
            self._take(me, 1)  # taken even after a timeout: the release below stays the same
        try:
            record = super()._do_get()
        except BaseException:
            self._release(me)
            raise
        with self._turn:
            self._holder[id(record)] = me
        return record

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        try:
            super()._do_return_conn(record)  # back in the queue first: the next thread must find it there
        finally:
            with self._turn:
                me = self._holder.pop(id(record), None)
            if me is not None:
                self._release(me)

    def _release(self, thread: int) -> None:
        with self._turn:
            self._take(thread, -1)
            self._turn.notify_all()
