"""A storage password, in any form SQLAlchemy accepts, is never printed, logged or stored."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import optuna
import pytest
from sqlalchemy.engine import make_url

from hpsearch import supervisor
from hpsearch.cli import build_parser, main
from hpsearch.cliargs import config_from_args
from hpsearch.config import STORAGE_ENV
from hpsearch.slots import Slot
from hpsearch.study import UNPARSEABLE, redact_url, scrub
from conftest import python_env

SECRET = "Hunter2-pw"
AT_SECRET = "hunter@2x"  # an unescaped '@': SQLAlchemy alone would print "2x"
HOST = "db.example"
UNREACHABLE = "127.0.0.1:1"  # nothing listens on port 1: every verb must fail with exit 2
ROOT = Path(__file__).resolve().parent.parent

URLS = [
    ("user:password@host", f"postgresql+psycopg://user:{SECRET}@{HOST}/hp"),
    ("?password=", f"postgresql+psycopg://user@{HOST}/hp?password={SECRET}"),
    ("?PASSWORD= among other params", f"postgresql+psycopg://user@{HOST}/hp?sslmode=require&PASSWORD={SECRET}"),
    ("both forms", f"postgresql+psycopg://user:{SECRET}@{HOST}/hp?password={SECRET}"),
    ("sslpassword", f"postgresql+psycopg://user@{HOST}/hp?sslpassword={SECRET}"),
    ("token and api_key", f"postgresql+psycopg://user@{HOST}/hp?auth_token={SECRET}&api_key={SECRET}"),
    ("percent-encoded @", f"postgresql+psycopg://user:{quote(AT_SECRET, safe='')}@{HOST}/hp"),
    ("unescaped @", f"postgresql+psycopg://user:{AT_SECRET}@{HOST}/hp"),
    ("unescaped @ and a port", f"mysql+pymysql://user:{AT_SECRET}@{HOST}:3306/hp"),
]


def _fragments(secret: str) -> list[str]:
    """What must never appear: the secret, its URL-quoted form, and each side of an '@' in it."""
    return [secret, quote(secret, safe=""), *secret.split("@")]


def _assert_hidden(text: str) -> None:
    for secret in (SECRET, AT_SECRET):
        for fragment in _fragments(secret):
            assert fragment not in text, f"{fragment!r} shown in {text!r}"


@pytest.mark.parametrize("url", [u for _, u in URLS], ids=[name for name, _ in URLS])
def test_redact_hides_every_form_of_the_password(url: str) -> None:
    shown = redact_url(url)
    _assert_hidden(shown)
    assert "***" in shown and HOST in shown and "user" in shown


def test_redact_keeps_what_is_not_secret() -> None:
    assert redact_url("sqlite:///runs/a@b/study.db") == "sqlite:///runs/a@b/study.db"
    assert redact_url(f"postgresql+psycopg://user@{HOST}:5433/hp?sslmode=require") == \
        f"postgresql+psycopg://user@{HOST}:5433/hp?sslmode=require"
    assert redact_url(f"postgresql+psycopg://user:{AT_SECRET}@{HOST}/hp") == f"postgresql+psycopg://user:***@{HOST}/hp"


@pytest.mark.parametrize("url", ["not a url", f"postgresql+psycopg://user:{AT_SECRET}:x@{HOST}:54/hp", None, 42])
def test_redact_never_raises(url: Any) -> None:
    assert redact_url(url) == UNPARSEABLE


def test_scrub_hides_the_raw_and_the_quoted_password_and_the_url() -> None:
    url = f"postgresql+psycopg://user:{quote(AT_SECRET, safe='')}@{HOST}/hp?password={SECRET}"
    text = f"auth failed for {AT_SECRET} ({quote(AT_SECRET, safe='')}), query {SECRET}; dsn {url}"
    cleaned = scrub(text, url)
    _assert_hidden(cleaned)
    assert cleaned.count("***") >= 4 and HOST in cleaned


# ------------------------------------------------------------------ the command line

def _unreachable(form: str) -> str:
    if form == "userinfo":
        return f"postgresql+psycopg://user:{SECRET}@{UNREACHABLE}/hp"
    return f"postgresql+psycopg://user@{UNREACHABLE}/hp?password={SECRET}"


@pytest.mark.parametrize("form", ["userinfo", "query"])
def test_validate_prints_no_password(write_study: Callable[..., Path], form: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(write_study(storage=_unreachable(form)))]) == 0
    out = capsys.readouterr().out
    _assert_hidden(out)
    assert f"storage: postgresql+psycopg://user{':***' if form == 'userinfo' else ''}@{UNREACHABLE}/hp" in out


@pytest.mark.parametrize("verb", ["run", "status", "best", "export", "dashboard", "worker"])
@pytest.mark.parametrize("form", ["userinfo", "query"])
def test_unreachable_storage_exits_2_without_the_password(write_study: Callable[..., Path], verb: str, form: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main([verb, str(write_study(storage=_unreachable(form)))]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "storage" in lines[0] and "***" in lines[0], lines
    _assert_hidden(captured.out + captured.err)


@pytest.mark.parametrize("flag", [True, False], ids=["--storage", "$HPSEARCH_STORAGE"])
def test_unescaped_at_in_the_password_is_refused_without_echoing_it(write_study: Callable[..., Path], flag: bool,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    url = f"postgresql+psycopg://user:{AT_SECRET}@{UNREACHABLE}/hp"
    if not flag:
        monkeypatch.setenv(STORAGE_ENV, url)
    assert main(["status", str(write_study()), *(["--storage", url] if flag else [])]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"hpsearch: error: {Path('study.yaml').resolve()}: storage: the password in "
                           f"postgresql+psycopg://user:***@{UNREACHABLE}/hp holds an unescaped '@'; "
                           f"percent-encode it as %40")


def test_storage_comes_from_the_flag_then_the_environment_then_the_file(write_study: Callable[..., Path],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(write_study(storage="sqlite:///from-file.db"))
    parser = build_parser()
    assert config_from_args(path, parser.parse_args(["status", path])).storage_url == "sqlite:///from-file.db"
    monkeypatch.setenv(STORAGE_ENV, "sqlite:///from-env.db")
    assert config_from_args(path, parser.parse_args(["status", path])).storage_url == "sqlite:///from-env.db"
    args = parser.parse_args(["status", path, "--storage", "sqlite:///from-flag.db"])
    assert config_from_args(path, args).storage_url == "sqlite:///from-flag.db"


def test_workers_get_the_storage_in_their_environment_not_on_their_command_line(
        write_study: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, workdir: Path) -> None:
    url = f"postgresql+psycopg://user:{SECRET}@{HOST}/hp"
    path = str(write_study())
    args = build_parser().parse_args(["run", path, "--storage", url, "--n-trials", "3"])
    cfg = config_from_args(path, args)
    argv = supervisor.worker_argv(path, args)
    assert argv == [path, "--n-trials", "3"]
    started: dict[str, Any] = {}

    class FakePopen:
        pid = 4242

        def __init__(self, command: list[str], env: dict[str, str], **kwargs: Any) -> None:
            started.update(command=command, env=env)

    monkeypatch.setattr(supervisor.subprocess, "Popen", FakePopen)
    proc = supervisor.Supervisor(cfg, study=None, slots=[Slot(index=0, gpu=None)], worker_argv=argv)._spawn(
        Slot(index=0, gpu=None))
    proc.log_file.close()
    assert started["env"][STORAGE_ENV] == url
    _assert_hidden(" ".join(started["command"]))
    worker_args = build_parser().parse_args(started["command"][3:])  # python -m hpsearch <verb> ...
    monkeypatch.setenv(STORAGE_ENV, started["env"][STORAGE_ENV])
    assert config_from_args(path, worker_args).storage_url == url


# ------------------------------------------------------------------ a real study on PostgreSQL

def _with_password(pg_url: str) -> str:
    """The test server's URL with the password in both forms (trust auth: any password works)."""
    url = make_url(pg_url).set(password=SECRET).update_query_dict({"password": SECRET})
    return url.render_as_string(hide_password=False)


