"""The live view's data: one row per worker slot, read back from the storage."""

from __future__ import annotations

import datetime as dt
import logging

import optuna
import pytest
from optuna.trial import TrialState

from conftest import TINY_STUDY
from hpsearch import records
from hpsearch.config import build_config
from hpsearch.monitor import Monitor, worker_rows
from hpsearch.slots import Slot


def _trial(number: int, state: TrialState, slot: int, epochs: int) -> optuna.trial.FrozenTrial:
    history = [{"epoch": e, "val_accuracy": 0.5 + e / 100} for e in range(1, epochs + 1)]
    return optuna.trial.FrozenTrial(
        number=number, state=state, value=None, values=None, datetime_start=dt.datetime.now(),
        datetime_complete=None, params={}, distributions={},
        user_attrs={"slot": slot, "device": "cuda:0 (test)", "history": history}, system_attrs={},
        intermediate_values={}, trial_id=number)


def test_one_row_per_slot_with_the_running_trial() -> None:
    cfg = build_config({**TINY_STUDY, "train": {"epochs": 5, "batch_size": 32}})
    trials = [_trial(0, TrialState.COMPLETE, 0, 5), _trial(1, TrialState.RUNNING, 1, 3)]
    rows = worker_rows(trials, [Slot(0, 0), Slot(1, 1)], cfg)
    assert rows[0][:3] == ["gpu0#0", "-", "idle"]
    assert rows[1][1:5] == ["cuda:0 (test)", "#1", "3/5", "0.5300"]


def test_a_worker_not_yet_in_a_trial_shows_its_phase_and_for_how_long() -> None:
    cfg = build_config({**TINY_STUDY, "train": {"epochs": 5, "batch_size": 32}})
    statuses = {0: {"phase": "loading data", "since": 100.0}, 1: {"phase": "trials", "since": 90.0}}
    rows = worker_rows([], [Slot(0, 0), Slot(1, 0), Slot(2, 0)], cfg, statuses, now=112.4)
    assert [row[2] for row in rows] == ["loading data (12 s)", "idle", "idle"]


def test_a_handed_back_trial_is_logged_once_its_successor_exists(caplog: pytest.LogCaptureFixture) -> None:
    cfg = build_config({**TINY_STUDY, "train": {"epochs": 5, "batch_size": 32}})
    study = optuna.create_study()
    monitor = Monitor(study, cfg, [Slot(0, 0)], live=False)
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={records.STOP_REASON: "interrupted"}))
    with caplog.at_level(logging.INFO, logger="hpsearch"):
        monitor.update(force=False)
        assert "trial 0" not in caplog.text  # failed a moment before it is queued again: wait for the successor
        monitor.last = 0.0
        study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, system_attrs=records.retry_attrs([0])))
        monitor.update()
    assert "trial 0 interrupted, resumes as trial 1" in caplog.text
    assert caplog.text.count("trial 0 ") == 1


def _finished(study: optuna.Study, n: int) -> None:
    for _ in range(n):
        study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.5,
                                                  user_attrs={records.STOP_REASON: "completed"}))


def test_plain_mode_logs_the_trials_that_finished_before_it_attached(caplog: pytest.LogCaptureFixture) -> None:
    cfg = build_config({**TINY_STUDY, "train": {"epochs": 5, "batch_size": 32}})
    monitor = Monitor(None, cfg, [Slot(0, None), Slot(1, None)], live=False)  # the study does not exist yet
    study = optuna.create_study()
    _finished(study, 4)  # the workers were quick: four trials ended before the supervisor opened the study
    with caplog.at_level(logging.INFO, logger="hpsearch"):
        monitor.attach(study)
        monitor.update(force=True)
        _finished(study, 2)
        monitor.update(force=True)
    assert [line.split(":")[0] for line in caplog.messages if line.startswith("trial ")] == \
        [f"trial {n} completed" for n in range(6)]


def test_plain_mode_leaves_the_trials_of_earlier_runs_to_the_summary(caplog: pytest.LogCaptureFixture) -> None:
    cfg = build_config({**TINY_STUDY, "train": {"epochs": 5, "batch_size": 32}})
    study = optuna.create_study()
    _finished(study, 3)  # an earlier run's
    monitor = Monitor(study, cfg, [Slot(0, None)], live=False)
    with caplog.at_level(logging.INFO, logger="hpsearch"):
        _finished(study, 1)
        monitor.update(force=True)
    assert [line.split(":")[0] for line in caplog.messages if line.startswith("trial ")] == \
        ["trial 3 completed"]
