"""Storage failures during a run (issue #13, item 6): real processes, real faults, a consistent study after.

Each fault is made for real: an in-process-only SQLite URL, a page of study.db overwritten with
garbage, a 3 MB tmpfs filled while `hpsearch run` trains, a PostgreSQL server of our own stopped
mid-run (`pg_ctl stop -m fast`). Each ends in one line on stderr (no traceback) and an exit code;
where the storage still answers, the trial in flight is handed back; the rerun finishes the study.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

import pg
from hpsearch import study as study_module
from hpsearch.cli import main
from hpsearch.config import load_config
from hpsearch.errors import StorageError, StorageFailure
from hpsearch.study import open_study, storage_failure
from conftest import python_env, start_hpsearch
from mounts import tmpfs

ROOT = Path(__file__).resolve().parents[2]
FAST_HEARTBEAT = {"heartbeat_interval": 1, "grace_period": 3}
LONG_TRAIN = {"epochs": 300, "batch_size": 16}  # a trial far longer than any test: it is always mid-trial
ENV = python_env(OMP_NUM_THREADS="1")  # tiny models on shared cores: no spinning


def _hpsearch(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return start_hpsearch(*args, cwd=cwd, env=ENV)


def _hpsearch_done(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hpsearch", *args], cwd=cwd, env=ENV, text=True,
                          capture_output=True, timeout=timeout, check=False)


def _last_line(err: str) -> str:
    """The error line; and the contract that nothing on stderr is a traceback."""
    assert "Traceback" not in err, err
    assert "exceeding max length" not in err, err  # Optuna's misleading StorageInternalError text
    return err.strip().splitlines()[-1]


@contextmanager
def _storage(url: str) -> Iterator[optuna.storages.RDBStorage]:
    """The test's own handle on the storage (tables created now: no race with the run creating them)."""
    storage = optuna.storages.RDBStorage(url)
    try:
        yield storage
    finally:
        storage.engine.dispose()  # psycopg warns about connections left open


def _trials(storage: optuna.storages.RDBStorage) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="tiny", storage=storage).trials


