"""Storage URLs: parsing, secrets and redaction, the checks made before anything connects."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import NoSuchModuleError

from hpsearch.errors import StorageError

HIDDEN = "***"

UNPARSEABLE = "<unparseable storage URL>"

# Query parameters that carry credentials (?password=, sslpassword, api_key, token...), any case.
_SECRET_PARAM = re.compile(r"pass|pwd|secret|token|key|credential", re.IGNORECASE)


def _parse_url(url: str) -> URL:
    """SQLAlchemy's parse of `url`, with a password's unescaped '@' given back to the password.

    SQLAlchemy ends the password at the first '@', so `user:p@ss@host` parses as password 'p' and
    host 'ss@host'; the real split is at the last '@'.
    """
    parsed = make_url(url)
    if parsed.host and "@" in parsed.host:
        spill, host = parsed.host.rsplit("@", 1)
        parsed = parsed.set(password=f"{parsed.password or ''}@{spill}", host=host)
    return parsed


def _secret_params(parsed: URL) -> list[str]:
    return [key for key in parsed.query if _SECRET_PARAM.search(key)]


def redact_url(url: str) -> str:
    """The storage URL with the password and every secret query parameter replaced by ***, safe to print.

    Never raises: what cannot be parsed prints as "<unparseable storage URL>".
    """
    try:
        parsed = _parse_url(url)
        secret = _secret_params(parsed)
        if secret:
            parsed = parsed.update_query_dict(dict.fromkeys(secret, HIDDEN))
        # render_as_string quotes the query's '*' as %2A
        return parsed.render_as_string(hide_password=True).replace(quote(HIDDEN, safe=""), HIDDEN)
    except Exception:  # noqa: BLE001 - printing a URL must never fail, whatever the input
        return UNPARSEABLE


def url_secrets(url: str) -> list[str]:
    """The password and secret query values of `url`, raw and URL-quoted, longest first (what `scrub` hides)."""
    try:
        parsed = _parse_url(url)
    except Exception:  # noqa: BLE001 - an unparseable URL has no secrets we can find; scrub still hides the URL
        return []
    values = [parsed.password or ""]
    for key in _secret_params(parsed):
        value = parsed.query[key]
        values += [value] if isinstance(value, str) else list(value)
    forms = {form for value in values if value for form in (value, quote(value, safe=""), quote_plus(value))}
    return sorted(forms, key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """`text` (a driver's or SQLAlchemy's error message) with `url` and its secrets, in any form, hidden."""
    if url:
        text = text.replace(url, redact_url(url))
    for secret in url_secrets(url):
        text = text.replace(secret, HIDDEN)
    return text


EXAMPLE_URLS = "sqlite:///runs/study.db or postgresql+psycopg://user:${DB_PASSWORD}@host/db"


def check_url(url: str, source: str) -> None:
    """Refuse, without echoing it, a storage URL that SQLAlchemy cannot parse or that it would misread."""
    if not url.strip():
        raise StorageError(f"{source}: storage: the storage URL is empty; use a URL such as {EXAMPLE_URLS}")
    try:
        parsed = make_url(url)
        parsed.port  # noqa: B018 - a port that is no number fails only when read (ValueError)
    except Exception:  # noqa: BLE001 - ArgumentError, or ValueError for a bad port: the URL must not be echoed
        raise StorageError(f"{source}: storage: the storage URL cannot be parsed; use a URL such as {EXAMPLE_URLS} "
                           f"(percent-encode special characters of the password, e.g. @ as %40)") from None
    if parsed.host and "@" in parsed.host:
        raise StorageError(f"{source}: storage: the password in {redact_url(url)} holds an unescaped '@'; "
                           f"percent-encode it as %40")


# The package that provides each database driver module SQLAlchemy may import.
_DRIVER_PACKAGES = {"psycopg2": "psycopg2-binary", "psycopg": "'psycopg[binary]'", "MySQLdb": "mysqlclient",
                    "pymysql": "PyMySQL", "pg8000": "pg8000", "asyncpg": "asyncpg", "mysql": "mysql-connector-python",
                    "cx_Oracle": "cx_Oracle", "oracledb": "oracledb", "pyodbc": "pyodbc", "pymssql": "pymssql"}


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def driver_url(url: str) -> str:
    """`url` as the engine opens it: plain `postgresql://` uses psycopg 3 where only that driver is installed.

    SQLAlchemy's default PostgreSQL driver is psycopg2; `pip install 'hpsearch[postgres]'` installs psycopg 3.
    """
    if make_url(url).drivername == "postgresql" and not _importable("psycopg2") and _importable("psycopg"):
        return re.sub(r"^[^:]+", "postgresql+psycopg", url, count=1)
    return url


def check_driver(url: str, source: str) -> None:
    """Refuse, in one line naming the package to install, a URL whose database driver is not installed."""
    shown = redact_url(url)
    try:
        make_url(driver_url(url)).get_dialect().import_dbapi()
    except NoSuchModuleError:
        raise StorageError(f"{source}: storage: '{shown}' names a database SQLAlchemy does not know; use a URL such "
                           f"as {EXAMPLE_URLS}") from None
    except ImportError as exc:
        module = (exc.name or "").split(".")[0] or make_url(url).get_driver_name()
        fix = f"pip install {_DRIVER_PACKAGES.get(module, module)}"
        if make_url(url).drivername in ("postgresql", "postgresql+psycopg"):
            fix = "pip install 'hpsearch[postgres]' (psycopg 3, which postgresql:// then uses)"
        elif make_url(url).get_backend_name() == "postgresql":
            fix += ", or pip install 'hpsearch[postgres]' and write the URL as postgresql+psycopg://..."
        raise StorageError(f"{source}: storage: '{shown}' needs the database driver '{module}', which is not "
                           f"installed; {fix}") from None


def check_storage(url: str, source: str) -> None:
    """Every check a storage URL gets before anything parses it, connects or creates a file (exit 2 each)."""
    check_url(url, source)
    if _is_memory(url):
        raise StorageError(f"{source}: storage: '{redact_url(url)}' lives inside one process, so workers, reruns "
                           f"and `hpsearch status` could never see the study; use a file such as "
                           f"sqlite:///runs/study.db") from None
    check_driver(url, source)


def _is_memory(url: str) -> bool:
    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")


def _first_line(exc: BaseException, url: str) -> str:
    """The first line of a driver's error, without SQLAlchemy's link and without any secret of `url`."""
    text = scrub(str(exc), url).strip().splitlines()
    message = text[0] if text else type(exc).__name__
    message = re.sub(r"^\([\w.]+\) ", "", message)  # SQLAlchemy's "(psycopg.OperationalError) " prefix
    return message.replace("(Background on this error at: https://sqlalche.me/e/20/e3q8)", "").strip()[:300]


def storage_identity(url: str) -> str:
    """Where a study lives, without secrets: an SQLite file's absolute path, or the URL with no password."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return f"sqlite:///{Path(parsed.database).resolve()}"
    return redact_url(url)  # the password masked: the same storage whatever the password


def _same_database(recorded: Any, identity: str) -> bool:
    """Whether two storage identities name one database, whichever driver each URL spells (postgresql+psycopg)."""
    def plain(text: str) -> str:
        return re.sub(r"^([A-Za-z0-9]+)\+[A-Za-z0-9_]+:", r"\1:", text, count=1)

    return isinstance(recorded, str) and plain(recorded) == plain(identity)
