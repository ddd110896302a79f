"""records: the derived facts of a trial and a study, and the rule that only records spells a stored key."""

from __future__ import annotations

import ast
import datetime as dt
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

import study_fixtures as sf
from hpsearch import records
from hpsearch.study import requeue

PACKAGE = Path(__file__).resolve().parents[1] / "hpsearch"
T0 = dt.datetime(2025, 1, 6, 9, 0, 0)


def _trial(state: TrialState = TrialState.COMPLETE, value: float | None = 0.5, number: int = 0,
           attrs: dict[str, Any] | None = None, steps: dict[int, float] | None = None,
           seconds: float | None = 12.5) -> FrozenTrial:
    return FrozenTrial(
        number=number, state=state, value=value if state == TrialState.COMPLETE else None, values=None,
        datetime_start=T0, datetime_complete=None if seconds is None else T0 + dt.timedelta(seconds=seconds),
        params={}, distributions={}, user_attrs=attrs or {}, system_attrs={}, intermediate_values=steps or {},
        trial_id=number)


def _study(direction: str = "maximize", values: tuple[float, ...] = ()) -> optuna.Study:
    study = optuna.create_study(direction=direction)
    for v in values:
        study.add_trial(optuna.trial.create_trial(
            params={"lr": 0.01}, distributions={"lr": FloatDistribution(1e-4, 1, log=True)}, value=v))
    return study


def test_duration_is_start_to_end_and_none_while_running() -> None:
    assert records.duration_s(_trial(seconds=12.5)) == 12.5
    assert records.duration_s(_trial(TrialState.RUNNING, seconds=None)) is None


def _timed(start_s: float, end_s: float | None, worker: str = "h:1") -> FrozenTrial:
    t = _trial(TrialState.COMPLETE if end_s is not None else TrialState.RUNNING,
               attrs={records.WORKER: worker}, seconds=None if end_s is None else end_s - start_s)
    t.datetime_start = T0 + dt.timedelta(seconds=start_s)
    t.datetime_complete = None if end_s is None else T0 + dt.timedelta(seconds=end_s)
    return t


def test_run_sessions_split_at_an_idle_minute() -> None:
    trials = [_timed(0, 50), _timed(10, 30), _timed(50.5, 100), _timed(159, 170),  # gaps under a minute
              _timed(231, 240), _timed(250, None),  # 61 s with nothing running: a new run
              _timed(400, 420)]
    groups = records.run_sessions(reversed(trials))
    assert [[t.datetime_start for t in g] for g in groups] == [
        [t.datetime_start for t in trials[:4]], [t.datetime_start for t in trials[4:6]], [trials[6].datetime_start]]
    assert records.run_sessions(trials, gap_s=200) == [trials]


def test_trials_that_name_their_run_are_grouped_by_it_whatever_the_gaps() -> None:
    first, second, old = _timed(0, 10), _timed(200, 210), _timed(5, 20)  # run a, resumed late; an unnamed trial
    first.user_attrs[records.RUN] = second.user_attrs[records.RUN] = "h:1:100"
    overlapping = _timed(8, 30)
    overlapping.user_attrs[records.RUN] = "h:2:105"  # another run started beside it: its own session
    groups = records.run_sessions([second, overlapping, old, first])
    assert groups == [[first, second], [old], [overlapping]]


def test_busy_time_is_the_union_of_trial_intervals() -> None:
    trials = [_timed(0, 50), _timed(10, 30), _timed(40, 60), _timed(100, 110), _timed(200, None)]
    assert records.busy_s(trials) == 60 + 10  # overlaps once, gaps not at all, an open trial not yet
    assert records.busy_s([]) == 0.0


def test_metric_bounds_by_name() -> None:
    assert records.metric_bounds("val_accuracy") == (0.0, 1.0)
    assert records.metric_bounds("val_loss") == (0.0, None)
    assert records.metric_bounds("val_mse") == records.metric_bounds("val_mae") == (0.0, None)
    assert records.metric_bounds("val_r2") == (None, 1.0)
    assert records.metric_bounds("objective") == (None, None)