def _wait_for(storage: optuna.storages.RDBStorage, predicate: Callable[[list[optuna.trial.FrozenTrial]], Any],
              proc: subprocess.Popen[str], timeout: float = 150.0) -> Any:
    """Poll the study until `predicate(trials)` is truthy; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            found = predicate(_trials(storage))
        except KeyError:  # the run has not created the study yet
            found = None
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError("condition not reached in time")


def _training(count: int, epochs: int = 1) -> Callable[[list[optuna.trial.FrozenTrial]], Any]:
    """The running trials once `count` of them have at least `epochs` epochs behind them, else None."""
    def check(trials: list[optuna.trial.FrozenTrial]) -> Any:
        busy = [t for t in trials if t.state == TrialState.RUNNING and len(t.user_attrs.get("history", [])) >= epochs]
        return busy if len(busy) >= count else None

    return check


def _assert_finished_consistently(storage: optuna.storages.RDBStorage, n_trials: int,
                                  cut_short: list[optuna.trial.FrozenTrial]) -> None:
    """Exactly n finished, nothing running or waiting, every trial cut short failed and retried to the end."""
    trials = _trials(storage)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == n_trials
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert not [t for t in trials if t.user_attrs.get("stop_reason") == "error"]  # nothing blamed on user code
    for victim in cut_short:
        assert trials[victim.number].state == TrialState.FAIL
        retries = [t for t in finished if t.system_attrs.get("failed_trial") == victim.number]
        assert len(retries) == 1 and retries[0].params == victim.params


# --------------------------------------------------------------------------- an in-process-only storage

@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://"])
@pytest.mark.parametrize("argv", [["run"], ["run", "--workers", "2"], ["status"]], ids=["run", "workers", "status"])
def test_in_memory_storage_is_refused_with_one_line(url: str, argv: list[str], write_study: Callable[..., Path],
                                                     workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study()
    assert main([argv[0], str(path), *argv[1:], "--storage", url]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"hpsearch: error: {path}: storage: '{url}' lives inside one process, so workers, reruns and "
        f"`hpsearch status` could never see the study; use a file such as sqlite:///runs/study.db"]
    assert not (workdir / "runs").exists()


# --------------------------------------------------------------------------- a damaged study file

def _damaged_study(path: Path, trials: int = 20) -> Path:
    """A real study file of many pages (trials with long attributes), a page amid its trials overwritten."""
    cfg = load_config(path)
    open_study(cfg)._storage._backend.engine.dispose()  # created as a run creates it (WAL, attributes)
    url = cfg.storage_url
    dists = {"lr": optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True),
             "dropout": optuna.distributions.FloatDistribution(0.0, 0.3)}
    notes = {f"note{i}": "x" * 400 for i in range(24)}  # each under a page: no overflow pages, all b-tree
    with _storage(url) as storage:
        optuna.load_study(study_name="tiny", storage=storage).add_trials([optuna.trial.create_trial(
            params={"lr": 0.005, "dropout": 0.1}, distributions=dists, value=0.5, user_attrs=notes,
        ) for _ in range(trials)])
    db = path.parent / "runs" / "tiny" / "study.db"
    conn = sqlite3.connect(db)
    pages, size = conn.execute("PRAGMA page_count").fetchone()[0], conn.execute("PRAGMA page_size").fetchone()[0]
    assert conn.execute("PRAGMA freelist_count").fetchone()[0] == 0  # every page belongs to a table or an index
    conn.close()
    assert pages > 60 and not Path(f"{db}-wal").exists()  # the last connection folded the WAL into the file
    with open(db, "r+b") as f:  # past the ~30 pages of schema and study rows: where the trials are
        f.seek((2 * pages // 3) * size)
        f.write(b"\xde\xad\xbe\xef" * (size // 4))
    return db


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_damaged_study_file_is_named_and_left_untouched(write_study: Callable[..., Path], workdir: Path) -> None:
    path = write_study(n_trials=30)
    db = _damaged_study(path)
    before = _digest(db)
    for argv in (["status", path.name], ["run", path.name]):
        done = _hpsearch_done(*argv, cwd=workdir)
        assert done.returncode == 2, done.stderr  # found before the run touched it: bad input, not a failed run
        line = _last_line(done.stderr)
        assert done.stderr.strip().splitlines() == [line]
        assert line.startswith(f"hpsearch: error: {path.name}: storage: 'sqlite:///runs/tiny/study.db' is damaged (")
        assert "restore it from a backup, or salvage the readable trials with `" in line
        assert _digest(db) == before  # nothing written
        assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0
    if shutil.which("sqlite3") and shutil.which("sed"):  # the salvage command the line gives works
        salvage = re.search(r"`([^`]+)`", line).group(1)  # type: ignore[union-attr]
        subprocess.run(["bash", "-c", salvage], cwd=workdir, check=True, timeout=60, capture_output=True)
        saved = optuna.load_study(study_name="tiny", storage="sqlite:///runs/tiny/study-salvaged.db")
        assert len(saved.trials) == 20
        assert main(["status", str(path), "--storage", "sqlite:///runs/tiny/study-salvaged.db"]) == 0


@pytest.mark.parametrize("text, running, code, words", [
    ("database disk image is malformed", True, 1, "is damaged (database disk image is malformed); restore it"),
    ("database or disk is full", True, 1, "cannot be written: the disk is full (database or disk is full); free space"),
    ('connection failed: connection to server at "127.0.0.1", port 5 failed: Connection refused', False, 2,
     "stopped answering (connection failed: connection to server at"),
])
def test_a_storage_exception_becomes_one_line(text: str, running: bool, code: int, words: str,
                                              write_study: Callable[..., Path]) -> None:
    path = write_study()
    cause = sqlalchemy.exc.OperationalError("UPDATE trials SET ...", {}, sqlite3.OperationalError(text))
    try:
        raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from cause
    except optuna.exceptions.StorageInternalError as exc:
        error = storage_failure(exc, load_config(path), running)
    assert type(error) is (StorageFailure if running else StorageError)  # noqa: E721
    assert getattr(error, "exit_code", 2) == code  # mid-run: 1; in status, report...: 2
    assert str(error).startswith(f"{path}: storage: 'sqlite:///runs/tiny/study.db' {words}")
    assert "\n" not in str(error)


# --------------------------------------------------------------------------- a full disk

@pytest.fixture
def small_disk(workdir: Path) -> Iterator[Path]:
    """A real 3 MB tmpfs at ./disk, unmounted afterwards; skips where mounting is not permitted."""
    with tmpfs(workdir / "disk", "size=3m") as disk:
        yield disk


def _fill(disk: Path) -> Path:
    """Write a file until the file system refuses another byte."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 16, 1 << 12, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return filler