def _stored_text(url: str, name: str) -> str:
    """Everything the study keeps in the database about itself and its trials, as one string."""
    storage = optuna.storages.RDBStorage(url)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
        study_id = storage.get_study_id_from_name(name)
        parts: list[Any] = [study.user_attrs, storage.get_study_system_attrs(study_id)]
        for trial in study.get_trials(deepcopy=False):
            parts += [trial.user_attrs, trial.system_attrs, trial.params]
        assert len(parts) > 2 and study.user_attrs["config"]["storage"]
        return json.dumps(parts, default=str)
    finally:
        storage.engine.dispose()


def _hpsearch(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = python_env()
    return subprocess.run([sys.executable, "-m", "hpsearch", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=300)


@pytest.mark.postgres
def test_a_run_on_postgres_prints_logs_and_stores_no_password(pg_url: str, write_study: Callable[..., Path],
                                                              workdir: Path) -> None:
    url = _with_password(pg_url)
    assert SECRET in url and "password=" in url
    path = str(write_study(name="secret-pg", n_trials=2, storage=url, train={"epochs": 1, "batch_size": 64}))
    # Real processes: a supervisor and two workers, which get the URL from it, then the reading verbs.
    results = [_hpsearch("run", path, "--workers", "2", "--debug", cwd=workdir)]
    results += [_hpsearch(verb, path, cwd=workdir) for verb in ("status", "best")]
    logs = "".join(p.read_text() for p in sorted((workdir / "runs" / "secret-pg" / "logs").glob("*.log")))
    assert [r.returncode for r in results] == [0, 0, 0], results[0].stderr + logs
    shown = make_url(pg_url)
    summary = f"storage: postgresql+psycopg://{shown.username}:***@{shown.host}:{shown.port}/{shown.database}?password=***"
    assert summary in results[0].stdout and summary in results[1].stdout
    _assert_hidden("".join(r.stdout + r.stderr for r in results) + logs)
    stored = _stored_text(pg_url, "secret-pg")
    _assert_hidden(stored)
    assert '"storage": "postgresql+psycopg://' in stored and ":***@" in stored and "password=***" in stored
