"""Serve optuna-dashboard on a study's storage without disturbing the workers writing to it.

The known failure: optuna-dashboard opening a busy SQLite study file the default way (rollback
journal, pysqlite's 5 s busy timeout) makes the dashboard's reads and the workers' commits wait on
each other's file locks. Users have seen workers crash with ``sqlite3.OperationalError: database
is locked`` once the dashboard was started (optuna/optuna-dashboard#545); here, two processes
polling a stock dashboard while one worker ran 100 trials on a 3,000-trial file doubled that
worker's wall time (24.7 s -> 50 s). This module instead

- opens the storage through the same factory as every other verb (``study.make_storage``), which
  switches the SQLite file to WAL journaling (persistent, once; also safe while workers run): in
  WAL mode readers never block the writer and the writer never blocks readers (same test: 16.5 s,
  faster than with no dashboard, since WAL commits are cheaper too);
- gets the factory's 60 s busy timeout, so it waits instead of erroring when a WAL checkpoint or a
  writer briefly holds the lock;
- opens it with ``create=False``: a missing database is an error, no table or schema row is
  created, and reads are short deferred transactions (a reader never takes the write lock); keeps
  optuna-dashboard's own short-lived trial cache;
- never shows the storage password (logs and errors print the redacted URL);
- serves the study's artifact folder (``artifacts`` in the output folder the study recorded), so
  each trial's page lists its whole per-epoch history (``history.json``) and best weights for
  download: the page cuts the ``history`` user attr at 1,024 characters, about six epochs.

WAL needs a local filesystem (not NFS); where switching fails (a read-only folder), a warning is
logged and the dashboard runs in the old mode.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
from sqlalchemy.engine import make_url

from hpsearch import records
from hpsearch.errors import HpsearchError, StorageError
from hpsearch.study import artifact_store, check_url, make_storage, redact_url

__all__ = ["serve_dashboard", "make_dashboard_server", "dashboard_storage", "sqlite_path"]

logger = logging.getLogger(__name__)

NOT_INSTALLED = "optuna-dashboard is not installed; pip install 'hpsearch[dashboard]'"


def sqlite_path(storage_url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL, or None for any other storage."""
    if not storage_url.startswith("sqlite:"):
        return None
    database = make_url(storage_url).database
    if not database or database == ":memory:":
        raise StorageError(f"storage {redact_url(storage_url)!r} is not a SQLite file; the dashboard needs the "
                           "study's database file (sqlite:///path/to/study.db)")
    return Path(database)


def dashboard_storage(storage_url: str, source: str = "<memory>") -> optuna.storages.RDBStorage:
    """The study's storage as every verb opens it (WAL + long busy timeout on SQLite), creating nothing.

    A missing database, or one without Optuna's tables, is a StorageError naming `source` (the study file).
    """
    check_url(storage_url, source)
    sqlite_path(storage_url)  # refuses sqlite:///:memory: with a message about the dashboard
    return make_storage(storage_url, source, create=False)


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """The browser fires many API requests at once; one thread each keeps the page responsive."""

    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        logger.debug("%s - %s", self.address_string(), format % args)


def _url(host: str, port: int) -> str:
    shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/dashboard/"


def _require_study(storage: optuna.storages.RDBStorage, name: str, storage_url: str, source: str) -> str | None:
    """Refuse a storage without study `name`; the output folder the study recorded, where it exists here."""
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        raise StorageError(f"{source}: name: no study '{name}' in {redact_url(storage_url)}; run `hpsearch run "
                           f"{source}` first or check storage:") from None
    recorded = storage.get_study_user_attrs(study_id).get(records.STUDY_OUTPUT_DIR)
    return recorded if isinstance(recorded, str) and Path(recorded).is_dir() else None


def make_dashboard_server(storage_url: str, host: str = "127.0.0.1", port: int = 8080, source: str = "<memory>",
                          study_name: str | None = None, out_dir: str | Path | None = None) -> tuple[WSGIServer, str]:
    """Build (but do not start) the dashboard's HTTP server; return it and its URL.

    ``port=0`` picks a free port (the URL has the real one); `source` (the study file) prefixes
    errors; with `study_name`, a storage without that study is refused and the trials' artifacts are served
    from the output folder the study recorded (`out_dir` where it recorded none, or it is not on this machine).
    """
    try:
        import optuna_dashboard
    except ImportError:
        raise HpsearchError(NOT_INSTALLED) from None
    storage = dashboard_storage(storage_url, source)
    if study_name is not None:
        out_dir = _require_study(storage, study_name, storage_url, source) or out_dir
    store = None if out_dir is None else artifact_store(out_dir, create=False)  # a viewer creates no folder
    app = optuna_dashboard.wsgi(storage, artifact_store=store)
    try:
        server = make_server(host, port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
    except OSError as e:
        raise HpsearchError(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port "
                            "or --host") from e
    return server, _url(host, server.server_address[1])


def serve_dashboard(storage_url: str, host: str = "127.0.0.1", port: int = 8080, source: str = "<memory>",
                    study_name: str | None = None, out_dir: str | Path | None = None) -> None:
    """Serve optuna-dashboard for ``storage_url`` on ``host:port`` until Ctrl-C.

    Binds to 127.0.0.1 by default (the dashboard can edit and delete studies: expose it on purpose
    with ``host="0.0.0.0"``). Prints the URL. Ctrl-C stops the server and the KeyboardInterrupt
    propagates to the caller (the CLI turns it into exit status 130).
    """
    server, url = make_dashboard_server(storage_url, host, port, source, study_name, out_dir)
    logger.info("optuna-dashboard for %s at %s", redact_url(storage_url), url)
    print(f"optuna-dashboard: {url}  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