def _run_until_the_disk_fills(path: Path, storage: optuna.storages.RDBStorage, disk: Path,
                              workdir: Path) -> tuple[optuna.trial.FrozenTrial, str, Path]:
    """`hpsearch run` until a trial has 2 epochs, then fill the disk; (that trial, stderr, the filler)."""
    proc = _hpsearch("run", path.name, cwd=workdir)
    try:
        victim = _wait_for(storage, _training(1, epochs=2), proc)[0]
        filler = _fill(disk)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    return victim, err, filler


@pytest.mark.slow
def test_full_disk_under_the_study_file_stops_the_run_and_the_rerun_continues(
        write_study: Callable[..., Path], workdir: Path, small_disk: Path) -> None:
    url = "sqlite:///disk/study.db"
    path = write_study(n_trials=2, storage=url, output_dir="disk/out", train=LONG_TRAIN, workers=FAST_HEARTBEAT)
    with _storage(url) as storage:
        victim, err, filler = _run_until_the_disk_fills(path, storage, small_disk, workdir)
        line = _last_line(err)
        assert line.startswith(f"hpsearch: error: {path.name}: ")  # storage: or output_dir:, whichever failed first
        assert "cannot be written: the disk is full (" in line and line.endswith("; free space, then rerun to continue")
        filler.unlink()
        assert main(["run", str(path), "--epochs", "1"]) == 0
        _assert_finished_consistently(storage, 2, [victim])


@pytest.mark.slow
def test_full_disk_under_the_checkpoints_hands_the_trial_back(write_study: Callable[..., Path], workdir: Path,
                                                             small_disk: Path) -> None:
    url = "sqlite:///runs/tiny/study.db"  # the storage has room: only the checkpoints fail
    path = write_study(n_trials=2, storage=url, output_dir="disk/out", train=LONG_TRAIN, workers=FAST_HEARTBEAT)
    (workdir / "runs" / "tiny").mkdir(parents=True)
    with _storage(url) as storage:
        victim, err, filler = _run_until_the_disk_fills(path, storage, small_disk, workdir)
        assert re.fullmatch(rf"hpsearch: error: {path.name}: output_dir: 'disk/out' cannot be written: the disk is "
                            rf"full \(/\S+/disk/out/\S+\.pt: No space left on device\); free space, then rerun to "
                            rf"continue", _last_line(err))
        trials = _trials(storage)
        assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]  # handed back, not blamed
        assert trials[0].user_attrs["stop_reason"] == "checkpoint_failed" and "error" not in trials[0].user_attrs
        filler.unlink()
        assert main(["run", str(path), "--epochs", "1"]) == 0
        _assert_finished_consistently(storage, 2, [victim])
        resumed = _trials(storage)[1]
        assert resumed.user_attrs["resumed_from"]["trial"] == victim.number  # from the last checkpoint written
        assert resumed.user_attrs["resumed_from"]["epoch"] >= 1


# --------------------------------------------------------------------------- a storage error inside the objective

def _failing_report(trial: optuna.Trial, value: float, step: int) -> None:
    cause = sqlalchemy.exc.OperationalError("INSERT INTO trial_intermediate_values ...", {},
                                            sqlite3.OperationalError("database or disk is full"))
    raise optuna.exceptions.StorageInternalError("An exception is raised during the commit. This typically "
                                                 "happens due to invalid data in the commit, e.g. exceeding max "
                                                 "length.") from cause


def test_storage_error_inside_the_objective_is_not_blamed_on_the_trial(
        write_study: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(n_trials=2)
    url = "sqlite:///runs/tiny/study.db"
    with monkeypatch.context() as patch:
        patch.setattr(optuna.trial.Trial, "report", _failing_report)
        assert main(["run", str(path)]) == 1
    assert _last_line(capsys.readouterr().err) == (
        f"hpsearch: error: {path}: storage: '{url}' cannot be written: the disk is full (database or disk is full); "
        f"free space, then rerun to continue")
    with _storage(url) as storage:
        trials = _trials(storage)
        assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]  # handed back: the storage answers
        assert trials[0].user_attrs["stop_reason"] == "storage_failed" and "error" not in trials[0].user_attrs
        assert main(["run", str(path)]) == 0
        _assert_finished_consistently(storage, 2, [trials[0]])


# --------------------------------------------------------------------------- a PostgreSQL server that stops

