"""What keeps many workers cheap on one database (bench/scale.py measures it): counts, not trial loads; one
pooled connection per process, which its threads take in turns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from hpsearch import worker
from hpsearch.study import state_counts
from hpsearch.study.pool import TurnPool
from hpsearch.study.storage import _engine_kwargs


def _study(tmp_path: Path) -> optuna.Study:
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}")
    for state in (TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.WAITING):
        study.add_trial(optuna.trial.create_trial(state=state, value=1.0 if state == TrialState.COMPLETE else None,
                                                  intermediate_values={0: 1.0} if state == TrialState.PRUNED else None))
    return study


def test_state_counts_count_by_state_and_below_a_number(tmp_path: Path) -> None:
    study = _study(tmp_path)
    assert state_counts(study) == {TrialState.COMPLETE: 2, TrialState.PRUNED: 1, TrialState.FAIL: 1,
                                   TrialState.WAITING: 1}
    assert state_counts(study, below=2) == {TrialState.COMPLETE: 2}


def test_the_worker_loop_counts_claimed_trials_without_loading_them(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    study = _study(tmp_path)

    def no_full_load(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("loaded every trial (O(trials) per trial: 1 s at 20,000 trials)")

    monkeypatch.setattr(study, "get_trials", no_full_load)
    monkeypatch.setattr(study, "_get_trials", no_full_load)
    claimed = worker._claimed(study)
    assert claimed == {TrialState.COMPLETE: 2, TrialState.PRUNED: 1, TrialState.RUNNING: 0, TrialState.WAITING: 1}
    trial = study.ask()  # the waiting trial, number 4: below it 3 claimed (2 complete, 1 pruned) and 1 failed
    assert trial.number == 4
    assert worker._is_surplus(study, trial, n_trials=3) is True
    assert worker._is_surplus(study, trial, n_trials=4) is False


def test_postgresql_engines_keep_one_connection_per_process() -> None:
    kwargs = _engine_kwargs("postgresql+psycopg://user@db-host/hpsearch")
    assert kwargs["pool_size"] == 1  # SQLAlchemy's default 5 kept the heartbeat thread's connection open too
    assert kwargs["poolclass"] is TurnPool  # heartbeat and main thread take turns instead of opening a second
    assert kwargs["pool_pre_ping"] is True
