"""Hand-made trials (FrozenTrial) and in-memory studies for the tests of records and trialsets."""

from __future__ import annotations

import datetime as dt
from typing import Any

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from hpsearch import records

T0 = dt.datetime(2025, 1, 6, 9, 0, 0)


def frozen(state: TrialState = TrialState.COMPLETE, value: float | None = 0.5, number: int = 0,
           attrs: dict[str, Any] | None = None, steps: dict[int, float] | None = None,
           seconds: float | None = 12.5) -> FrozenTrial:
    """A trial started at T0 that ran `seconds` (None: still running), with the attrs and reported steps given."""
    return FrozenTrial(
        number=number, state=state, value=value if state == TrialState.COMPLETE else None, values=None,
        datetime_start=T0, datetime_complete=None if seconds is None else T0 + dt.timedelta(seconds=seconds),
        params={}, distributions={}, user_attrs=attrs or {}, system_attrs={}, intermediate_values=steps or {},
        trial_id=number)


def memory_study(direction: str = "maximize", values: tuple[float, ...] = ()) -> optuna.Study:
    """An in-memory study holding one complete trial per value."""
    study = optuna.create_study(direction=direction)
    for v in values:
        study.add_trial(optuna.trial.create_trial(
            params={"lr": 0.01}, distributions={"lr": FloatDistribution(1e-4, 1, log=True)}, value=v))
    return study


def timed(start_s: float, end_s: float | None, worker: str = "h:1") -> FrozenTrial:
    """A trial from T0 + start_s to T0 + end_s (None: still running) on `worker`."""
    t = frozen(TrialState.COMPLETE if end_s is not None else TrialState.RUNNING,
               attrs={records.WORKER: worker}, seconds=None if end_s is None else end_s - start_s)
    t.datetime_start = T0 + dt.timedelta(seconds=start_s)
    t.datetime_complete = None if end_s is None else T0 + dt.timedelta(seconds=end_s)
    return t


def scored(number: int, values: list[float], constraints: dict[str, float] | None = None) -> FrozenTrial:
    """A complete trial with these objective values and constraint values (> 0: broken)."""
    system = {f"constraints:{k}": v for k, v in (constraints or {}).items()}  # Optuna's own layout
    return FrozenTrial(number=number, state=TrialState.COMPLETE, value=None, values=values, datetime_start=T0,
                       datetime_complete=T0, params={}, distributions={}, user_attrs={}, system_attrs=system,
                       intermediate_values={}, trial_id=number)
