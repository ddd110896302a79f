"""Storage URLs checked before anything parses or opens them (issue #16): braces, drivers, bad ports, empty values.

Each bad URL ends in one line on stderr, exit 2, on every verb, and nothing is created.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest
import sqlalchemy

from hpsearch import study as study_module
from hpsearch.cli import main
from hpsearch.config import STORAGE_ENV
from conftest import python_env
from mounts import tmpfs

VERBS = [["run"], ["worker"], ["status"], ["validate"], ["best"], ["export"]]
ONE_TRIAL = {"n_trials": 1, "train": {"epochs": 1, "batch_size": 64}}


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# --------------------------------------------------------------------------- braces in an SQLite path

def test_braces_in_an_sqlite_path_are_refused_before_anything_is_written(write_study: Callable[..., Path],
                                                                         workdir: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(**ONE_TRIAL)
    url = "sqlite:///runs/x/a{b}{SCHEMA_VERSION}.db"  # Optuna fills a URL as a str.format template
    assert main(["run", str(path), "--storage", url]) == 2
    assert "holds '{' or '}'" in _one_line(capsys)
    assert not (workdir / "runs").exists()


@pytest.mark.postgres
def test_braces_in_a_postgresql_password_are_taken_literally(write_study: Callable[..., Path], workdir: Path,
                                                             pg_url: str) -> None:
    """A password may hold braces: the URL reaches Optuna's template filling escaped (trust auth accepts any)."""
    path = write_study(**ONE_TRIAL, name="braces")
    url = sqlalchemy.engine.make_url(pg_url).set(password="p{w}{SCHEMA_VERSION}").render_as_string(hide_password=False)
    for verb in ("run", "status"):
        done = subprocess.run([sys.executable, "-m", "hpsearch", verb, path.name], cwd=workdir, capture_output=True,
                              text=True, env=python_env(**{STORAGE_ENV: url}), timeout=600, check=False)
        assert done.returncode == 0, done.stderr


