"""The study-wide epoch budget (`budget: {epochs: N}`): epochs spent, reserved and left, from the trial records.

A trial's charge is the epochs it trained itself (a resumed trial's earlier epochs belong to the trial it
resumes) or, while it runs, the epochs it reserved (`budget_claim`) if more. A trial reserves its first
rung before it starts and each later epoch before it trains it, then reads the study-wide total back: if
the total exceeds the budget it gives the reservation up. A reservation is written before the total is
read, so of two workers racing for the last epochs at least one sees both and yields: the budget is never
overspent. (Both may yield; the worker loop then tries again while the rest can pay a first rung.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.config import StudyConfig
from hpsearch.config.rules import first_rung
from hpsearch import records, trialsets
from hpsearch.study.queries import committed_epochs, epoch_sums


@dataclass(frozen=True)
class Budget:
    epochs: int  # study-wide
    first_rung: int  # what a trial must be able to pay before it starts


def of(cfg: StudyConfig) -> Budget | None:
    """The study file's budget, or None without `budget: {epochs: N}`."""
    if cfg.budget.epochs is None:
        return None
    return Budget(cfg.budget.epochs, first_rung(cfg)[0])


def resumed_epochs(trial: FrozenTrial) -> int:
    """Epochs a resumed trial took over from the trial it retries (0 when it started afresh)."""
    source = trial.user_attrs.get(records.RESUMED_FROM)
    return (records.as_int(source.get("epoch")) or 0) if isinstance(source, dict) else 0


def trained(trial: FrozenTrial) -> int:
    """Epochs this trial trained itself."""
    return max(0, (records.epochs_run(trial) or 0) - resumed_epochs(trial))


def charge(trial: FrozenTrial) -> int:
    """What the trial costs the budget: its trained epochs, or while it runs its reservation if that is more."""
    if trial.state != TrialState.RUNNING:
        return trained(trial)
    return max(trained(trial), records.as_int(trial.user_attrs.get(records.BUDGET_CLAIM)) or 0)


def spent(trials: Iterable[FrozenTrial]) -> int:
    """Epochs trained study-wide, by trials of every state (failed and running ones included)."""
    return sum(trained(t) for t in trials)


def committed(trials: Iterable[FrozenTrial]) -> int:
    """Epochs spent plus those running trials have reserved and not trained yet."""
    return sum(charge(t) for t in trials)


@dataclass(frozen=True)
class Totals:
    """Study-wide epochs: spent, committed (spent plus running trials' unspent claims), saved by stop reason."""

    spent: int
    committed: int
    saved: dict[str, int] = field(default_factory=dict)


def totals(trials: Iterable[FrozenTrial], epochs: int | None = None) -> Totals:
    """The totals of `trials` (`saved` needs `epochs`, the epochs of one trial: see trialsets.epochs_saved)."""
    trials = list(trials)
    return Totals(spent(trials), committed(trials), trialsets.epochs_saved(trials, epochs))


def totals_of(study: optuna.Study, epochs: int | None = None) -> Totals:
    """The study's totals, by one aggregate query where the storage allows (the worker asks before every trial
    and epoch: reading every trial costs O(trials) each time), else from its trials."""
    summed = epoch_sums(study, epochs)
    if summed is None:
        return totals(study.get_trials(deepcopy=False), epochs)
    return Totals(*summed)


def can_start(trials: Iterable[FrozenTrial], budget: Budget) -> bool:
    """True while the budget not yet committed can pay a new trial's first rung."""
    return budget.epochs - committed(trials) >= budget.first_rung


def committed_of(study: optuna.Study) -> int:
    """:func:`committed` over the study's trials: in SQL, reading only the trials open or ended since the last
    call (see hpsearch.study.queries.committed_epochs), else from its trials."""
    counted = committed_epochs(study)
    return committed(study.get_trials(deepcopy=False)) if counted is None else counted


def study_can_start(study: optuna.Study, budget: Budget) -> bool:
    """:func:`can_start` over the study's trials."""
    return budget.epochs - committed_of(study) >= budget.first_rung


def reserve(study: optuna.Study, trial: optuna.Trial, own_epochs: int, budget: Budget) -> bool:
    """Reserve the budget for `trial` to have trained `own_epochs` itself; False (reservation dropped) if it cannot.

    `trial` must hold no more than its claim so far: `own_epochs` - 1 trained, or nothing at its start.
    """
    before = records.as_int(trial.user_attrs.get(records.BUDGET_CLAIM)) or 0
    if own_epochs <= before:
        return True
    trial.set_user_attr(records.BUDGET_CLAIM, own_epochs)
    if committed_of(study) <= budget.epochs:
        return True
    trial.set_user_attr(records.BUDGET_CLAIM, before)
    return False
