"""Opening an RDB storage: engines, start-up races, readers that create nothing."""

from __future__ import annotations

import logging
import os
import random
import time
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, SQLAlchemyError

from hpsearch.config import WorkersConfig
from hpsearch.errors import StorageError
from hpsearch.study.failures import _damage, _damaged
from hpsearch.study.pool import TurnPool, closed_on_failure
from hpsearch.study.sqlite import (SQLITE_BUSY_TIMEOUT_S, _DamagedFile, _begin_immediate, _is_read_only,
    _prepare_sqlite, _read_only_url, _remember_file, _sqlite_file, check_writable)
from hpsearch.study.urls import _first_line, check_storage, driver_url, redact_url

log = logging.getLogger("hpsearch")

PG_CONNECT_TIMEOUT_S = 10  # a stopped server is reported within seconds, not after the OS's TCP timeout


def _engine_kwargs(url: str) -> dict[str, Any]:
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        # Several local workers share one file: wait for the lock instead of failing at once.
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    if backend == "postgresql":
        # One connection per process, which its threads (a worker's main and heartbeat threads) take in turns
        # (pool.py): the server's max_connections (100 by default) bounds the workers of all machines together.
        # The overflow serves only a thread's own nested checkout and a checkout that waited out its patience.
        # application_name: pg_stat_activity names the process that holds each connection (`hpsearch:<pid>`).
        return {"pool_pre_ping": True, "poolclass": TurnPool, "pool_size": 1, "max_overflow": 4,
                "connect_args": {"connect_timeout": PG_CONNECT_TIMEOUT_S, "application_name": f"hpsearch:{os.getpid()}"}}
    return {"pool_pre_ping": True}


_ENGINES: weakref.WeakSet[sqlalchemy.engine.Engine] = weakref.WeakSet()


def dispose_storages() -> None:
    """Close the connection pools of every storage this process opened (before a prompt exit)."""
    for engine in list(_ENGINES):
        engine.dispose()


def _optuna_url(url: str) -> str:
    """`url` for Optuna's RDBStorage, which fills it as a str.format template: braces in a path stay literal."""
    return driver_url(url).replace("{", "{{").replace("}", "}}")


def _rdb_storage(url: str, heartbeat: dict[str, Any]) -> optuna.storages.RDBStorage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are "experimental"
        # Optuna's own schema check reads the version inside an open session: two connections at once.
        with closed_on_failure():  # a start-up race lost in Optuna's constructor must not leave its connection open
            storage = optuna.storages.RDBStorage(_optuna_url(url), engine_kwargs=_engine_kwargs(url),
                                                 skip_compatibility_check=True, **heartbeat)
        _ENGINES.add(storage.engine)
        if storage.get_current_version() != storage.get_head_version():
            storage.engine.dispose()
            optuna.storages.RDBStorage(_optuna_url(url), engine_kwargs=_engine_kwargs(url), skip_table_creation=True,
                                       **heartbeat)  # raises Optuna's message: which versions, how to upgrade
    return storage


def _is_startup_race(exc: SQLAlchemyError) -> bool:
    """Workers opening a new database together race on table creation, version rows and the WAL switch."""
    text = str(exc)
    return isinstance(exc, IntegrityError) or "already exists" in text or "database is locked" in text


def _open_rdb(url: str, heartbeat: dict[str, Any], attempts: int = 6) -> optuna.storages.RDBStorage:
    for attempt in range(attempts - 1):
        try:
            _prepare_sqlite(url)
            return _rdb_storage(url, heartbeat)
        except SQLAlchemyError as exc:
            if not _is_startup_race(exc):
                raise
            time.sleep(random.uniform(0.1, 0.2) * (attempt + 1))  # jitter: the losers must not collide again
    _prepare_sqlite(url)
    return _rdb_storage(url, heartbeat)


