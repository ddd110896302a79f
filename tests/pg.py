"""Throw-away PostgreSQL databases for tests and benchmarks (the server CI runs on 127.0.0.1:5432).

Used by the ``pg_url`` fixture (tests/conftest.py) and by ``bench/orchestration.py``; :class:`Cluster`
starts a server of our own (tests/study/test_failures.py stops it mid-run). A database is
created with a unique name, handed out as an SQLAlchemy URL for the psycopg 3 driver, and dropped
afterwards even when connections are still open (``DROP DATABASE ... WITH (FORCE)``, PostgreSQL 13+).
Nothing here imports pytest.
"""

from __future__ import annotations

import getpass
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HOST = os.environ.get("HPSEARCH_PG_HOST", "127.0.0.1")
PORT = int(os.environ.get("HPSEARCH_PG_PORT", "5432"))
PREFIX = "hpsearch_test"
LOCAL = "127.0.0.1"  # where a Cluster of our own listens
CONNECT_TIMEOUT_S = 3


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server answers at HOST:PORT with a role this process may use (or no driver)."""


def roles() -> list[str]:
    """Roles to try, in order: `postgres` (CI, docker images), then the current OS user (trust setups)."""
    candidates = ["postgres"]
    try:
        candidates.append(getpass.getuser())
    except (KeyError, OSError):  # no passwd entry (some containers)
        pass
    return list(dict.fromkeys(candidates))


def admin_connection() -> tuple[Any, str]:
    """An autocommit connection to the `postgres` database and the role it uses; PostgresUnavailable if none."""
    try:
        import psycopg
    except ImportError as exc:
        raise PostgresUnavailable(f"psycopg is not installed ({exc}); pip install 'psycopg[binary]'") from None
    errors: list[str] = []
    for role in roles():
        try:
            conn = psycopg.connect(host=HOST, port=PORT, user=role, dbname="postgres", autocommit=True,
                                   connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error as exc:
            errors.append(f"as {role}: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}")
            continue
        return conn, role
    raise PostgresUnavailable(f"no PostgreSQL server usable at {HOST}:{PORT} ({'; '.join(errors)})")


def database_url(role: str, name: str) -> str:
    """The SQLAlchemy URL of database `name` on HOST:PORT for `role` (trust auth: no password)."""
    return f"postgresql+psycopg://{role}@{HOST}:{PORT}/{name}"


def new_database_name(prefix: str = PREFIX) -> str:
    """`<prefix>_<pid>_<random hex>`: unique across concurrent sessions sharing one server."""
    return f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"


def drop_database(name: str) -> None:
    """Drop `name` if it exists, terminating any connection still open to it."""
    conn, _ = admin_connection()
    with conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def create_database(prefix: str = PREFIX) -> tuple[str, str]:
    """Create a fresh empty database; return (its URL, its name); PostgresUnavailable if no server."""
    conn, role = admin_connection()
    name = new_database_name(prefix)
    with conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return database_url(role, name), name


@contextmanager
def temporary_database(prefix: str = PREFIX) -> Iterator[str]:
    """A fresh database's URL for the `with` block; dropped on exit."""
    url, name = create_database(prefix)
    try:
        yield url
    finally:
        drop_database(name)


class Cluster:
    """A throw-away PostgreSQL server of our own (initdb in a temporary folder, a free port), to stop at will.

    Tests that stop the server mid-run use this, never the shared server on 5432. As root the
    server runs as the `postgres` user (initdb refuses root). `close()` stops it and removes the folder.
    """

    def __init__(self) -> None:
        self.bin = _pg_bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="hpsearch-pg-"))  # /tmp: the postgres user can reach it
        self.data, self.sockets, self.log = self.root / "data", self.root / "sockets", self.root / "server.log"
        self.sockets.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.sockets, "postgres")
        with socket.socket() as probe:
            probe.bind((LOCAL, 0))
            self.port = probe.getsockname()[1]
        try:
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
            self.start()
        except BaseException:
            self.close()
            raise

    def _run(self, tool: str, *args: str) -> None:
        argv = [str(self.bin / tool), *args]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise PostgresUnavailable(f"{tool} failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()}")

    def start(self) -> None:
        """Start the server (waits until it accepts connections)."""
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses={LOCAL} -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: `fast` ends every session at once (what an administrator's restart does)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def create_database(self, password: str = "") -> str:
        """A fresh database; its SQLAlchemy URL (trust auth: a password in it is accepted and never checked)."""
        import psycopg

        name = new_database_name()
        with psycopg.connect(host=LOCAL, port=self.port, user="postgres", dbname="postgres", autocommit=True,
                             connect_timeout=CONNECT_TIMEOUT_S) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        secret = f":{password}" if password else ""
        return f"postgresql+psycopg://postgres{secret}@{LOCAL}:{self.port}/{name}"

    def close(self) -> None:
        if self.running():
            try:
                self.stop("immediate")
            except PostgresUnavailable:
                pass
        shutil.rmtree(self.root, ignore_errors=True)


def _pg_bin_dir() -> Path:
    """The folder of initdb and pg_ctl: on PATH, or the newest /usr/lib/postgresql/*/bin (Debian, Ubuntu)."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3])
                        if p.parts[-3].isdigit() else 0)
    if not candidates:
        raise PostgresUnavailable("no initdb/pg_ctl found (PATH, /usr/lib/postgresql/*/bin); install postgresql")
    return candidates[-1].parent
