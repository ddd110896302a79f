"""What a trial and a study store, and what one trial or one study tells: the one place a stored key is spelled.

Facts over many trials (counts, sessions, the best trial, Pareto fronts) are derived in :mod:`hpsearch.trialsets`.

Writers (objective, worker, supervisor, study) store through the names below; readers (collect, export,
summary, monitor) read through the functions below, never by a string key. Per-epoch data is read by
:func:`history` only, so a change to how epochs are stored stays in this file.

Imports only optuna: the writers on the torch side and the fast-starting readers both use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

# ------------------------------------------------------------------ trial user attributes
# Per-epoch data is stored three ways: `history` (every record, every field; what our readers use, through
# :func:`history`), the trial's intermediate values (the metric per epoch; optuna-dashboard's learning curve) and,
# when the trial ends, the artifact HISTORY_ARTIFACT (the same records as JSON). optuna-dashboard shows a user
# attr cut at 1,024 characters, about six epochs of `history`; its artifact list shows and downloads the whole.
HISTORY = "history"  # per epoch: [{epoch, train_loss, train_accuracy, val_loss, val_accuracy, lr, epoch_time}]
HISTORY_ARTIFACT = "history.json"  # file name of the trial's history artifact (the best checkpoint keeps its own)
SEED = "seed"
DEVICE = "device"
WORKER = "worker"  # "host:pid" of the worker process
SLOT = "slot"
VERSION = "hpsearch_version"
SETTINGS = "settings"  # id of the run settings the trial trains with (study.settings_id)
RUN = "run"  # id of the `hpsearch run` (or lone `hpsearch worker`) whose worker started the trial
CHECKPOINT = "checkpoint"  # path of the best-weights file
BEST_EPOCH = "best_epoch"
SPLIT_VALUES = "split_values"  # k-fold / bootstrap: each split's metric at the best epoch (the value is their mean)
EPOCHS_RUN = "epochs_run"
TRAIN_TIME = "train_time"  # seconds
STOP_REASON = "stop_reason"
ERROR = "error"  # traceback of a failed trial
RESUMED_FROM = "resumed_from"  # {trial, epoch}
BUDGET_CLAIM = "budget_claim"  # epochs a running trial has reserved of the study's epoch budget (its own, not resumed)
RESUME_SKIPPED = "resume_skipped"  # {trial, reason}
OOM_RETRY = "oom_retry"  # {batch_size, accum_steps}
CUDA_GRAPHS = "cuda_graphs"  # "on" or "off (reason)"
INPUTS = "inputs"  # what predict needs: {mean, std, input_shape, dtype, num_classes, class_names, min, max}
PRETRAINED = "pretrained"  # {source, loaded: n tensors, skipped: [model tensors left at their init], unused: n}
COSTS = "costs"  # what the model costs (hpsearch.costs): {params, latency_ms, peak_memory_mb}
BASELINE = "baseline"  # true on the trial whose parameters are the study file's baseline point (hpsearch.baseline)
MEMORY_KIND = "peak_memory_kind"  # how peak_memory_mb was measured: "cuda_peak_allocated" or "rss_delta" (CPU)

# ------------------------------------------------------------------ inside one history record
EPOCH = "epoch"  # 1-based
EPOCH_FIELDS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_time")

# ------------------------------------------------------------------ study user attributes
STUDY_METRIC = "metric"
STUDY_EPOCHS = "epochs"  # the epoch budget of a trial
STUDY_OUTPUT_DIR = "output_dir"
STUDY_VERSION = "hpsearch_version"
STUDY_CONFIG = "config"  # the resolved study file, storage URL redacted
STUDY_TARGET = "n_trials"  # the study-wide count of finished trials the last `hpsearch run` aimed for
STUDY_BUDGET = "budget_epochs"  # the study-wide epoch budget the last `hpsearch run` set (None: none)
STUDY_OBJECTIVES = "objectives"  # [{metric, direction}], one per value the trials report
STUDY_WARM_START = "warm_started_from"  # "<storage>#<study>" of each study whose trials were added, in order

# ------------------------------------------------------------------ system attributes
OPTUNA_FIXED_PARAMS = "fixed_params"  # Optuna's own: the parameters an enqueued trial was queued with
RETRY_HISTORY = "retry_history"  # trial: numbers of the failed trials it retries, oldest first
FAILED_TRIAL = "failed_trial"  # trial: the first of them (Optuna's RetryFailedTrialCallback reads it)
SETTINGS_PREFIX = "settings:"  # study: the run settings of each settings id, under "settings:<id>"

# ------------------------------------------------------------------ stop reasons (the values of STOP_REASON)
COMPLETED = "completed"  # every epoch ran
PRUNED = "pruned"
EARLY_STOPPED = "early_stopped"
DIVERGED = "diverged"  # a loss or the metric went non-finite
ERRORED = "error"  # the objective raised (the traceback is under ERROR)
OOM = "oom"  # the objective ran out of GPU memory
SURPLUS = "surplus"  # another worker took the last place between count and ask
INTERRUPTED = "interrupted"  # a stop signal
STORAGE_FAILED = "storage_failed"
CHECKPOINT_FAILED = "checkpoint_failed"
WORKER_LOST = "worker_lost"  # its heartbeat went stale
WORKER_DIED = "worker_died"  # the supervisor saw its worker process exit
BUDGET = "budget"  # the study-wide epoch budget ran out (refused before its first epoch: FAIL)
INFEASIBLE = "infeasible"  # a constraint known before training (params) refused the trial: PRUNED, no epoch run
# The trial was cut short through no fault of its own and queued again (unless out of retries) to resume.
HANDED_BACK = (INTERRUPTED, STORAGE_FAILED, CHECKPOINT_FAILED, WORKER_LOST, WORKER_DIED)
EARLY_STOP_REASONS = (PRUNED, EARLY_STOPPED)  # the search stopped the trial: its unrun epochs are "saved"


# ------------------------------------------------------------------ writer helpers

def retry_attrs(history: list[int]) -> dict[str, Any]:
    """System attrs of a trial queued again: the trials it retries (``history``, oldest first)."""
    return {FAILED_TRIAL: history[0], RETRY_HISTORY: history}


def retry_history_of(system_attrs: Mapping[str, Any]) -> list[int]:
    """The numbers of the failed trials a trial retries, from its system attrs ([] for a fresh trial)."""
    return list(system_attrs.get(RETRY_HISTORY) or [])


def settings_key(settings_id: str) -> str:
    """The study system attr that holds the run settings with this id."""
    return f"{SETTINGS_PREFIX}{settings_id}"


# ------------------------------------------------------------------ plain values

def as_int(value: Any) -> int | None:
    """``value`` as an int when it is one (an integral float counts; a bool does not), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def as_float(value: Any) -> float | None:
    """``value`` as a float when it is a number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _as_str(value: Any) -> str | None:
    return None if value is None else str(value)


# ------------------------------------------------------------------ one trial

def history(trial: FrozenTrial) -> list[dict[str, Any]]:
    """The trial's per-epoch records, oldest first ([] when it has none): the only reader of per-epoch data."""
    stored = trial.user_attrs.get(HISTORY)
    if not isinstance(stored, list):
        return []
    return [record for record in stored if isinstance(record, dict)]