def _open_existing(url: str, source: str) -> optuna.storages.RDBStorage:
    """Open a storage that must already hold Optuna's tables: no file, table or schema row is created.

    Transactions stay deferred: a reader (the dashboard) must never hold SQLite's write lock.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:") or not Path(parsed.database).is_file():
            raise StorageError(f"{source}: storage: no study database at {parsed.database or ':memory:'}; "
                               f"run the study first or check storage:")
        if _is_read_only(Path(parsed.database)):
            url = _read_only_url(Path(parsed.database))
        else:
            try:
                _prepare_sqlite(url)
            except SQLAlchemyError as exc:  # reading still works without WAL
                log.warning("could not switch %s to WAL journaling (%s); readers may slow the workers",
                            parsed.database, _first_line(exc, url))
    if not _has_optuna_tables(url):  # before Optuna's reader fails on them (and leaves its connection open)
        raise StorageError(f"{source}: storage: {redact_url(url)} holds no study yet (no Optuna tables); run the study "
                           f"first or check storage:")
    try:
        # Readers accept any schema version, as optuna-dashboard itself does.
        storage = optuna.storages.RDBStorage(_optuna_url(url), engine_kwargs=_engine_kwargs(url),
                                             skip_compatibility_check=True, skip_table_creation=True)
        _ENGINES.add(storage.engine)
        return storage
    except optuna.exceptions.StorageInternalError as exc:
        if isinstance(exc.__cause__, SQLAlchemyError):
            raise exc.__cause__ from None  # the driver's error says what is wrong; Optuna's wrapper does not
        raise


def make_storage(url: str, source: str = "<memory>", workers: WorkersConfig | None = None,
                 create: bool = True) -> optuna.storages.RDBStorage:
    """Open (creating tables if needed) the RDB storage at `url`; unreachable → StorageError.

    With `workers`, running trials send heartbeats and a trial whose worker died is failed after
    the grace period and queued again. With `create=False` (readers such as the dashboard),
    nothing is created: a missing SQLite file is a StorageError. Error messages never show the
    password.
    """
    _check_usable(url, source)
    shown = redact_url(url)
    heartbeat: dict[str, Any] = {}
    if workers is not None:
        heartbeat = {"heartbeat_interval": workers.heartbeat_interval, "grace_period": workers.grace_period}
    try:
        if not create:
            return _open_existing(url, source)
        check_writable(url, source)
        with _no_new_file_left(url):
            storage = _open_rdb(url, heartbeat)
        if make_url(url).get_backend_name() == "sqlite":
            _begin_immediate(storage.engine)
            _remember_file(storage.engine, url, source)
        return storage
    except (ArgumentError, NoSuchModuleError) as exc:
        raise StorageError(f"{source}: storage: cannot use '{shown}' ({_first_line(exc, url)}); use a URL such as "
                           f"sqlite:///runs/study.db or postgresql+psycopg://user@host/db") from None
    except ImportError as exc:
        raise StorageError(f"{source}: storage: no database driver for '{shown}' ({_first_line(exc, url)}); install "
                           f"it, e.g. pip install 'hpsearch[postgres]' for postgresql+psycopg://") from None
    except _DamagedFile as exc:
        raise StorageError(f"{source}: storage: '{shown}' {_damaged(str(exc), url)}") from None
    except (SQLAlchemyError, OSError) as exc:
        damage = _damage(exc, url)
        if damage:
            raise StorageError(f"{source}: storage: '{shown}' {damage}") from None
        raise StorageError(f"{source}: storage: cannot open '{shown}' ({_first_line(exc, url)}); {_open_hint(url)}") \
            from None


@contextmanager
def _no_new_file_left(url: str) -> Iterator[None]:
    """An SQLite file the block created is removed again (with its -wal, -shm) if the block fails before any table."""
    path = _sqlite_file(url)
    fresh = path is not None and not path.exists()
    try:
        yield
    except BaseException:
        if fresh and path is not None and path.exists() and not _holds_tables(url):
            for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                leftover.unlink(missing_ok=True)
        raise


def _holds_tables(url: str) -> bool:
    try:
        return _has_optuna_tables(url)
    except SQLAlchemyError:
        return True  # unreadable: it is not ours to remove


def _open_hint(url: str) -> str:
    """What to check when a storage cannot be opened: a file's folder, or a server."""
    if make_url(url).get_backend_name() == "sqlite":
        return "check that the file's folder exists (or can be created) and is writable, or fix the path in storage:"
    return "check that the database server is running and the URL is right"


def _check_usable(url: str, source: str) -> None:
    """Refuse, before any connection, what :func:`check_storage` refuses."""
    check_storage(url, source)


def _has_optuna_tables(url: str) -> bool:
    """Whether the database holds Optuna's tables (a new, empty database holds no study)."""
    path = _sqlite_file(url)
    if path is not None and path.is_file() and _is_read_only(path):
        url = _read_only_url(path)  # a WAL file on read-only media opens only this way
    engine = sqlalchemy.create_engine(driver_url(url), **_engine_kwargs(url))
    try:
        return sqlalchemy.inspect(engine).has_table("studies")
    finally:
        engine.dispose()
