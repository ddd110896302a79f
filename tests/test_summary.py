"""What the terminal says about a study: counts against the last run's target, trial lines, hints that work."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any, Callable

import optuna
import pytest
from optuna.trial import TrialState

from conftest import TINY_STUDY
from hpsearch.cli import main
from hpsearch.config import build_config
from hpsearch.results import records
from hpsearch.summary import awaits_successor, progress_line, trial_line

CFG = build_config({**TINY_STUDY, "n_trials": 20}, source="s.yaml")


def _trial(number: int, state: TrialState, reason: str | None = None, retries: list[int] | None = None,
           **attrs: Any) -> optuna.trial.FrozenTrial:
    user_attrs = {records.STOP_REASON: reason, **attrs} if reason else dict(attrs)
    return optuna.trial.FrozenTrial(
        number=number, state=state, value=0.5 if state == TrialState.COMPLETE else None, values=None,
        datetime_start=dt.datetime.now(), datetime_complete=dt.datetime.now(), params={"lr": 0.0003833},
        distributions={"lr": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True)}, user_attrs=user_attrs,
        system_attrs=records.retry_attrs(retries) if retries else {}, intermediate_values={}, trial_id=number)


# ------------------------------------------------------------------ counts

def test_counts_below_the_file_target_say_a_plain_rerun_goes_on() -> None:
    assert progress_line(5, 20, CFG) == ("finished 5 of 20 trials (the last run's n_trials); "
                                         "`hpsearch run s.yaml` goes on")


def test_counts_against_a_target_raised_on_the_command_line_never_read_23_of_20() -> None:
    line = progress_line(23, 26, CFG)
    assert "of 20" not in line
    assert line == "finished 23 of 26 trials (the last run's n_trials); `hpsearch run s.yaml --n-trials 26` goes on"


def test_a_finished_study_says_how_to_add_trials() -> None:
    assert progress_line(26, 26, CFG, " --storage sqlite:///x.db") == (
        "finished 26 of 26 trials; to add 20 more: hpsearch run s.yaml --storage sqlite:///x.db --n-trials 46")
    assert progress_line(3, 2, CFG).startswith("finished 3 trials (the last run asked for 2); to add 20 more")


# ------------------------------------------------------------------ trial lines

def test_an_interrupted_trial_names_the_trial_that_resumes_it() -> None:
    trials = [_trial(5, TrialState.FAIL, "interrupted", epochs_run=3), _trial(9, TrialState.WAITING, retries=[5])]
    successor = records.retried_as(trials, 5)
    assert successor == 9
    line = trial_line(trials[0], "val_accuracy", successor)
    assert line.startswith("trial 5 interrupted after 3 epochs, resumes as trial 9")
    assert "val_accuracy=-" not in line and "?" not in line


def test_the_successor_is_the_next_link_of_the_retry_chain() -> None:
    trials = [_trial(5, TrialState.FAIL, "worker_died"), _trial(9, TrialState.FAIL, "interrupted", retries=[5]),
              _trial(12, TrialState.RUNNING, retries=[5, 9])]
    assert records.retried_as(trials, 5) == 9
    assert records.retried_as(trials, 9) == 12
    assert records.successors(trials) == {5: 9, 9: 12}
    assert trial_line(trials[0], "m", 9).startswith("trial 5 worker died, resumes as trial 9")


def test_a_trial_out_of_retries_says_it_is_not_queued_again() -> None:
    last = _trial(9, TrialState.FAIL, "interrupted", retries=[5])
    assert not awaits_successor(last, max_retries=1)
    assert awaits_successor(last, max_retries=2)
    assert "not queued again (max_retries reached)" in trial_line(last, "m", None)


def test_failed_and_finished_trials_read_as_before() -> None:
    failed = _trial(2, TrialState.FAIL, "error", error="Traceback...\nValueError: boom\n")
    assert trial_line(failed, "m") == "trial 2 failed: ValueError: boom"
    done = _trial(1, TrialState.COMPLETE, "completed", epochs_run=1)
    assert trial_line(done, "val_accuracy") == "trial 1 completed: val_accuracy=0.5000 after 1 epoch (lr=0.0003833)"


# ------------------------------------------------------------------ from the command line

def test_status_after_more_trials_than_the_file_counts_what_is_true(
        write_study: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(n_trials=2)
    assert main(["run", str(path), "--n-trials", "3"]) == 0
    capsys.readouterr()
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"finished 3 of 3 trials; to add 2 more: hpsearch run {path} --n-trials 5" in out
    assert "of 2 trials" not in out


def test_a_plain_rerun_of_a_finished_study_runs_nothing_and_says_how_to_extend_it(
        write_study: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(n_trials=2)
    assert main(["run", str(path), "--n-trials", "3"]) == 0
    capsys.readouterr()
    assert main(["run", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "nothing to run: study 'tiny' already has 3 finished trials and n_trials is 2" in err
    assert f"to add 2 more: hpsearch run {path} --n-trials 5" in out
    study = optuna.load_study(study_name="tiny", storage="sqlite:///runs/tiny/study.db")
    assert len(study.trials) == 3
    assert records.target_of(study) == 3  # the rerun that ran nothing left the last run's target alone


def test_hints_carry_the_storage_the_run_used(write_study: Callable[..., Path],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(n_trials=1)
    assert main(["run", str(path), "--storage", "sqlite:///elsewhere.db"]) == 0
    out = capsys.readouterr().out
    assert f"dashboard: hpsearch dashboard {path} --storage sqlite:///elsewhere.db" in out
    assert f"report: hpsearch report {path} --storage sqlite:///elsewhere.db" in out
    assert main(["run", str(path), "--output-dir", "runs/moved"]) == 0
    assert f"report: hpsearch report {path} --storage sqlite:///runs/moved/study.db" in capsys.readouterr().out
    assert main(["status", str(path)]) == 2  # the file's own storage holds no such study: the hint was needed


def test_each_run_is_its_own_session_in_the_report_even_seconds_apart(write_study: Callable[..., Path]) -> None:
    from hpsearch.results.collect import collect_study

    path = write_study(n_trials=1)
    assert main(["run", str(path)]) == 0
    assert main(["run", str(path), "--n-trials", "3", "--workers", "2"]) == 0  # a second run, two workers
    study = optuna.load_study(study_name="tiny", storage="sqlite:///runs/tiny/study.db")
    runs = [records.run_of(t) for t in study.trials]
    assert runs[0] != runs[1] == runs[2]
    assert str(runs[1]).split(":")[1] == str(os.getpid())  # the worker processes took the id of the run
    assert [s.n_trials for s in collect_study(study).summary.sessions] == [1, 2]


def test_status_shows_the_workers_by_host(write_study: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study()
    Path("runs/tiny").mkdir(parents=True)
    study = optuna.create_study(study_name="tiny", storage="sqlite:///runs/tiny/study.db", direction="maximize")
    for worker, state in (("node-a:11", TrialState.COMPLETE), ("node-a:11", TrialState.RUNNING),
                          ("node-a:12", TrialState.RUNNING), ("node-b:7", TrialState.PRUNED),
                          ("node-b:7", TrialState.FAIL)):
        value = 0.5 if state == TrialState.COMPLETE else None
        study.add_trial(optuna.trial.create_trial(state=state, value=value, user_attrs={records.WORKER: worker},
                                                  intermediate_values={1: 0.4} if state == TrialState.PRUNED else None))
    assert main(["status", str(path)]) == 0
    assert "workers by host: node-a 2 running, 1 finished; node-b 0 running, 1 finished" in capsys.readouterr().out