def epoch_times(trial: FrozenTrial) -> list[float]:
    """Seconds each recorded epoch of the trial took (epochs without a time left out)."""
    times = (as_float(record.get("epoch_time")) for record in history(trial))
    return [t for t in times if t is not None and t > 0]


def epoch_number(record: Mapping[str, Any], position: int) -> int:
    """The epoch of one history record; ``position`` (1-based) when the record does not say."""
    return as_int(record.get(EPOCH)) or position


def duration_s(trial: FrozenTrial) -> float | None:
    """Seconds from start to end; None while the trial runs or when a time is missing."""
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def epochs_run(trial: FrozenTrial) -> int | None:
    """Epochs trained: the recorded count, else the history's length, else the last reported step."""
    recorded = as_int(trial.user_attrs.get(EPOCHS_RUN))
    if recorded is not None:
        return recorded
    records = history(trial)
    if records:
        return len(records)
    if trial.intermediate_values:
        return max(trial.intermediate_values)
    return None


def stop_reason(trial: FrozenTrial) -> str | None:
    """Why the trial stopped (``completed``, ``pruned``, ``early_stopped``, ``interrupted``...); a pruned trial
    that did not say is ``pruned``; None while it runs."""
    reason = trial.user_attrs.get(STOP_REASON)
    if isinstance(reason, str):
        return reason
    if trial.state == TrialState.PRUNED:
        return PRUNED
    return None


def error(trial: FrozenTrial) -> str | None:
    """The traceback of a trial that failed in user code."""
    text = trial.user_attrs.get(ERROR)
    return text if isinstance(text, str) else None


def worker(trial: FrozenTrial) -> str | None:
    """``host:pid`` of the worker that ran the trial."""
    return _as_str(trial.user_attrs.get(WORKER))


def slot(trial: FrozenTrial) -> int | None:
    """The worker slot that ran the trial."""
    return as_int(trial.user_attrs.get(SLOT))


def device(trial: FrozenTrial) -> str | None:
    """The device the trial trained on, as the worker described it."""
    return _as_str(trial.user_attrs.get(DEVICE))


def checkpoint(trial: FrozenTrial) -> str | None:
    """Path of the trial's best-weights checkpoint, when one was written."""
    return _as_str(trial.user_attrs.get(CHECKPOINT))


def inputs(trial: FrozenTrial) -> dict[str, Any] | None:
    """The trial's input record (normalisation, shape, classes), when it has one (older trials do not)."""
    stored = trial.user_attrs.get(INPUTS)
    return stored if isinstance(stored, dict) else None


def best_epoch(trial: FrozenTrial) -> int | None:
    """The epoch whose metric is the trial's value."""
    return as_int(trial.user_attrs.get(BEST_EPOCH))


def train_time(trial: FrozenTrial) -> float | None:
    """Seconds spent in the epoch loop."""
    return as_float(trial.user_attrs.get(TRAIN_TIME))


