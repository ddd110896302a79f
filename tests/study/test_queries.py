"""The facts by query (study/queries.py: epoch sums, best trial, workers, successors) agree with the same facts computed
from the trials, on SQLite and PostgreSQL, for every shape of trial record the writers leave."""

from __future__ import annotations

import math
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import optuna
import pytest
import sqlalchemy
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

import study_fixtures as sf
from hpsearch import budget, records, trialsets
from hpsearch.study import queries
from hpsearch.study.queries import committed_epochs
from hpsearch.study import best_trial, epoch_sums, successors, trials_in, worker_states

X = {"x": FloatDistribution(0, 1)}


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[optuna.storages.RDBStorage]:
    url = f"sqlite:///{tmp_path / 'q.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    storage = optuna.storages.RDBStorage(url)
    yield storage
    storage.engine.dispose()  # no connection left to the garbage collector


def _finished(state: TrialState, value: float | None = None, iv: int = 0, **attrs: Any) -> optuna.trial.FrozenTrial:
    return create_trial(state=state, value=value, params={"x": 0.5}, distributions=X, user_attrs=attrs,
                        intermediate_values={e: 0.1 for e in range(1, iv + 1)})


def _odd_shapes(study: optuna.Study) -> None:
    """Trials whose epochs come from each fallback, values that are no count, claims, resumes, all states."""
    history = [{"epoch": e} for e in range(1, 4)]
    study.add_trials([
        _finished(TrialState.FAIL, **{records.HISTORY: history, records.STOP_REASON: records.INTERRUPTED}),
        _finished(TrialState.FAIL, iv=2),  # only reported steps
        _finished(TrialState.PRUNED, iv=3),  # pruned without saying so: saved as pruned
        _finished(TrialState.COMPLETE, 0.7, **{records.EPOCHS_RUN: 6.0, records.STOP_REASON: records.EARLY_STOPPED}),
        _finished(TrialState.COMPLETE, 0.7, iv=4, **{records.EPOCHS_RUN: True, records.HISTORY: []}),  # no count
        _finished(TrialState.COMPLETE, 0.6, **{records.EPOCHS_RUN: 2, records.RESUMED_FROM: {"trial": 0, "epoch": 5}}),
        _finished(TrialState.FAIL, **{records.BUDGET_CLAIM: 3, records.STOP_REASON: records.BUDGET}),
        _finished(TrialState.COMPLETE, 0.9, **{records.EPOCHS_RUN: 2.5, records.RESUMED_FROM: "odd"}),
    ])
    study.enqueue_trial({"x": 0.1})
    running = study.ask()  # RUNNING: charged its claim while that is more than it trained
    running.set_user_attr(records.BUDGET_CLAIM, 4)
    running.set_user_attr(records.HISTORY, history[:1])
    resumed = study.ask()
    resumed.set_user_attr(records.BUDGET_CLAIM, 1)
    resumed.set_user_attr(records.RESUMED_FROM, {"trial": 0, "epoch": 2})
    resumed.set_user_attr(records.HISTORY, history)
    study.enqueue_trial({"x": 0.2})  # WAITING


@pytest.mark.parametrize("epochs", [6, None])
def test_epoch_sums_are_the_budgets_totals_of_the_trials(storage_url: optuna.storages.RDBStorage, epochs: int | None) -> None:
    study = sf.known_epochs_study(storage_url, name=f"sums-{epochs}")
    _odd_shapes(study)
    expected = budget.totals(study.get_trials(deepcopy=False), epochs)
    assert expected.spent > 19 and expected.committed > expected.spent  # the shapes above all count
    assert epoch_sums(study, epochs) == (expected.spent, expected.committed, expected.saved)
    assert budget.totals_of(study, epochs) == expected
    assert committed_epochs(study) == expected.committed


def test_committed_epochs_read_what_changed_and_stay_exact(storage_url: optuna.storages.RDBStorage) -> None:
    study = sf.known_epochs_study(storage_url, name="ledger")
    assert committed_epochs(study) == budget.committed(study.get_trials(deepcopy=False)) == 19
    trial = study.ask()
    trial.set_user_attr(records.BUDGET_CLAIM, 4)
    assert committed_epochs(study) == 23  # the running trial's claim
    trial.set_user_attr(records.HISTORY, [{"epoch": e} for e in range(1, 6)])
    assert committed_epochs(study) == 24  # trained past its claim
    trial.set_user_attr(records.EPOCHS_RUN, 5)
    study.tell(trial, 0.5)
    study.add_trials([_finished(TrialState.COMPLETE, 0.5, **{records.EPOCHS_RUN: 2})])
    assert committed_epochs(study) == budget.committed(study.get_trials(deepcopy=False)) == 26
    ledger = queries._LEDGERS[study]
    ledger.top = 10**9  # as if an id below the highest read had ended unseen: the count tells, all is read again
    study.add_trials([_finished(TrialState.PRUNED, **{records.EPOCHS_RUN: 1})])
    assert committed_epochs(study) == 27 and queries._LEDGERS[study] is not ledger


