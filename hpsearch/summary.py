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


def trial_line(trial: optuna.trial.FrozenTrial, metric: str, successor: int | None = None) -> str:
    """One finished trial, readable: how it ended, its metric and epochs; a handed-back one names its successor."""
    reason = records.stop_reason(trial) or trial.state.name.lower()
    epochs = records.epochs_run(trial)
    after = "" if epochs is None else f" after {epochs} epoch{'' if epochs == 1 else 's'}"
    if records.is_handed_back(trial):
        then = f"resumes as trial {successor}" if successor is not None else "not queued again (max_retries reached)"
        return f"trial {trial.number} {reason.replace('_', ' ')}{after}, {then} ({format_params(trial.params)})"
    if trial.state == optuna.trial.TrialState.FAIL:
        error = records.error(trial)
        cause = error.strip().splitlines()[-1] if error and error.strip() else reason
        return f"trial {trial.number} failed: {cause}"
    value = "-" if trial.value is None else f"{trial.value:.4f}"
    return f"trial {trial.number} {reason}: {metric}={value}{after} ({format_params(trial.params)})"


def awaits_successor(trial: optuna.trial.FrozenTrial, max_retries: int) -> bool:
    """A handed-back trial that is (or is about to be) queued again: its line should wait for the successor."""
    return records.is_handed_back(trial) and len(records.retry_history_of(trial.system_attrs)) < max_retries


def trial_logger(cfg: StudyConfig) -> Callable[..., None]:
    """A callback that logs one line per finished trial (and the trial resuming it, when the caller knows)."""

    def on_trial(trial: optuna.trial.FrozenTrial, successor: int | None = None) -> None:
        log.info("%s", trial_line(trial, cfg.metric, successor))

    return on_trial


def progress_line(finished: int, target: int | None, cfg: StudyConfig, flags: str = "") -> str:
    """Finished trials against the last run's target, and how to go on (n_trials counts the study's total)."""
    target = cfg.n_trials if target is None else target
    run = f"hpsearch run {cfg.source}{flags}"
    if finished < target:
        again = run if target == cfg.n_trials else f"{run} --n-trials {target}"
        return f"finished {finished} of {target} trials (the last run's n_trials); `{again}` goes on"
    done = f"finished {finished} of {target} trials" if finished == target else \
        f"finished {finished} trials (the last run asked for {target})"
    return f"{done}; to add {cfg.n_trials} more: {run} --n-trials {finished + cfg.n_trials}"


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


def hosts_line(trials: list[optuna.trial.FrozenTrial]) -> str | None:
    """`workers by host: node1 2 running, 7 finished; ...`: the machines that ran the study (None before any)."""
    running: dict[str, set[str]] = {}
    finished: dict[str, int] = {}
    for trial in trials:
        worker = records.worker(trial)
        if worker is None:
            continue
        host, _, pid = worker.rpartition(":")
        host = host or worker
        running.setdefault(host, set())
        finished.setdefault(host, 0)
        if trial.state == optuna.trial.TrialState.RUNNING:
            running[host].add(pid)
        elif trial.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
            finished[host] += 1
    if not running:
        return None
    parts = [f"{host} {len(running[host])} running, {finished[host]} finished" for host in sorted(running)]
    return "workers by host: " + "; ".join(parts)


def print_summary(study: optuna.Study, cfg: StudyConfig, show_failed: bool = False, flags: str = "") -> None:
    """Trials by state, the finished count against the last run's target, the best trial and how to look further.

    `flags` (such as ` --storage URL`) go into the commands it suggests, so they find the same study.
    """
    console = Console(soft_wrap=True)
    trials = study.get_trials(deepcopy=False)
    counts = records.counts_by_state(trials)
    table = Table(title=f"study '{cfg.name}' ({cfg.metric}, {cfg.resolved_direction})")
    for state in counts:
        table.add_column(state.lower(), justify="right")
    table.add_row(*(str(n) for n in counts.values()))
    console.print(table)
    console.print(progress_line(records.finished(counts), records.target_of(study), cfg, flags))
    hosts = hosts_line(trials)
    if hosts:
        console.print(hosts, markup=False)
    record = best_record(study, cfg)
    if record["number"] is not None:
        print_best(record)
    if show_failed:
        resumed_as = records.successors(trials)
        for trial in trials:
            if trial.state == optuna.trial.TrialState.FAIL:
                console.print(trial_line(trial, cfg.metric, resumed_as.get(trial.number)))
    console.print(f"storage: {redact_url(cfg.storage_url)}")
    console.print(f"dashboard: hpsearch dashboard {cfg.source}{flags}    report: hpsearch report {cfg.source}{flags}")
