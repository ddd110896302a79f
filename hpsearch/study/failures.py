"""What a storage exception means for the user: damaged file, full disk, server gone; exit codes."""

from __future__ import annotations

import logging
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
from sqlalchemy.engine import make_url
from sqlalchemy.exc import PendingRollbackError, SQLAlchemyError

from hpsearch.config import StudyConfig
from hpsearch.errors import HpsearchError, StorageError, StorageFailure
from hpsearch.study.urls import _first_line, redact_url


# --------------------------------------------------------------------------- storage failures


_DAMAGED = ("database disk image is malformed", "file is not a database", "file is encrypted or is not a database")

_FULL = ("database or disk is full", "no space left on device", "disk i/o error")

_GONE = ("connection refused", "server closed the connection", "terminating connection", "could not connect",
         "connection to server", "connection is closed", "the connection is lost", "connection timeout expired",
         "ssl connection has been closed", "unable to open database file")

_READ_ONLY = ("attempt to write a readonly database", "readonly database")

_READ_ONLY_FIX = "the file or its folder is read-only: make both writable, or use another output_dir: or storage:"


def _damage(exc: BaseException, url: str) -> str:
    """What a storage exception means, for the user: damaged file, full disk, server gone; '' otherwise."""
    text = " ".join(str(exc).lower().split())
    if any(word in text for word in _DAMAGED):
        return _damaged(_first_line(exc, url), url)
    if any(word in text for word in _FULL):
        return f"cannot be written: the disk is full ({_first_line(exc, url)}); free space, then rerun to continue"
    if any(word in text for word in _READ_ONLY):
        return f"cannot be written ({_first_line(exc, url)}); {_READ_ONLY_FIX}"
    if any(word in text for word in _GONE):
        if "unable to open database file" in text:  # SQLite's words: a file, not a server
            return (f"cannot be opened any more ({_first_line(exc, url)}); check that the file and its folder still "
                    f"exist and are writable, then rerun to continue")
        return (f"stopped answering ({_first_line(exc, url)}); check that the database server is running, "
                f"then rerun to continue")
    return ""


def _damaged(detail: str, url: str) -> str:
    """The advice for a damaged SQLite file: a backup, or a salvage command that works without .recover."""
    old = make_url(url).database or "study.db"
    new = str(Path(old).with_name(f"{Path(old).stem}-salvaged.db"))
    salvage = (f"sqlite3 {shlex.quote(old)} .dump | sed 's/^ROLLBACK; -- due to errors$/COMMIT;/' "
               f"| sqlite3 {shlex.quote(new)}")
    return (f"is damaged ({detail}); restore it from a backup, or salvage the readable trials with "
            f"`{salvage}` and point storage: at the new file")


class _LibraryDumpToDebug(logging.Filter):
    """Optuna's "Caught an error from sqlalchemy" warning (raw SQL and parameters, 6 lines) shows with --debug only.

    The error itself reaches hpsearch, which reports it in one line of its own.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Caught an error from sqlalchemy"):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger("optuna").isEnabledFor(logging.DEBUG)


logging.getLogger("optuna.storages._rdb.storage").addFilter(_LibraryDumpToDebug())

STORAGE_EXCEPTIONS: tuple[type[BaseException], ...] = (optuna.exceptions.StorageInternalError, SQLAlchemyError)


def storage_cause(exc: BaseException) -> BaseException:
    """The database's own exception behind Optuna's StorageInternalError (whose text blames the data).

    SQLAlchemy's "Can't reconnect until invalid transaction is rolled back" follows a connection
    the server cut: the cut (its __context__) is what happened.
    """
    if isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, PendingRollbackError) and isinstance(exc.__context__, SQLAlchemyError):
        return storage_cause(exc.__context__)
    return exc


def storage_failure(exc: BaseException, cfg: StudyConfig, running: bool) -> HpsearchError:
    """One line for a storage exception raised after the storage opened: exit 1 in a run, 2 elsewhere."""
    cause = storage_cause(exc)
    what = (_damage(cause, cfg.storage_url)
            or f"failed ({_first_line(cause, cfg.storage_url)}); check the database, then rerun to continue")
    message = f"{cfg.source}: storage: '{redact_url(cfg.storage_url)}' {what}"
    return StorageFailure(message) if running else StorageError(message)


@contextmanager
def guard_storage(cfg: StudyConfig, running: bool = False) -> Iterator[None]:
    """Turn a storage exception inside the block into one line naming the storage and what failed."""
    try:
        yield
    except STORAGE_EXCEPTIONS as exc:
        raise storage_failure(exc, cfg, running) from exc


@contextmanager
def guard_storages(cfgs: list[StudyConfig]) -> Iterator[None]:
    """`guard_storage` for a command that reads several studies (report): one line naming the storage, or each
    of them when the studies are in several (a failed read does not say which database it was)."""
    try:
        yield
    except STORAGE_EXCEPTIONS as exc:
        urls = list(dict.fromkeys(cfg.storage_url for cfg in cfgs))
        if len(urls) == 1:
            raise storage_failure(exc, cfgs[0], running=False) from exc
        cause = storage_cause(exc)
        named = ", ".join(f"'{redact_url(url)}'" for url in urls)
        checks = ", ".join(f"`hpsearch status {shlex.quote(str(cfg.source))}`" for cfg in cfgs)
        raise StorageError(f"{', '.join(cfg.source for cfg in cfgs)}: storage: reading one of {named} failed "
                           f"({_first_line(cause, urls[0])}); check each ({checks}), then rerun") from exc


def is_storage_exception(exc: BaseException) -> bool:
    """Whether `exc` came from the storage layer (the database), not from training code."""
    return isinstance(exc, STORAGE_EXCEPTIONS)
