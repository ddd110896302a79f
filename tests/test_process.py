"""Real `hpsearch` processes: the console entry point, and Ctrl-C in the middle of a trial."""

from __future__ import annotations

import contextlib
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Callable

import optuna
import pytest

from torch_fixtures import DEVICES
from conftest import start_hpsearch

ROOT = Path(__file__).resolve().parent.parent


def _wait_for_running(url: str, proc: subprocess.Popen[str], timeout: float = 180.0) -> None:
    """Until a RUNNING trial has its first epoch's history, read without writing: `optuna.load_study` on a file
    whose tables the run is still creating would create them too, and one of the two would fail."""
    path = Path(url.removeprefix("sqlite:///"))
    query = ("SELECT count(*) FROM trials JOIN trial_user_attributes USING (trial_id) "
             "WHERE trials.state = 'RUNNING' AND trial_user_attributes.key = 'history'")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if path.exists():
            try:
                with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
                    if db.execute(query).fetchone()[0]:
                        return
            except sqlite3.OperationalError:  # no such table yet, or the file is still being set up
                pass
        time.sleep(0.2)
    raise AssertionError("no trial reached its first epoch in time")


@pytest.mark.slow
def test_sigint_marks_the_trial_failed_and_rerun_continues(write_study: Callable[..., Path], workdir: Path) -> None:
    path = write_study(n_trials=2, train={"epochs": 400, "batch_size": 16})
    url = "sqlite:///runs/tiny/study.db"
    proc = start_hpsearch("run", str(path), cwd=workdir)
    try:
        _wait_for_running(url, proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == 130, err
    assert "finished 0 of 2 trials" in out
    assert re.search(r"^trial 0 interrupted( after \d+ epochs?)?, resumes as trial 1 \(", err, re.M), err
    trials = optuna.load_study(study_name="tiny", storage=url).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING]
    assert trials[0].user_attrs["stop_reason"] == "interrupted"
    assert trials[1].params == trials[0].params  # queued again, to resume from its checkpoint
    interrupted_at = len(trials[0].user_attrs["history"])

    rerun = start_hpsearch("run", str(path), "--epochs", "1", cwd=workdir)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    study = optuna.load_study(study_name="tiny", storage=url)
    assert [t.number for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))] == [1, 2]
    resumed = study.trials[1]
    assert resumed.user_attrs["resumed_from"]["trial"] == 0
    assert resumed.user_attrs["resumed_from"]["epoch"] >= max(1, interrupted_at - 1)


def test_output_piped_into_a_reader_that_leaves_early_is_no_error(workdir: Path) -> None:
    proc = start_hpsearch("validate", str(ROOT / "studies" / "quickstart.yaml"), cwd=workdir)
    proc.stdout.close()  # as `| head -1` does once it has its line
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "BrokenPipeError" not in err


def test_console_script_runs_a_study(write_study: Callable[..., Path], workdir: Path) -> None:
    path = write_study(n_trials=1, train={"epochs": 1, "batch_size": 64})
    proc = start_hpsearch("run", str(path), cwd=workdir)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "finished 1 of 1 trials" in out and "best trial #0" in out


@pytest.mark.parametrize("device", DEVICES)
def test_run_trains_on_the_device_and_saves_portable_checkpoints(write_study: Callable[..., Path], workdir: Path,
                                                                 device: str) -> None:
    from hpsearch.engine import load_checkpoint

    path = write_study(n_trials=2, device=device, model={"name": "seednet", "args": {"width": 8}},
                       train={"epochs": 2, "batch_size": 64, "augment": ["crop", "hflip"]})
    proc = start_hpsearch("run", str(path), cwd=workdir)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    study = optuna.load_study(study_name="tiny", storage="sqlite:///runs/tiny/study.db")
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(done) == 2
    assert all(t.user_attrs["device"].startswith("cuda:0 (" if device == "cuda" else "cpu") for t in done)
    checkpoint = load_checkpoint(done[0].user_attrs["checkpoint"])  # read on the CPU, wherever it was written
    assert all(not tensor.is_cuda for tensor in checkpoint["model"].values())
