"""Facts over many trials (hpsearch.trialsets): run sessions, busy time, the best trial, counts, Pareto fronts."""

from __future__ import annotations

import datetime as dt
import math

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from hpsearch import records, trialsets
from trial_fixtures import frozen, memory_study, scored, timed


def test_run_sessions_split_at_an_idle_minute() -> None:
    trials = [timed(0, 50), timed(10, 30), timed(50.5, 100), timed(159, 170),  # gaps under a minute
              timed(231, 240), timed(250, None),  # 61 s with nothing running: a new run
              timed(400, 420)]
    groups = trialsets.run_sessions(reversed(trials))
    assert [[t.datetime_start for t in g] for g in groups] == [
        [t.datetime_start for t in trials[:4]], [t.datetime_start for t in trials[4:6]], [trials[6].datetime_start]]
    assert trialsets.run_sessions(trials, gap_s=200) == [trials]


def test_trials_that_name_their_run_are_grouped_by_it_whatever_the_gaps() -> None:
    first, second, old = timed(0, 10), timed(200, 210), timed(5, 20)  # run a, resumed late; an unnamed trial
    first.user_attrs[records.RUN] = second.user_attrs[records.RUN] = "h:1:100"
    overlapping = timed(8, 30)
    overlapping.user_attrs[records.RUN] = "h:2:105"  # another run started beside it: its own session
    groups = trialsets.run_sessions([second, overlapping, old, first])
    assert groups == [[first, second], [old], [overlapping]]


def test_busy_time_is_the_union_of_trial_intervals() -> None:
    trials = [timed(0, 50), timed(10, 30), timed(40, 60), timed(100, 110), timed(200, None)]
    assert trialsets.busy_s(trials) == 60 + 10  # overlaps once, gaps not at all, an open trial not yet
    assert trialsets.busy_s([]) == 0.0


@pytest.mark.parametrize("direction, expected", [("maximize", 1), ("minimize", 3)])
def test_best_trial_in_both_directions(direction: str, expected: int) -> None:
    study = memory_study(direction, (0.5, 0.9, 0.9, 0.1, 0.1))  # ties: the first trial to reach the value wins
    best = trialsets.best_trial(study)
    assert best is not None and best.number == expected
    assert best.number == study.best_trial.number  # what Optuna itself says on this storage


def test_best_trial_ignores_other_states_and_non_finite_values() -> None:
    trials = [frozen(value=math.inf, number=0), frozen(value=0.2, number=1),
              frozen(TrialState.PRUNED, number=2), frozen(TrialState.FAIL, number=3)]
    best = trialsets.best_among(trials, "maximize")
    assert best is not None and best.number == 1
    assert trialsets.best_among(trials[2:], "maximize") is None
    assert trialsets.best_trial(memory_study()) is None


def test_counts_by_state_include_zero_states() -> None:
    trials = [frozen(), frozen(), frozen(TrialState.PRUNED), frozen(TrialState.RUNNING, seconds=None)]
    counts = trialsets.counts_by_state(trials)
    assert counts == {"RUNNING": 1, "COMPLETE": 2, "PRUNED": 1, "FAIL": 0, "WAITING": 0}
    assert list(counts) == [s.name for s in TrialState]
    assert trialsets.finished(counts) == 3
    assert trialsets.counts_by_state([]) == dict.fromkeys(counts, 0)


def test_a_trial_failed_before_it_trained_joins_no_session() -> None:
    """A surplus (or budget-refused) trial carries no run id: it must not count as a session of its own."""
    start = dt.datetime(2026, 12, 2, 6, 0, 0)

    def trial(minute: int, state: TrialState, attrs: dict[str, object]) -> FrozenTrial:
        made = optuna.trial.create_trial(state=state, value=0.5 if state == TrialState.COMPLETE else None,
                                         user_attrs=attrs)
        made.datetime_start = start + dt.timedelta(minutes=minute)
        made.datetime_complete = made.datetime_start + dt.timedelta(seconds=30)
        return made

    trials = [trial(0, TrialState.COMPLETE, {records.RUN: "a"}),
              trial(90, TrialState.COMPLETE, {records.RUN: "b"}),
              trial(91, TrialState.FAIL, {records.STOP_REASON: records.SURPLUS}),
              trial(180, TrialState.FAIL, {records.STOP_REASON: records.BUDGET})]
    assert [len(s) for s in trialsets.run_sessions(trials)] == [1, 1]
    trials.append(trial(270, TrialState.FAIL, {records.STOP_REASON: records.ERRORED}))  # it trained, then failed
    assert [len(s) for s in trialsets.run_sessions(trials)] == [1, 1, 1]


def test_the_pareto_front_keeps_the_undominated_feasible_trials() -> None:
    trials = [scored(0, [0.9, 5000]), scored(1, [0.8, 600]), scored(2, [0.7, 700]),  # 2: beaten by 1
              scored(3, [0.95, 9000], {"params": 1.0}), scored(4, [0.8, 600]), scored(5, [0.85, 600])]
    front = trialsets.pareto_front(trials, ["maximize", "minimize"])
    assert [t.number for t in front] == [0, 5]  # 3 infeasible, 1 and 4 beaten by 5
    assert trialsets.dominates(trials[5], trials[1], ["maximize", "minimize"])
    assert not trialsets.dominates(trials[1], trials[4], ["maximize", "minimize"])  # equal: neither
    assert trialsets.infeasible_count(trials) == 1


@pytest.mark.parametrize("directions", [["maximize", "minimize"], ["maximize", "minimize", "minimize"]])
def test_the_pareto_front_is_every_trial_no_other_one_dominates(directions: list[str]) -> None:
    import random

    rng = random.Random(0)  # coarse values: many ties and equal points, which both stay on the front
    trials = [scored(n, [float(rng.randint(0, 6)) for _ in directions]) for n in range(300)]
    brute = [t.number for t in trials if not any(trialsets.dominates(o, t, directions) for o in trials)]
    assert [t.number for t in trialsets.pareto_front(trials, directions)] == brute
    found = optuna.create_study(directions=directions)
    found.add_trials(trials)
    assert brute == sorted(t.number for t in found.best_trials)  # Optuna agrees


def test_the_best_trial_is_the_best_feasible_one() -> None:
    trials = [scored(0, [0.9], {"params": 2.0}), scored(1, [0.8], {"params": -1.0}), scored(2, [0.7])]
    assert trialsets.best_among(trials, "maximize").number == 1
