"""What the terminal shows: per-trial log lines and the end-of-run summary (no torch here)."""

from __future__ import annotations

import logging
from typing import Any, Callable

import optuna
from rich.console import Console
from rich.table import Table

from hpsearch.config import StudyConfig
from hpsearch.results import records
from hpsearch.study import redact_url

log = logging.getLogger("hpsearch")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_params(params: dict[str, Any]) -> str:
    """`lr=0.0031 batch_size=64 ...` for log lines."""
    return " ".join(f"{k}={_fmt(v)}" for k, v in params.items())


def trial_logger(cfg: StudyConfig) -> Callable[[optuna.trial.FrozenTrial], None]:
    """A callback that logs one line per finished trial."""

    def on_trial(trial: optuna.trial.FrozenTrial) -> None:
        reason = records.stop_reason(trial) or trial.state.name.lower()
        epochs = records.epochs_run(trial)
        value = "-" if trial.value is None else f"{trial.value:.4f}"
        log.info("trial %d %s: %s=%s after %s epochs (%s)", trial.number, reason, cfg.metric, value,
                 "?" if epochs is None else epochs, format_params(trial.params))

    return on_trial


def best_record(study: optuna.Study, cfg: StudyConfig) -> dict[str, Any]:
    """The best trial as plain data: number, value, params, checkpoint, seed, device, epoch."""
    trial = records.best_trial(study)
    if trial is None:
        return {"study": cfg.name, "metric": cfg.metric, "number": None, "value": None, "params": {},
                "checkpoint": None}
    return {"study": cfg.name, "metric": cfg.metric, "direction": cfg.resolved_direction, "number": trial.number,
            "value": trial.value, "params": trial.params, "checkpoint": records.checkpoint(trial),
            "best_epoch": records.best_epoch(trial), "seed": records.seed(trial), "device": records.device(trial),
            "hpsearch_version": records.version(trial)}


def print_best(record: dict[str, Any]) -> None:
    """The best trial, readable."""
    console = Console(soft_wrap=True)
    if record["number"] is None:
        console.print(f"study '{record['study']}' has no completed trial yet")
        return
    console.print(f"best trial #{record['number']}: {record['metric']} = {record['value']:.4f} "
                  f"(epoch {record.get('best_epoch')})")
    for key, value in record["params"].items():
        console.print(f"  {key}: {_fmt(value)}")
    console.print(f"  checkpoint: {record['checkpoint']}")
    for what, path in record.get("exported", {}).items():
        console.print(f"  exported {what}: {path}")
    if record.get("predict"):
        console.print(f"  {record['predict']}", markup=False)


def print_summary(study: optuna.Study, cfg: StudyConfig, show_failed: bool = False) -> None:
    """Trials by state, the best trial and how to look further."""
    console = Console(soft_wrap=True)
    counts = records.counts_by_state(study.get_trials(deepcopy=False))
    table = Table(title=f"study '{cfg.name}' ({cfg.metric}, {cfg.resolved_direction})")
    for state in counts:
        table.add_column(state.lower(), justify="right")
    table.add_row(*(str(n) for n in counts.values()))
    console.print(table)
    console.print(f"finished {records.finished(counts)} of {cfg.n_trials} trials")
    record = best_record(study, cfg)
    if record["number"] is not None:
        print_best(record)
    if show_failed:
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)):
            error = records.error(trial) or records.stop_reason(trial) or "unknown"
            console.print(f"trial {trial.number} failed: {error.strip().splitlines()[-1]}")
    console.print(f"storage: {redact_url(cfg.storage_url)}")
    console.print(f"dashboard: hpsearch dashboard {cfg.source}    report: hpsearch report {cfg.source}")
