"""Throw-away PostgreSQL databases for tests and benchmarks (the server CI runs on 127.0.0.1:5432).

Used by the ``pg_url`` fixture (tests/conftest.py) and by ``bench/orchestration.py``. A database is
created with a unique name, handed out as an SQLAlchemy URL for the psycopg 3 driver, and dropped
afterwards even when connections are still open (``DROP DATABASE ... WITH (FORCE)``, PostgreSQL 13+).
Nothing here imports pytest.
"""

from __future__ import annotations

import getpass
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

HOST = os.environ.get("HPSEARCH_PG_HOST", "127.0.0.1")
PORT = int(os.environ.get("HPSEARCH_PG_PORT", "5432"))
PREFIX = "hpsearch_test"
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