@pytest.fixture(scope="module")
def own_postgres() -> Iterator[pg.Cluster]:
    """A PostgreSQL server of our own on a free port (never the shared one); stopped and removed afterwards.

    Skips when it cannot start (no binaries, no postgres user); HPSEARCH_REQUIRE_POSTGRES=1 makes that a failure.
    """
    try:
        cluster = pg.Cluster()
    except (pg.PostgresUnavailable, OSError, subprocess.TimeoutExpired, LookupError) as exc:  # no postgres user
        if os.environ.get("HPSEARCH_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"cannot start a PostgreSQL server of our own: {exc}")
        pytest.skip(f"cannot start a PostgreSQL server of our own: {exc}")
    try:
        yield cluster
    finally:
        cluster.close()


@contextmanager
def _engines_disposed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """In-process commands in the block get their storages' connections closed at its end (psycopg warns else)."""
    opened: list[optuna.storages.RDBStorage] = []

    def make_storage(*args: Any, **kwargs: Any) -> optuna.storages.RDBStorage:
        opened.append(real(*args, **kwargs))
        return opened[-1]

    real = study_module.make_storage
    with monkeypatch.context() as patch:
        patch.setattr(study_module.opening, "make_storage", make_storage)  # where open_study calls it
        try:
            yield
        finally:
            for storage in opened:
                storage.engine.dispose()


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_postgres_stopped_mid_run_ends_in_one_line_and_the_rerun_finishes(
        workers: int, own_postgres: pg.Cluster, write_study: Callable[..., Path], workdir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    if not own_postgres.running():
        own_postgres.start()  # an earlier test failed while it was stopped
    url = own_postgres.create_database(password="s3cret")
    n_trials = workers + 1
    path = write_study(n_trials=n_trials, storage=url, train=LONG_TRAIN, workers=FAST_HEARTBEAT)
    with _storage(url) as storage:
        proc = _hpsearch("run", path.name, "--workers", str(workers), cwd=workdir)
        try:
            cut_short = _wait_for(storage, _training(workers), proc, timeout=240)
            storage.engine.dispose()  # the test's own connections must not outlive the server either
            own_postgres.stop("fast")
            stopped = time.monotonic()
            _, err = proc.communicate(timeout=90)
            took = time.monotonic() - stopped
        finally:
            proc.kill()
            if not own_postgres.running():
                own_postgres.start()
        assert proc.returncode == 1, err
        assert took < 30, f"the run took {took:.0f} s to notice the server had stopped"
        line = _last_line(err)
        shown = re.escape(url.replace(":s3cret@", ":***@"))
        assert re.fullmatch(rf"hpsearch: error: (worker cpu#\d: )?{path.name}: storage: '{shown}' stopped answering "
                            rf"\(.+\); check that the database server is running, then rerun to continue", line), line
        assert "s3cret" not in err
        for log in (workdir / "runs" / "tiny" / "logs").glob("worker-*.log"):
            assert "Traceback" not in log.read_text() and "s3cret" not in log.read_text(), log.read_text()
        with _engines_disposed(monkeypatch):  # in process: no second start-up of torch and the data
            assert main(["status", str(path)]) == 0
            assert main(["run", str(path), "--epochs", "1"]) == 0
        _assert_finished_consistently(storage, n_trials, cut_short)


# --------------------------------------------------------------------------- a connection the server cuts

@pytest.mark.postgres
def test_a_cut_connection_is_one_line_of_ours_without_the_library_dump(
        write_study: Callable[..., Path], empty_pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The server terminates the connection (pg_terminate_backend) under Optuna's trial query, as a DBA or a
    failover does: Optuna logs the raw SQL and parameters and retries on the broken transaction, which
    SQLAlchemy refuses ("Can't reconnect until invalid transaction is rolled back")."""
    from hpsearch.cli import _setup_logging

    cfg = load_config(write_study(storage=empty_pg_url))
    _setup_logging(debug=False)
    study = open_study(cfg)
    engine = study_module.adapter._engine(study_module.storage_of(study))
    armed = [True]

    @sqlalchemy.event.listens_for(engine, "before_cursor_execute")
    def cut(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if armed[0] and statement.lstrip().startswith("SELECT") and "FROM trials" in statement:
            armed[0] = False
            admin, _ = pg.admin_connection()
            with admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (cursor.connection.info.backend_pid,))

    capsys.readouterr()
    try:
        with pytest.raises(optuna.exceptions.StorageInternalError) as caught:
            study.get_trials()
        assert not armed[0]  # the connection was cut for real
        assert "Caught an error" not in capsys.readouterr().err  # the 6-line dump waits for --debug
        message = str(storage_failure(caught.value, cfg, running=True))
        shown = re.escape(empty_pg_url)
        assert re.fullmatch(rf"\S+: storage: '{shown}' stopped answering \(terminating connection due to "
                            rf"administrator command\); check that the database server is running, then rerun to "
                            rf"continue", message), message
    finally:
        engine.dispose()
        study_module.dispose_storages()