def test_a_new_study_file_whose_opening_fails_is_removed(write_study: Callable[..., Path], workdir: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(**ONE_TRIAL)

    def failing(url: str, heartbeat: dict[str, object]) -> None:
        raise sqlalchemy.exc.OperationalError("CREATE TABLE studies ...", {}, Exception("disk I/O error"))

    monkeypatch.setattr(study_module.storage, "_rdb_storage", failing)  # after _prepare_sqlite created the file
    assert main(["run", str(path)]) == 2
    assert "storage: 'sqlite:///runs/tiny/study.db'" in _one_line(capsys)
    assert not list((workdir / "runs" / "tiny").glob("study.db*"))  # no empty study.db left behind


# --------------------------------------------------------------------------- a driver that is not installed

@pytest.mark.parametrize("verb", VERBS, ids=lambda v: v[0])
@pytest.mark.parametrize("url, words", [
    ("mysql://u:pw@db-host/hp", "needs the database driver 'MySQLdb', which is not installed; pip install mysqlclient"),
    ("postgresql+pg8000://u:pw@db-host/hp", "needs the database driver 'pg8000', which is not installed; pip install "
     "pg8000, or pip install 'hpsearch[postgres]' and write the URL as postgresql+psycopg://..."),
], ids=["mysql", "pg8000"])
def test_a_missing_driver_is_one_line_naming_the_package(verb: list[str], url: str, words: str, workdir: Path,
                                                         write_study: Callable[..., Path],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study()
    before = _tree(workdir)
    assert main([verb[0], str(path), "--storage", url]) == 2
    shown = url.replace(":pw@", ":***@")
    assert _one_line(capsys) == f"hpsearch: error: {path}: storage: '{shown}' {words}"
    assert _tree(workdir) == before


def test_plain_postgresql_uses_psycopg_3_when_psycopg2_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = {"psycopg"}
    monkeypatch.setattr(study_module.urls, "_importable", lambda module: module in installed)
    assert study_module.driver_url("postgresql://u:p%40ss@h:5432/db") == "postgresql+psycopg://u:p%40ss@h:5432/db"
    assert study_module.driver_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"  # asked for
    study_module.check_driver("postgresql://u@h/db", "s.yaml")  # psycopg 3 imports: no error
    installed.add("psycopg2")
    assert study_module.driver_url("postgresql://u@h/db") == "postgresql://u@h/db"  # SQLAlchemy's default works


def test_plain_postgresql_without_any_driver_says_what_to_install(write_study: Callable[..., Path],
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study()
    monkeypatch.setattr(study_module.urls, "_importable", lambda module: False)  # psycopg 3 "not installed"
    pytest.importorskip("sqlalchemy.dialects.postgresql.psycopg2")
    try:
        import psycopg2  # noqa: F401
        pytest.skip("psycopg2 is installed here")
    except ImportError:
        pass
    for verb in ("run", "status", "validate"):
        assert main([verb, str(path), "--storage", "postgresql://u@db-host/hp"]) == 2
        assert _one_line(capsys) == (
            f"hpsearch: error: {path}: storage: 'postgresql://u@db-host/hp' needs the database driver 'psycopg2', "
            f"which is not installed; pip install 'hpsearch[postgres]' (psycopg 3, which postgresql:// then uses)")


@pytest.mark.postgres
def test_plain_postgresql_runs_and_shares_the_folder_with_the_psycopg_spelling(
        write_study: Callable[..., Path], workdir: Path, empty_pg_url: str) -> None:
    path = write_study(**ONE_TRIAL)
    plain = empty_pg_url.replace("postgresql+psycopg://", "postgresql://")
    # Real processes: psycopg warns about connections that the in-process verbs leave to the interpreter's exit.
    for argv in (["run", "--storage", plain], ["status", "--storage", empty_pg_url],  # one database, either way
                 ["run", "--storage", empty_pg_url, "--n-trials", "2"]):  # and the folder is its own
        done = subprocess.run([sys.executable, "-m", "hpsearch", argv[0], path.name, *argv[1:]], cwd=workdir,
                              env=python_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------------- a malformed URL

@pytest.mark.parametrize("url", ["postgresql+psycopg://u@127.0.0.1:notaport/db", "postgresql+psycopg://u@[::1/db"],
                         ids=["port", "bracket"])
def test_a_malformed_url_is_one_line_even_when_the_folder_belongs_to_a_study(
        url: str, write_study: Callable[..., Path], workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(**ONE_TRIAL)
    assert main(["run", str(path)]) == 0  # runs/tiny/study.json now names its owner
    study_module.dispose_storages()
    capsys.readouterr()
    for verb in VERBS:
        assert main([verb[0], str(path), "--storage", url]) == 2
        assert _one_line(capsys) == (
            f"hpsearch: error: {path}: storage: the storage URL cannot be parsed; use a URL such as "
            f"sqlite:///runs/study.db or postgresql+psycopg://user:${{DB_PASSWORD}}@host/db (percent-encode special "
            f"characters of the password, e.g. @ as %40)")


# --------------------------------------------------------------------------- an empty value

@pytest.mark.parametrize("verb", VERBS, ids=lambda v: v[0])
def test_an_empty_storage_flag_is_refused(verb: list[str], write_study: Callable[..., Path], workdir: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study()
    before = _tree(workdir)
    for value in ("", "  "):
        assert main([verb[0], str(path), "--storage", value]) == 2
        assert _one_line(capsys) == (
            "hpsearch: error: command line: --storage: the storage URL is empty (an unset variable?); give a URL "
            "such as sqlite:///runs/study.db, or leave the flag out to use the file's storage:")
    assert _tree(workdir) == before  # no study of its own started elsewhere


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: v[0])
def test_an_empty_storage_variable_is_refused(verb: list[str], write_study: Callable[..., Path], workdir: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study()
    before = _tree(workdir)
    monkeypatch.setenv(STORAGE_ENV, "")
    assert main([verb[0], str(path)]) == 2
    assert _one_line(capsys) == (
        f"hpsearch: error: environment: {STORAGE_ENV}: the storage URL is empty; set it to a URL, or unset it "
        f"(`unset {STORAGE_ENV}`) to use the file's storage:")
    assert _tree(workdir) == before


# --------------------------------------------------------------------------- ${VAR} of a storage the flag replaces

@pytest.mark.parametrize("flag", [True, False], ids=["--storage", "$HPSEARCH_STORAGE"])
def test_a_replaced_storage_needs_none_of_its_variables(flag: bool, write_study: Callable[..., Path],
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("PGPW_NOT_SET", raising=False)
    path = write_study(storage="postgresql+psycopg://u:${PGPW_NOT_SET}@db-host/hp")
    assert main(["validate", str(path)]) == 2  # the file's own storage does need it
    assert "environment variable PGPW_NOT_SET is not set" in _one_line(capsys)
    if flag:
        assert main(["validate", str(path), "--storage", "sqlite:///runs/other.db"]) == 0
    else:
        monkeypatch.setenv(STORAGE_ENV, "sqlite:///runs/other.db")
        assert main(["validate", str(path)]) == 0
    assert "storage: sqlite:///runs/other.db" in capsys.readouterr().out


# --------------------------------------------------------------------------- a read-only study file

@pytest.fixture
def read_only_mount(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs folder remounted read-only later: real read-only media (root may write anywhere else)."""
    with tmpfs(tmp_path / "media", "size=64m") as mount:
        yield mount


def test_run_on_a_read_only_study_file_says_so(write_study: Callable[..., Path], workdir: Path,
                                               read_only_mount: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(**ONE_TRIAL)
    assert main(["run", str(path)]) == 0
    study_module.dispose_storages()
    shutil.copytree(workdir / "runs", read_only_mount / "runs")
    subprocess.run(["mount", "-o", "remount,ro", str(read_only_mount)], check=True)
    url = f"sqlite:///{read_only_mount}/runs/tiny/study.db"
    capsys.readouterr()
    assert main(["run", str(path), "--n-trials", "2", "--storage", url, "--output-dir", "out"]) == 2
    assert _one_line(capsys) == (
        f"hpsearch: error: {path}: storage: '{url}' cannot be written: the file or its folder is read-only: make "
        f"both writable, or use another output_dir: or storage:")
    assert main(["status", str(path), "--storage", url]) == 0  # reading still works
    study_module.dispose_storages()
