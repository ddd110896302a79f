"""SQLite files: WAL and BEGIN IMMEDIATE, the quick_check before writing, read-only media."""

from __future__ import annotations

import os
import re
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from hpsearch.errors import StorageError, StorageFailure
from hpsearch.study.adapter import _engine, storage_of
from hpsearch.study.failures import _READ_ONLY_FIX, _damaged
from hpsearch.study.urls import _first_line, redact_url

SQLITE_BUSY_TIMEOUT_S = 60


def _begin_immediate(engine: sqlalchemy.engine.Engine) -> None:
    """Every SQLite transaction takes the write lock up front.

    A deferred transaction that reads and then writes gets SQLITE_BUSY at once, without waiting
    for the busy timeout, when another worker writes in between; BEGIN IMMEDIATE waits instead.
    """

    @sqlalchemy.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # let the "begin" hook below issue BEGIN itself

    @sqlalchemy.event.listens_for(engine, "begin")
    def _begin(connection: sqlalchemy.engine.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # drop pooled connections opened before the hooks


class _DamagedFile(Exception):
    """SQLite's quick_check found damage that reading alone may never meet (an index page, say)."""


def _prepare_sqlite(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    existed = Path(parsed.database).is_file() and Path(parsed.database).stat().st_size > 0
    engine = sqlalchemy.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
    try:
        with engine.connect() as conn:
            if existed:  # before anything writes: a damaged file must stay as it is (~0.2 s per 70 MB)
                _quick_check(conn)
            # WAL lets readers (dashboard, status) run beside the writing workers; it persists in the file.
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    finally:
        engine.dispose()


def _quick_check(conn: sqlalchemy.engine.Connection) -> None:
    """Raise _DamagedFile with SQLite's own words when `PRAGMA quick_check` finds damage."""
    problems = " ".join(" ".join(row[0] for row in conn.exec_driver_sql("PRAGMA quick_check(1)")).split())
    if problems != "ok":
        raise _DamagedFile(re.sub(r"\*\*\* in database \w+ \*\*\* ", "", problems))


def _is_read_only(path: Path) -> bool:
    """A database SQLite could not write beside (read-only media, a folder or file without write permission)."""
    return not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK))


def _read_only_url(path: Path) -> str:
    """The URL that reads `path` without writing anything, journal files included.

    `immutable=1`: SQLite cannot open a WAL database read-only without its -shm file, which it would
    have to create; nothing writes a file on read-only media, so no change can be missed.
    """
    return f"sqlite:///file:{quote(str(path.resolve()))}?mode=ro&immutable=1&uri=true"


def _sqlite_file(url: str) -> Path | None:
    """The database file of an SQLite URL (None for another database, or one in memory)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def check_writable(url: str, source: str) -> None:
    """Refuse, before a run starts, an SQLite file that cannot be written (read-only file, folder or media)."""
    path = _sqlite_file(url)
    if path is not None and path.is_file() and _is_read_only(path):
        raise StorageError(f"{source}: storage: '{redact_url(url)}' cannot be written: {_READ_ONLY_FIX}")


def _is_missing_file(url: str) -> bool:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return False  # make_storage reports it
    path = parsed.database
    return parsed.get_backend_name() == "sqlite" and path not in (None, "", ":memory:") and not Path(path).is_file()


@dataclass(frozen=True)
class _OpenedFile:
    """The SQLite file a writer opened: its device and inode, so a file deleted or replaced later is noticed."""

    source: str
    url: str
    path: Path
    device: int
    inode: int


_OPENED: weakref.WeakKeyDictionary[sqlalchemy.engine.Engine, _OpenedFile] = weakref.WeakKeyDictionary()


def _remember_file(engine: sqlalchemy.engine.Engine, url: str, source: str) -> None:
    path = _sqlite_file(url)
    if path is None:
        return
    try:
        stat = path.stat()
    except FileNotFoundError:  # deleted between its opening and now (a process that opens the study mid-run)
        raise StorageFailure(_deleted_message(f"{source}: storage: '{redact_url(url)}'", path.resolve())) from None
    _OPENED[engine] = _OpenedFile(source, url, path.resolve(), stat.st_dev, stat.st_ino)


def _deleted_message(shown: str, path: Path) -> str:
    return (f"{shown} was deleted during the run ({path} is gone, with every trial it held); nothing this run did "
            f"since is saved: restore the file from a backup, or rerun to start the study again")


def check_storage_file(study: optuna.Study, thorough: bool = False) -> None:
    """Raise StorageFailure when the SQLite file this process writes was deleted or replaced since it opened it.

    SQLite goes on writing to a deleted file's inode without an error: every later result would be
    lost while the run reported success. Called at each trial boundary (one stat); `thorough` (the
    end of a run) also runs `PRAGMA quick_check` on the file, which catches a file overwritten in place.
    """
    opened = _OPENED.get(_engine(storage_of(study)))
    if opened is None:
        return
    shown = f"{opened.source}: storage: '{redact_url(opened.url)}'"
    try:
        stat = opened.path.stat()
    except FileNotFoundError:
        raise StorageFailure(_deleted_message(shown, opened.path)) from None
    if (stat.st_dev, stat.st_ino) != (opened.device, opened.inode):
        raise StorageFailure(f"{shown} was replaced during the run (another file is at {opened.path} now); the "
                             f"trials this run finished since then went to the old file and are lost: check what "
                             f"replaced it, then rerun")
    if thorough:
        engine = sqlalchemy.create_engine(opened.url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
        try:  # a connection of its own: the pool's may hold the file's pages in its cache
            with engine.connect() as conn:
                _quick_check(conn)
        except (_DamagedFile, SQLAlchemyError) as exc:
            raise StorageFailure(f"{shown} {_damaged(_first_line(exc, opened.url), opened.url)}") from None
        finally:
            engine.dispose()
