"""The study-wide epoch budget: accounting over trial records, reservations, and real runs that stop on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from conftest import start_hpsearch
from hpsearch import budget
from hpsearch.cli import main
from hpsearch.config import build_config
from hpsearch import records


def _trial(state: TrialState, epochs: int, **attrs: Any) -> optuna.trial.FrozenTrial:
    value = 0.5 if state == TrialState.COMPLETE else None
    return create_trial(state=state, value=value, params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
                        user_attrs={records.HISTORY: [{"epoch": e + 1} for e in range(epochs)], **attrs})


def test_spent_counts_every_state_and_only_a_resumed_trials_own_epochs() -> None:
    trials = [_trial(TrialState.COMPLETE, 9, **{records.EPOCHS_RUN: 9}),
              _trial(TrialState.PRUNED, 3, **{records.EPOCHS_RUN: 3, records.STOP_REASON: "pruned"}),
              _trial(TrialState.FAIL, 4),  # interrupted after 4 epochs
              _trial(TrialState.COMPLETE, 9, **{records.EPOCHS_RUN: 9, records.RESUMED_FROM: {"trial": 2, "epoch": 4}})]
    assert [budget.trained(t) for t in trials] == [9, 3, 4, 5]
    assert budget.spent(trials) == 21


def test_a_running_trial_is_charged_its_reservation_until_it_trains_past_it() -> None:
    running = create_trial(state=TrialState.COMPLETE, value=1.0)  # create_trial refuses RUNNING: set it after
    running.state = TrialState.RUNNING
    running.set_user_attr(records.BUDGET_CLAIM, 3)
    running.set_user_attr(records.HISTORY, [{"epoch": 1}])
    assert budget.charge(running) == 3
    running.set_user_attr(records.HISTORY, [{"epoch": e} for e in range(1, 6)])
    assert budget.charge(running) == 5
    ended = _trial(TrialState.FAIL, 0, **{records.BUDGET_CLAIM: 3, records.STOP_REASON: "budget"})
    assert budget.charge(ended) == 0  # a refused trial gives its reservation back
    assert budget.committed([running, ended]) == 5
    assert budget.can_start([running, ended], budget.Budget(epochs=8, first_rung=3))
    assert not budget.can_start([running, ended], budget.Budget(epochs=7, first_rung=3))


@pytest.mark.parametrize("where", ["memory", "sqlite"])  # summed from the trials, or by one query
def test_reserve_never_overspends_and_gives_back_what_it_cannot_keep(where: str, tmp_path: Path) -> None:
    study = optuna.create_study(storage=None if where == "memory" else f"sqlite:///{tmp_path / 'b.db'}")
    plan = budget.Budget(epochs=5, first_rung=2)
    a, b, c = study.ask(), study.ask(), study.ask()
    assert budget.reserve(study, a, 2, plan) and budget.reserve(study, b, 2, plan)
    assert not budget.reserve(study, c, 2, plan)  # 4 reserved, 1 left: no first rung for a third
    assert c.user_attrs[records.BUDGET_CLAIM] == 0
    a.set_user_attr(records.HISTORY, [{"epoch": 1}, {"epoch": 2}])
    assert budget.reserve(study, a, 2, plan)  # within its reservation: no question asked
    assert budget.reserve(study, a, 3, plan)  # the 5th epoch
    assert not budget.reserve(study, b, 3, plan)  # the 6th would overspend
    assert budget.committed(study.get_trials(deepcopy=False)) == budget.totals_of(study).committed == 5
    assert not budget.study_can_start(study, budget.Budget(epochs=5, first_rung=1))
    assert budget.study_can_start(study, budget.Budget(epochs=6, first_rung=1))


def test_budget_below_the_first_rung_is_refused_with_the_fix() -> None:
    raw = {"name": "b", "train": {"epochs": 18, "batch_size": 8}, "space": {"lr": {"type": "float", "low": 0.01,
                                                                                    "high": 0.1}}}
    assert budget.of(build_config({**raw, "budget": {"epochs": 2}})) == budget.Budget(2, 2)  # ceil(18 / 9)
    with pytest.raises(Exception, match=r"^<memory>: budget.epochs: 1 epochs cannot pay for one trial's first rung "
                                        r"\(2 epochs: the pruner's min_resource\); raise it to at least 2$"):
        build_config({**raw, "budget": {"epochs": 1}})
    with pytest.raises(Exception, match=r"budget.epochs: 10 epochs .*\(18 epochs: train.epochs: without a pruner"):
        build_config({**raw, "budget": {"epochs": 10}, "pruner": {"type": "none"}})


def test_budget_flag_below_the_first_rung_exits_2_before_anything_is_written(
        write_study: Callable[..., Path], workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study()
    assert main(["run", str(path), "--budget-epochs", "1"]) == 2
    assert "budget.epochs: 1 epochs cannot pay for one trial's first rung (2 epochs" in capsys.readouterr().err
    assert not (workdir / "runs").exists()


@pytest.mark.slow
def test_two_workers_stop_at_exactly_the_epoch_budget(write_study: Callable[..., Path], workdir: Path) -> None:
    path = write_study(n_trials=50, train={"epochs": 3, "batch_size": 64},
                       pruner={"type": "successive_halving", "min_resource": 1, "reduction_factor": 3})
    proc = start_hpsearch("run", str(path), "--workers", "2", "--budget-epochs", "7", cwd=workdir)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    study = optuna.load_study(study_name="tiny", storage="sqlite:///runs/tiny/study.db")
    trials = study.get_trials()
    assert budget.spent(trials) == 7  # first rung 1: every epoch of the budget can be paid, none more
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert study.user_attrs[records.STUDY_BUDGET] == 7