def seed(trial: FrozenTrial) -> int | None:
    """The trial's own seed (derived from the study seed and its number)."""
    return as_int(trial.user_attrs.get(SEED))


def version(trial: FrozenTrial) -> str | None:
    """The hpsearch version that ran the trial."""
    return _as_str(trial.user_attrs.get(VERSION))


def settings_id_of(trial: FrozenTrial) -> str | None:
    """The id of the run settings the trial trains with."""
    return _as_str(trial.user_attrs.get(SETTINGS))


def is_handed_back(trial: FrozenTrial) -> bool:
    """A failed trial cut short by a stop signal, a lost worker or a failing storage: not its own fault."""
    return trial.state == TrialState.FAIL and stop_reason(trial) in HANDED_BACK


def first_value(trial: FrozenTrial) -> float | None:
    """The trial's value, or its first objective's with several (Optuna's ``value`` raises then); None if none."""
    return trial.values[0] if trial.values else None


def run_of(trial: FrozenTrial) -> str | None:
    """The id of the run whose worker started the trial (None for trials of older versions)."""
    return _as_str(trial.user_attrs.get(RUN))


def metric_bounds(metric: str) -> tuple[float | None, float | None]:
    """The values ``metric`` can take, by its name: an accuracy lies in [0, 1], a loss or an error (mse, mae) is
    >= 0, a coefficient of determination (r2) is <= 1."""
    if metric.endswith("accuracy"):
        return 0.0, 1.0
    if metric.endswith(("loss", "_mse", "_mae")):
        return 0.0, None
    if metric.endswith("_r2"):
        return None, 1.0
    return None, None


# ------------------------------------------------------------------ the study


def direction_of(study: optuna.Study) -> str:
    """``maximize`` or ``minimize`` (the first objective's, should a study have several)."""
    return "maximize" if study.directions[0] == StudyDirection.MAXIMIZE else "minimize"


def metric_of(study: optuna.Study) -> str:
    """The optimised metric: the study's ``metric`` attr, else its stored config's, else ``objective``."""
    attrs = study.user_attrs
    metric = attrs.get(STUDY_METRIC)
    if not metric:
        config = attrs.get(STUDY_CONFIG)
        metric = config.get("metric") if isinstance(config, dict) else None
    return str(metric or "objective")


def epochs_of(study: optuna.Study) -> int | None:
    """The epoch budget of one trial, when the study recorded it."""
    return as_int(study.user_attrs.get(STUDY_EPOCHS))


def budget_of(study: optuna.Study) -> int | None:
    """The study-wide epoch budget the last run set (None: none, or no run recorded one)."""
    return as_int(study.user_attrs.get(STUDY_BUDGET))


def output_dir_of(study: optuna.Study) -> str | None:
    """The folder checkpoints and logs go under, when the study recorded it."""
    return _as_str(study.user_attrs.get(STUDY_OUTPUT_DIR))


def target_of(study: optuna.Study) -> int | None:
    """The study-wide count of finished trials the last run aimed for, when a run recorded it."""
    return as_int(study.user_attrs.get(STUDY_TARGET))


# ------------------------------------------------------------------ costs, constraints, several objectives

def costs(trial: FrozenTrial) -> dict[str, float]:
    """What the trial's model cost, by name (``names.COSTS``): those measured, with the training time."""
    stored = trial.user_attrs.get(COSTS)
    found = {k: v for k, v in (stored.items() if isinstance(stored, dict) else ()) if as_float(v) is not None}
    if train_time(trial) is not None:
        found["train_time"] = train_time(trial)
    return found


def memory_kind(trial: FrozenTrial) -> str | None:
    """How the trial's peak_memory_mb was measured (the device allocator's peak, or the CPU's RSS delta)."""
    return _as_str(trial.user_attrs.get(MEMORY_KIND))


def is_feasible(trial: FrozenTrial) -> bool:
    """No constraint violated: every constraint value Optuna holds for the trial is <= 0."""
    return stop_reason(trial) != INFEASIBLE and all(v <= 0 for v in trial.constraints.values())


def goals_of(study: optuna.Study) -> list[tuple[str, str]]:
    """(metric, direction) of each objective: the study's ``objectives`` attr, else its one metric."""
    stored = study.user_attrs.get(STUDY_OBJECTIVES)
    directions = ["maximize" if d == StudyDirection.MAXIMIZE else "minimize" for d in study.directions]
    if isinstance(stored, list) and len(stored) == len(directions):
        return [(str(g.get("metric")), d) for g, d in zip(stored, directions) if isinstance(g, dict)]
    if len(directions) == 1:
        return [(metric_of(study), directions[0])]
    names = study.metric_names or [f"objective {i}" for i in range(len(directions))]
    return list(zip(names, directions))


def constraints_of(study: optuna.Study) -> dict[str, dict[str, float | None]]:
    """The bounds the study's trials are held to ({name: {min, max}}), from its stored config."""
    config = study.user_attrs.get(STUDY_CONFIG)
    found = config.get("constraints") if isinstance(config, dict) else None
    return found if isinstance(found, dict) else {}