def test_epochs_run_from_the_attr_then_the_history_then_the_reported_steps() -> None:
    history = [{"epoch": 1, "val_accuracy": 0.5}, {"epoch": 2, "val_accuracy": 0.6}]
    assert records.epochs_run(_trial(attrs={records.EPOCHS_RUN: 4, records.HISTORY: history})) == 4
    assert records.epochs_run(_trial(attrs={records.EPOCHS_RUN: 3.0})) == 3
    assert records.epochs_run(_trial(attrs={records.HISTORY: history})) == 2
    assert records.epochs_run(_trial(steps={1: 0.4, 2: 0.5, 5: 0.7})) == 5
    assert records.epochs_run(_trial()) is None


def test_stop_reason_is_recorded_or_pruned() -> None:
    assert records.stop_reason(_trial(attrs={records.STOP_REASON: "early_stopped"})) == "early_stopped"
    assert records.stop_reason(_trial(TrialState.PRUNED)) == records.PRUNED
    assert records.stop_reason(_trial(TrialState.FAIL, attrs={records.STOP_REASON: "interrupted"})) == "interrupted"
    assert records.stop_reason(_trial()) is None
    assert records.stop_reason(_trial(TrialState.RUNNING, seconds=None)) is None


def test_history_keeps_only_records_and_numbers_epochs() -> None:
    history = [{"epoch": 1, "val_loss": 1.0}, "junk", {"val_loss": 0.5}]
    got = records.history(_trial(attrs={records.HISTORY: history}))
    assert got == [{"epoch": 1, "val_loss": 1.0}, {"val_loss": 0.5}]
    assert [records.epoch_number(r, i) for i, r in enumerate(got, start=1)] == [1, 2]
    assert records.history(_trial(attrs={records.HISTORY: "not a list"})) == []
    assert records.history(_trial()) == []


def test_trial_attrs_read_back_typed() -> None:
    t = _trial(attrs={records.WORKER: "host:12", records.SLOT: 1, records.DEVICE: "cpu", records.SEED: 7,
                      records.CHECKPOINT: "runs/x/trial_00000.pt", records.BEST_EPOCH: 3, records.TRAIN_TIME: 2,
                      records.VERSION: "0.1.0", records.SETTINGS: "abc", records.ERROR: "Traceback..."})
    assert (records.worker(t), records.slot(t), records.device(t), records.seed(t)) == ("host:12", 1, "cpu", 7)
    assert (records.checkpoint(t), records.best_epoch(t), records.train_time(t)) == ("runs/x/trial_00000.pt", 3, 2.0)
    assert (records.version(t), records.settings_id_of(t), records.error(t)) == ("0.1.0", "abc", "Traceback...")
    empty = _trial()
    assert [f(empty) for f in (records.worker, records.slot, records.device, records.checkpoint, records.best_epoch,
                               records.train_time, records.seed, records.version, records.error)] == [None] * 9
    assert records.slot(_trial(attrs={records.SLOT: True})) is None  # a bool is not a slot number


@pytest.mark.parametrize("direction, expected", [("maximize", 1), ("minimize", 3)])
def test_best_trial_in_both_directions(direction: str, expected: int) -> None:
    study = _study(direction, (0.5, 0.9, 0.9, 0.1, 0.1))  # ties: the first trial to reach the value wins
    best = records.best_trial(study)
    assert best is not None and best.number == expected
    assert best.number == study.best_trial.number  # what Optuna itself says on this storage


def test_best_trial_ignores_other_states_and_non_finite_values() -> None:
    trials = [_trial(value=math.inf, number=0), _trial(value=0.2, number=1),
              _trial(TrialState.PRUNED, number=2), _trial(TrialState.FAIL, number=3)]
    best = records.best_among(trials, "maximize")
    assert best is not None and best.number == 1
    assert records.best_among(trials[2:], "maximize") is None
    assert records.best_trial(_study()) is None


