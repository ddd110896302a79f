"""TurnPool: the threads of a process take turns on its one kept connection instead of opening more.

The pool is exercised on SQLite connections (what it pools does not matter); a spy on its condition tells when a
thread waits for its turn, so no test depends on timing.
"""

from __future__ import annotations

import sqlite3
import threading
import warnings
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy

from hpsearch.study import Heartbeat
from hpsearch.study.pool import TurnPool, closed_on_failure, patience


class _SpyCondition(threading.Condition):
    """Sets `waiting` when a thread finds its turn taken."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def wait_for(self, predicate: Any, timeout: float | None = None) -> Any:
        if not predicate():
            self.waiting.set()
        return super().wait_for(predicate, timeout)


def _pool(made: list[sqlite3.Connection], **kwargs: Any) -> TurnPool:
    def connect() -> sqlite3.Connection:
        made.append(sqlite3.connect(":memory:", check_same_thread=False))
        return made[-1]

    pool = TurnPool(connect, pool_size=1, max_overflow=4, **kwargs)
    pool._turn = _SpyCondition()
    return pool


def test_a_second_thread_waits_for_the_kept_connection_instead_of_opening_one() -> None:
    made: list[sqlite3.Connection] = []
    pool = _pool(made)
    held = pool.connect()
    got: list[Any] = []
    other = threading.Thread(target=lambda: got.append(pool.connect()))
    other.start()
    assert pool._turn.waiting.wait(10)
    held.close()
    other.join(10)
    assert len(made) == 1 and got[0].dbapi_connection is made[0]
    got[0].close()
    assert pool.checkedout() == 0 and pool._total == 0


def test_a_nested_checkout_in_one_thread_does_not_wait_for_itself() -> None:
    made: list[sqlite3.Connection] = []
    pool = _pool(made)
    outer = pool.connect()
    inner = pool.connect()  # would hang here if a thread waited for its own turn
    assert len(made) == 2 and not pool._turn.waiting.is_set()
    inner.close()
    outer.close()
    assert pool._total == 0 and pool.checkedin() == 1


def test_a_thread_past_its_patience_goes_on_with_a_connection_of_its_own() -> None:
    made: list[sqlite3.Connection] = []
    pool = _pool(made)
    held = pool.connect()
    got: list[Any] = []

    def impatient() -> None:
        with patience(0):
            got.append(pool.connect())

    other = threading.Thread(target=impatient)
    other.start()
    other.join(10)
    assert len(made) == 2 and got[0].dbapi_connection is made[1]
    got[0].close()
    held.close()
    assert pool._total == 0 and pool.checkedin() == 1  # the overflow connection closed, the kept one is back


def test_pools_of_a_failed_block_are_closed() -> None:
    made: list[sqlite3.Connection] = []
    try:
        with closed_on_failure():
            pool = _pool(made)
            pool.connect().close()
            raise RuntimeError("lost a start-up race")
    except RuntimeError:
        pass
    assert pool.checkedin() == 0


def test_a_heartbeat_beats_while_the_main_thread_holds_the_connection(tmp_path: Path) -> None:
    """The main thread blocked in a long storage call (here: holding the connection) neither deadlocks the
    heartbeat nor leaves the trial without beats: past its patience the beat takes a connection of its own."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeats are "experimental"; asking warns the trial has no callback
        storage = optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=2,
                                             engine_kwargs={"poolclass": TurnPool, "pool_size": 1, "max_overflow": 4})
        study = optuna.create_study(storage=storage)
        trial = study.ask()
    reader = sqlalchemy.create_engine(url)
    beats = sqlalchemy.text("SELECT count(*) FROM trial_heartbeats WHERE trial_id = :t")
    try:
        with storage.engine.connect() as held, Heartbeat(study, trial) as heartbeat:
            while True:  # waits on the state: the beat's row
                with reader.connect() as conn:
                    if conn.execute(beats, {"t": trial._trial_id}).scalar_one():
                        break
                if not heartbeat.thread.is_alive():
                    raise AssertionError("the heartbeat thread ended without beating")
                heartbeat.stop.wait(0.02)  # a pause between reads, not a timed assertion
            assert not held.closed
        assert not heartbeat.thread.is_alive()
    finally:
        reader.dispose()
        storage.engine.dispose()
