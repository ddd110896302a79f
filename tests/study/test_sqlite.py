"""The SQLite file of a running study deleted, replaced or overwritten mid-run (issue #16, item 5): real processes.

SQLite goes on writing to a deleted file's inode without an error, so without a check the run would
report every trial as finished while the study no longer exists. A real `python -m hpsearch run`
child trains; once its first trial is COMPLETE (seen through a reader of the file) the file is
deleted, replaced or overwritten; the run must end with one line and exit 1.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import python_env, start_hpsearch

ENV = python_env(OMP_NUM_THREADS="1")
DB = Path("runs") / "tiny" / "study.db"
TRAIN = {"epochs": 12, "batch_size": 64}  # a trial of a few seconds: the run is always mid-study when the file goes


def _complete_trials(db: Path) -> int:
    """COMPLETE trials in the file, read through a connection of the test's own (0 before the tables exist)."""
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.OperationalError:  # no such table yet
        return 0
    finally:
        conn.close()


def _after_first_trial(proc: subprocess.Popen[str], db: Path, timeout: float = 240.0) -> None:
    """Wait (on the event, not a guess of time) for the run's first COMPLETE trial."""
    deadline = time.monotonic() + timeout
    while _complete_trials(db) < 1:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no trial completed in time"
        time.sleep(0.2)


def _delete(db: Path) -> None:
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        path.unlink(missing_ok=True)


def _replace(db: Path) -> None:
    other = db.with_name("other.db")
    sqlite3.connect(other).close()
    os.replace(other, db)


def _overwrite(db: Path) -> None:
    """16 KiB of garbage over pages 2 to 5, in place (the inode stays the same).

    Past the first page: garbage over the header fails the very next statement; these pages (schema
    tables' roots) the run itself may never read again, so it reported success (exit 0) before the
    end-of-run check, and the next command found the file damaged.
    """
    with open(db, "r+b") as f:
        f.seek(4096)
        f.write(os.urandom(16 * 1024))


def _run(argv: list[str], db: Path, fault: Callable[[Path], None], cwd: Path) -> tuple[int, str, str]:
    proc = start_hpsearch("run", *argv, cwd=cwd, env=ENV)
    try:
        _after_first_trial(proc, cwd / db)
        fault(cwd / db)
        out, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    return proc.returncode, out, err


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_the_study_file_deleted_mid_run_ends_the_run_with_one_line(workers: int, write_study: Callable[..., Path],
                                                                    workdir: Path) -> None:
    path = write_study(n_trials=6, train=TRAIN)
    code, out, err = _run([path.name, "--workers", str(workers)], DB, _delete, workdir)
    assert code == 1, err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    # With two workers, a worker notices at its next trial boundary, or the supervisor as it opens the study.
    prefix = "hpsearch: error: " + ("(?:worker cpu#\\d: )?" if workers > 1 else "")
    deleted = (rf"was deleted during the run \({workdir / DB} is gone, with every trial it held\); nothing this run "
               rf"did since is saved: restore the file from a backup, or rerun to start the study again")
    # With two workers, the other one's next connection may create a new, empty file at the path first.
    replaced = (rf"was replaced during the run \(another file is at {workdir / DB} now\); the trials this run "
                rf"finished since then went to the old file and are lost: check what replaced it, then rerun")
    either = deleted if workers == 1 else f"(?:{deleted}|{replaced})"
    assert re.fullmatch(rf"{prefix}{path.name}: storage: 'sqlite:///runs/tiny/study.db' {either}", line), line
    assert "finished 6 of 6" not in out + err  # nothing is reported as saved


@pytest.mark.slow
def test_the_study_file_replaced_mid_run_ends_the_run_with_one_line(write_study: Callable[..., Path],
                                                                     workdir: Path) -> None:
    path = write_study(n_trials=6, train=TRAIN)
    code, out, err = _run([path.name], DB, _replace, workdir)
    assert code == 1, err
    assert err.strip().splitlines()[-1] == (
        f"hpsearch: error: {path.name}: storage: 'sqlite:///runs/tiny/study.db' was replaced during the run (another "
        f"file is at {workdir / DB} now); the trials this run finished since then went to the old file and are "
        f"lost: check what replaced it, then rerun")
    assert "finished 6 of 6" not in out


@pytest.mark.slow
def test_the_study_file_overwritten_mid_run_is_not_a_success(write_study: Callable[..., Path], workdir: Path) -> None:
    path = write_study(n_trials=3, train=TRAIN)
    code, out, err = _run([path.name], DB, _overwrite, workdir)
    assert code == 1, err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"hpsearch: error: {path.name}: storage: 'sqlite:///runs/tiny/study.db' ")
    assert "is damaged (" in line and "restore it from a backup" in line, line
    assert "finished 3 of 3" not in out


def test_a_study_file_deleted_as_a_process_opens_it_is_the_deleted_mid_run_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The supervisor opens the study while workers run: a file deleted between its opening and its first stat is
    the same one-line failure (exit 1) as one deleted later, not 'cannot open' with the OS's words."""
    from hpsearch.errors import StorageFailure
    from hpsearch.study import make_storage, storage

    db = tmp_path / "study.db"
    opened = storage._open_rdb

    def open_then_delete(url: str, heartbeat: dict[str, object]) -> object:
        made = opened(url, heartbeat)
        for path in (db, db.with_name("study.db-wal"), db.with_name("study.db-shm")):
            path.unlink(missing_ok=True)
        return made

    monkeypatch.setattr(storage, "_open_rdb", open_then_delete)
    with pytest.raises(StorageFailure) as caught:
        make_storage(f"sqlite:///{db}", "study.yaml")
    assert str(caught.value).startswith(f"study.yaml: storage: 'sqlite:///{db}' was deleted during the run ({db} is gone")
    assert caught.value.exit_code == 1