def test_an_in_memory_study_is_summed_from_its_trials() -> None:
    study = sf.known_epochs_study(optuna.storages.InMemoryStorage())
    assert epoch_sums(study, 6) is None
    assert budget.totals_of(study, 6) == budget.totals(sf.known_epochs_trials(), 6)


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_the_best_trial_by_query_is_records_best_trial(storage_url: optuna.storages.RDBStorage, direction: str) -> None:
    study = optuna.create_study(storage=storage_url, study_name=f"best-{direction}", direction=direction)
    assert best_trial(study) is None
    study.add_trials([_finished(TrialState.PRUNED, iv=1), _finished(TrialState.FAIL)])
    assert best_trial(study) is None
    values = [0.5, math.inf, -math.inf, 0.25, 0.75, 0.25, 0.75]  # infinities are no best; equals: lowest number
    study.add_trials([_finished(TrialState.COMPLETE, v) for v in values])
    expected = trialsets.best_trial(study)
    assert expected is not None and expected.value in (0.25, 0.75)
    found = best_trial(study)
    assert found is not None and (found.number, found.value) == (expected.number, expected.value)
    assert found.params == expected.params and found.user_attrs == expected.user_attrs


def test_workers_successors_and_failed_trials_by_query(storage_url: optuna.storages.RDBStorage) -> None:
    study = optuna.create_study(storage=storage_url, study_name="workers")
    study.add_trials([_finished(TrialState.COMPLETE, 0.5, **{records.WORKER: "a:1"}),
                      _finished(TrialState.FAIL, **{records.WORKER: "a:1"}),
                      _finished(TrialState.PRUNED, iv=1, **{records.WORKER: "b:2"}), _finished(TrialState.COMPLETE, 1)])
    study.add_trial(create_trial(state=TrialState.WAITING, params={"x": 0.5}, distributions=X,
                                 system_attrs=records.retry_attrs([1])))
    study.add_trial(create_trial(state=TrialState.WAITING, system_attrs=records.retry_attrs([1, 4])))
    running = study.ask()
    running.set_user_attr(records.WORKER, "b:3")
    assert sorted(worker_states(study)) == [("a:1", TrialState.COMPLETE, 1), ("a:1", TrialState.FAIL, 1),
                                            ("b:2", TrialState.PRUNED, 1), ("b:3", TrialState.RUNNING, 1)]
    assert successors(study) == trialsets.successors(study.get_trials(deepcopy=False)) == {1: 4, 4: 5}
    assert [t.number for t in trials_in(study, (TrialState.FAIL,))] == [1]


def test_all_trials_by_query_are_optunas_own(storage_url: optuna.storages.RDBStorage) -> None:
    """Every field of every trial (all states, infinite and NaN values, several params and objectives' values,
    steps, user and system attrs) as Optuna's get_trials builds it, in number order; another study's trials left out."""
    other = optuna.create_study(storage=storage_url, study_name="all-trials-other")
    other.add_trials([_finished(TrialState.COMPLETE, 0.3, iv=2)])
    study = optuna.create_study(storage=storage_url, study_name="all-trials")
    _odd_shapes(study)
    study.add_trials([_finished(TrialState.COMPLETE, v, iv=2) for v in (math.inf, -math.inf)])
    trial = study.ask({"y": optuna.distributions.CategoricalDistribution(["a", "b"]), **X})
    trial.report(math.nan, 1)
    trial.storage.set_trial_system_attr(trial._trial_id, "note", {"k": [1, 2]})
    study.tell(trial, 0.4)
    two = optuna.create_study(storage=storage_url, study_name="all-trials-two", directions=["maximize", "minimize"])
    two.add_trials([create_trial(values=[0.5, 3.0], params={"x": 0.2}, distributions=X)])

    def fields(t: optuna.trial.FrozenTrial) -> tuple[Any, ...]:
        steps = {k: "nan" if math.isnan(v) else v for k, v in t.intermediate_values.items()}
        return (t.number, t.state, t.values, t.datetime_start, t.datetime_complete, t.params, t.distributions,
                t.user_attrs, t.system_attrs, steps, t._trial_id)

    for named in ("all-trials", "all-trials-two"):
        fresh = optuna.load_study(study_name=named, storage=storage_url)
        expected = [fields(t) for t in optuna.load_study(study_name=named, storage=storage_url).get_trials()]
        assert [fields(t) for t in queries.all_trials(fresh)] == expected


def test_aggregate_reads_run_without_postgres_jit(pg_url: str) -> None:
    """The epoch sums' statement is costly enough, at 20,000 trials, for PostgreSQL to JIT-compile it: 5.4 s of 6.8 s
    (bench/RESULTS.md); the reads turn JIT off for their own transaction only."""
    storage = optuna.storages.RDBStorage(pg_url)
    try:
        sql = queries._json("postgresql")
        assert sql is not None
        with queries._reading(storage.engine, sql) as conn:
            assert conn.execute(sqlalchemy.text("SHOW jit")).scalar() == "off"
        with storage.engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("SHOW jit")).scalar() == "on"  # the server's default, untouched
    finally:
        storage.engine.dispose()