def test_counts_by_state_include_zero_states() -> None:
    trials = [_trial(), _trial(), _trial(TrialState.PRUNED), _trial(TrialState.RUNNING, seconds=None)]
    counts = records.counts_by_state(trials)
    assert counts == {"RUNNING": 1, "COMPLETE": 2, "PRUNED": 1, "FAIL": 0, "WAITING": 0}
    assert list(counts) == [s.name for s in TrialState]
    assert records.finished(counts) == 3
    assert records.counts_by_state([]) == dict.fromkeys(counts, 0)


def test_metric_and_direction_from_the_study_attrs() -> None:
    study = sf.new_study(optuna.storages.InMemoryStorage(), "loss", direction="minimize", metric="val_loss", epochs=9)
    assert (records.metric_of(study), records.direction_of(study)) == ("val_loss", "minimize")
    assert records.epochs_of(study) == 9 and records.output_dir_of(study) == "runs/loss"


def test_metric_falls_back_to_the_stored_config_then_objective() -> None:
    study = _study("maximize")
    assert records.metric_of(study) == "objective" and records.direction_of(study) == "maximize"
    assert records.epochs_of(study) is None and records.output_dir_of(study) is None
    study.set_user_attr(records.STUDY_CONFIG, sf.study_config("c", 4, metric="val_loss"))
    assert records.metric_of(study) == "val_loss"


def test_a_requeued_trial_carries_its_retry_history() -> None:
    study = _study("maximize", (0.5,))
    requeue(study, study.trials[0], max_retries=3)
    waiting = study.get_trials(states=(TrialState.WAITING,))[0]
    assert records.retry_history_of(waiting.system_attrs) == [0]
    assert waiting.system_attrs[records.FAILED_TRIAL] == 0
    requeue(study, waiting, max_retries=3)
    assert records.retry_history_of(study.trials[-1].system_attrs) == [0, 1]
    assert records.retry_history_of({}) == []
    assert records.settings_key("abc") == "settings:abc"


def test_synthetic_trials_store_only_keys_records_knows() -> None:
    known = {v for k, v in vars(records).items() if k.isupper() and isinstance(v, str)}
    for t in sf.synthetic_trials(12, fail_every=5, running=1, checkpoint_dir="runs/x"):
        assert set(t.user_attrs) <= known
    study = sf.new_study(optuna.storages.InMemoryStorage(), "keys")
    assert set(study.user_attrs) <= known


ATTR_SETTERS = {"set_user_attr": 0, "set_system_attr": 0, "set_trial_user_attr": 1, "set_trial_system_attr": 1,
                "set_study_user_attr": 1, "set_study_system_attr": 1}


def _spelled_keys(tree: ast.AST) -> list[int]:
    """Lines that store or read an attribute under a string literal key."""
    def attrs_value(node: ast.AST) -> bool:  # x.user_attrs, x.system_attrs, storage.get_*_attrs(...)
        if isinstance(node, ast.Call):
            node = node.func
        return isinstance(node, ast.Attribute) and node.attr.endswith("_attrs")

    def literal(node: ast.AST) -> bool:
        return isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str))

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            at = ATTR_SETTERS.get(node.func.attr)
            if at is not None and len(node.args) > at and literal(node.args[at]):
                lines.append(node.lineno)
            if node.func.attr == "get" and attrs_value(node.func.value) and node.args and literal(node.args[0]):
                lines.append(node.lineno)
        elif isinstance(node, ast.Subscript) and attrs_value(node.value) and literal(node.slice):
            lines.append(node.lineno)
        elif isinstance(node, ast.Compare) and any(attrs_value(c) for c in node.comparators) and literal(node.left):
            lines.append(node.lineno)
    return sorted(lines)


def test_no_stored_key_is_spelled_outside_records() -> None:
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name != "records.py":
            lines = _spelled_keys(ast.parse(path.read_text()))
            if lines:
                offenders[str(path.relative_to(PACKAGE))] = lines
    assert offenders == {}, f"stored keys spelled outside records.py (file: lines): {offenders}"


