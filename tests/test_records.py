"""records: the derived facts of a trial and a study, and the rule that only records spells a stored key."""

from __future__ import annotations

import ast
from pathlib import Path

import optuna
from optuna.trial import TrialState

import study_fixtures as sf
from trial_fixtures import frozen, memory_study
from hpsearch import records
from hpsearch.study import requeue

PACKAGE = Path(__file__).resolve().parents[1] / "hpsearch"


def test_duration_is_start_to_end_and_none_while_running() -> None:
    assert records.duration_s(frozen(seconds=12.5)) == 12.5
    assert records.duration_s(frozen(TrialState.RUNNING, seconds=None)) is None


def test_metric_bounds_by_name() -> None:
    assert records.metric_bounds("val_accuracy") == (0.0, 1.0)
    assert records.metric_bounds("val_loss") == (0.0, None)
    assert records.metric_bounds("val_mse") == records.metric_bounds("val_mae") == (0.0, None)
    assert records.metric_bounds("val_r2") == (None, 1.0)
    assert records.metric_bounds("objective") == (None, None)


def test_epochs_run_from_the_attr_then_the_history_then_the_reported_steps() -> None:
    history = [{"epoch": 1, "val_accuracy": 0.5}, {"epoch": 2, "val_accuracy": 0.6}]
    assert records.epochs_run(frozen(attrs={records.EPOCHS_RUN: 4, records.HISTORY: history})) == 4
    assert records.epochs_run(frozen(attrs={records.EPOCHS_RUN: 3.0})) == 3
    assert records.epochs_run(frozen(attrs={records.HISTORY: history})) == 2
    assert records.epochs_run(frozen(steps={1: 0.4, 2: 0.5, 5: 0.7})) == 5
    assert records.epochs_run(frozen()) is None


def test_stop_reason_is_recorded_or_pruned() -> None:
    assert records.stop_reason(frozen(attrs={records.STOP_REASON: "early_stopped"})) == "early_stopped"
    assert records.stop_reason(frozen(TrialState.PRUNED)) == records.PRUNED
    assert records.stop_reason(frozen(TrialState.FAIL, attrs={records.STOP_REASON: "interrupted"})) == "interrupted"
    assert records.stop_reason(frozen()) is None
    assert records.stop_reason(frozen(TrialState.RUNNING, seconds=None)) is None


def test_history_keeps_only_records_and_numbers_epochs() -> None:
    history = [{"epoch": 1, "val_loss": 1.0}, "junk", {"val_loss": 0.5}]
    got = records.history(frozen(attrs={records.HISTORY: history}))
    assert got == [{"epoch": 1, "val_loss": 1.0}, {"val_loss": 0.5}]
    assert [records.epoch_number(r, i) for i, r in enumerate(got, start=1)] == [1, 2]
    assert records.history(frozen(attrs={records.HISTORY: "not a list"})) == []
    assert records.history(frozen()) == []


def test_trial_attrs_read_back_typed() -> None:
    t = frozen(attrs={records.WORKER: "host:12", records.SLOT: 1, records.DEVICE: "cpu", records.SEED: 7,
                      records.CHECKPOINT: "runs/x/trial_00000.pt", records.BEST_EPOCH: 3, records.TRAIN_TIME: 2,
                      records.VERSION: "0.1.0", records.SETTINGS: "abc", records.ERROR: "Traceback..."})
    assert (records.worker(t), records.slot(t), records.device(t), records.seed(t)) == ("host:12", 1, "cpu", 7)
    assert (records.checkpoint(t), records.best_epoch(t), records.train_time(t)) == ("runs/x/trial_00000.pt", 3, 2.0)
    assert (records.version(t), records.settings_id_of(t), records.error(t)) == ("0.1.0", "abc", "Traceback...")
    empty = frozen()
    assert [f(empty) for f in (records.worker, records.slot, records.device, records.checkpoint, records.best_epoch,
                               records.train_time, records.seed, records.version, records.error)] == [None] * 9
    assert records.slot(frozen(attrs={records.SLOT: True})) is None  # a bool is not a slot number


def test_metric_and_direction_from_the_study_attrs() -> None:
    study = sf.new_study(optuna.storages.InMemoryStorage(), "loss", direction="minimize", metric="val_loss", epochs=9)
    assert (records.metric_of(study), records.direction_of(study)) == ("val_loss", "minimize")
    assert records.epochs_of(study) == 9 and records.output_dir_of(study) == "runs/loss"


def test_metric_falls_back_to_the_stored_config_then_objective() -> None:
    study = memory_study("maximize")
    assert records.metric_of(study) == "objective" and records.direction_of(study) == "maximize"
    assert records.epochs_of(study) is None and records.output_dir_of(study) is None
    study.set_user_attr(records.STUDY_CONFIG, sf.study_config("c", 4, metric="val_loss"))
    assert records.metric_of(study) == "val_loss"


def test_a_requeued_trial_carries_its_retry_history() -> None:
    study = memory_study("maximize", (0.5,))
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