def test_the_key_rule_catches_a_literal_key() -> None:
    code = ('trial.set_user_attr("seed", 1)\nx = t.user_attrs.get("seed")\ny = t.user_attrs["seed"]\n'
            'z = "seed" in t.user_attrs\nstorage.set_trial_user_attr(1, "stop_reason", "x")\n'
            'w = s.get_trial_system_attrs(1).get("retry_history")\nok = t.user_attrs.get(records.SEED)\n')
    assert _spelled_keys(ast.parse(code)) == [1, 2, 3, 4, 5, 6]


STOP_REASONS = {records.COMPLETED, records.PRUNED, records.EARLY_STOPPED, records.DIVERGED, records.ERRORED,
                records.OOM, records.SURPLUS, *records.HANDED_BACK}


def _spelled_reasons(tree: ast.AST) -> list[int]:
    """Lines that pass a stop reason as a string literal to a call, or compare with one."""
    def reason(node: ast.AST) -> bool:
        return isinstance(node, ast.Constant) and node.value in STOP_REASONS

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and any(reason(a) for a in (*node.args, *(k.value for k in node.keywords))):
            lines.append(node.lineno)
        elif isinstance(node, ast.Compare) and any(reason(c) for c in (node.left, *node.comparators)):
            lines.append(node.lineno)
    return sorted(lines)


def test_no_stop_reason_is_spelled_outside_records() -> None:
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name != "records.py":
            lines = _spelled_reasons(ast.parse(path.read_text()))
            if lines:
                offenders[str(path.relative_to(PACKAGE))] = lines
    assert offenders == {}, f"stop reasons spelled outside records.py (file: lines): {offenders}"


def test_the_reason_rule_catches_a_literal_reason() -> None:
    assert len(STOP_REASONS) == 12
    code = ('finish("pruned")\nhand_back(s, t, "worker_died", 3)\nok = reason == "diverged"\n'
            't.set_user_attr(records.STOP_REASON, reason="oom")\nfine = finish(records.PRUNED)\n')
    assert _spelled_reasons(ast.parse(code)) == [1, 2, 3, 4]


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
    assert [len(s) for s in records.run_sessions(trials)] == [1, 1]
    trials.append(trial(270, TrialState.FAIL, {records.STOP_REASON: records.ERRORED}))  # it trained, then failed
    assert [len(s) for s in records.run_sessions(trials)] == [1, 1, 1]


def _scored(number: int, values: list[float], constraints: dict[str, float] | None = None) -> FrozenTrial:
    system = {f"constraints:{k}": v for k, v in (constraints or {}).items()}  # Optuna's own layout
    return FrozenTrial(number=number, state=TrialState.COMPLETE, value=None, values=values, datetime_start=T0,
                       datetime_complete=T0, params={}, distributions={}, user_attrs={}, system_attrs=system,
                       intermediate_values={}, trial_id=number)


def test_the_pareto_front_keeps_the_undominated_feasible_trials() -> None:
    trials = [_scored(0, [0.9, 5000]), _scored(1, [0.8, 600]), _scored(2, [0.7, 700]),  # 2: beaten by 1
              _scored(3, [0.95, 9000], {"params": 1.0}), _scored(4, [0.8, 600]), _scored(5, [0.85, 600])]
    front = records.pareto_front(trials, ["maximize", "minimize"])
    assert [t.number for t in front] == [0, 5]  # 3 infeasible, 1 and 4 beaten by 5
    assert records.dominates(trials[5], trials[1], ["maximize", "minimize"])
    assert not records.dominates(trials[1], trials[4], ["maximize", "minimize"])  # equal: neither
    assert records.infeasible_count(trials) == 1


def test_the_best_trial_is_the_best_feasible_one() -> None:
    trials = [_scored(0, [0.9], {"params": 2.0}), _scored(1, [0.8], {"params": -1.0}), _scored(2, [0.7])]
    assert records.best_among(trials, "maximize").number == 1
