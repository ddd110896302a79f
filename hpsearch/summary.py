"""What the terminal shows: per-trial log lines and the end-of-run summary (no torch here)."""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import shutil
import sys
from pathlib import Path
from collections.abc import Iterable
from typing import Any, Callable

import optuna
from rich.console import Console
from rich.table import Table

from hpsearch import budget, records, trialsets
from hpsearch.config import StudyConfig
from hpsearch.study import (best_trial, redact_url, state_counts, successors, trials_in,
    worker_states)
from hpsearch.study.queries import all_trials

log = logging.getLogger("hpsearch")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_params(params: dict[str, Any]) -> str:
    """`lr=0.0031 batch_size=64 ...` for log lines."""
    return " ".join(f"{k}={_fmt(v)}" for k, v in params.items())


def trial_line(trial: optuna.trial.FrozenTrial, metric: str, successor: int | None = None,
               others: tuple[str, ...] = ()) -> str:
    """One finished trial, readable: how it ended, its metric and epochs; a handed-back one names its successor."""
    reason = records.stop_reason(trial) or trial.state.name.lower()
    epochs = records.epochs_run(trial)
    after = "" if epochs is None else f" after {epochs} epoch{'' if epochs == 1 else 's'}"
    if records.is_handed_back(trial):
        then = f"resumes as trial {successor}" if successor is not None else "not queued again (max_retries reached)"
        return f"trial {trial.number} {reason.replace('_', ' ')}{after}, {then}{_params_note(trial)}"
    if trial.state == optuna.trial.TrialState.FAIL:
        error = records.error(trial)
        cause = error.strip().splitlines()[-1] if error and error.strip() else reason
        return f"trial {trial.number} failed: {cause}"
    if reason == records.INFEASIBLE:  # refused before training: no metric to show, the bound it broke instead
        return f"trial {trial.number} {reason}: {_broken(trial, metric)}, not trained{_params_note(trial)}"
    value = "-" if records.first_value(trial) is None else f"{records.first_value(trial):.4f}"
    rest = "".join(f" {name}={_fmt(v)}" for name, v in zip(others, (trial.values or [])[1:]))  # further objectives
    broken = "" if records.is_feasible(trial) else f", infeasible: {_broken(trial, metric)}"
    return f"trial {trial.number} {reason}: {metric}={value}{rest}{after}{broken}{_params_note(trial)}"


def _broken(trial: optuna.trial.FrozenTrial, metric: str) -> str:
    """`params = 4810 is 1810 past its bound`: each constraint the trial broke, with its value where known."""
    known: dict[str, Any] = {**records.costs(trial)}
    if records.first_value(trial) is not None:
        known[metric] = records.first_value(trial)
    parts = [f"{name}{f' = {_fmt(known[name])}' if name in known else ''} is {_fmt(over)} past its bound"
             for name, over in trial.constraints.items() if over > 0]
    return ", ".join(parts) or "a constraint broken"


def _params_note(trial: optuna.trial.FrozenTrial) -> str:
    """` (lr=0.003 ...)`, or nothing for a trial stopped before its parameters were drawn."""
    return f" ({format_params(trial.params)})" if trial.params else ""


def awaits_successor(trial: optuna.trial.FrozenTrial, max_retries: int) -> bool:
    """A handed-back trial that is (or is about to be) queued again: its line should wait for the successor."""
    return records.is_handed_back(trial) and len(records.retry_history_of(trial.system_attrs)) < max_retries


def trial_logger(cfg: StudyConfig) -> Callable[..., None]:
    """A callback that logs one line per finished trial (and the trial resuming it, when the caller knows)."""

    def on_trial(trial: optuna.trial.FrozenTrial, successor: int | None = None) -> None:
        log.info("%s", trial_line(trial, cfg.metric, successor, tuple(g.metric for g in cfg.goals[1:])))

    return on_trial


def _on_path(name: str, path: str) -> bool:
    """True when `name` typed in a shell runs `path` (compared unresolved: a venv's python links to the system's)."""
    found = shutil.which(name)
    return found is not None and os.path.abspath(found) == os.path.abspath(path)


def shown_path(path: str | Path) -> str:
    """A path as a user would type it here: relative below the current folder, else absolute."""
    relative = os.path.relpath(os.path.abspath(path))
    return relative if not relative.startswith("..") else os.path.abspath(path)


def _typed(path: str) -> str:
    return shlex.quote(shown_path(path))


def invoked_as(argv0: str | None = None, executable: str | None = None) -> str:
    """The hpsearch command as this process was started, so the hints it prints work as printed.

    `hpsearch` when that name runs this script, else the script's path (`.venv/bin/hpsearch`, not
    activated); `python -m hpsearch` (or `.venv/bin/python -m hpsearch`) when started that way.
    """
    argv0 = sys.argv[0] if argv0 is None else argv0
    executable = sys.executable if executable is None else executable
    script = Path(argv0)
    if script.name == "__main__.py" and script.parent.name == "hpsearch":
        python = next((name for name in ("python", "python3") if _on_path(name, executable)), None)
        return f"{python or _typed(executable)} -m hpsearch"
    if script.name == "hpsearch" and not _on_path("hpsearch", argv0):
        return _typed(argv0)
    return "hpsearch"


@dataclasses.dataclass(frozen=True)
class Hints:
    """How the commands a summary suggests are spelled, so that each one, typed as printed, finds this study.

    `storage` is ` --storage URL` when the study is not in the file's storage; `file_n_trials` and
    `file_out_dir` are what the study file itself says: a target or a folder that differs needs its flag.
    """

    prog: str = "hpsearch"
    storage: str = ""
    file_n_trials: int | None = None
    file_out_dir: str | None = None
    out_dir: str | None = None  # the study's own folder (see study_output_dir)

    def output_flag(self) -> str:
        """` --output-dir DIR` when the study's folder is not the one the file names (a run needs it)."""
        if self.out_dir is None or self.file_out_dir is None:
            return ""
        if os.path.abspath(self.out_dir) == os.path.abspath(self.file_out_dir):
            return ""
        return f" --output-dir {_typed(self.out_dir)}"

    def run(self, source: str) -> str:
        return f"{self.prog} run {shlex.quote(source)}{self.storage}{self.output_flag()}"

    def verb(self, verb: str, source: str) -> str:
        """A reading verb: the storage finds the study, which names its own output folder."""
        return f"{self.prog} {verb} {shlex.quote(source)}{self.storage}"


def study_output_dir(study: optuna.Study, cfg: StudyConfig) -> str:
    """The study's own output folder: the one it recorded when created (where it exists here), else cfg's."""
    recorded = records.output_dir_of(study)
    return recorded if recorded and Path(recorded).is_dir() else cfg.out_dir


def progress_line(finished: int, target: int | None, cfg: StudyConfig, hints: Hints | None = None) -> str:
    """Finished trials against the last run's target, and how to go on (n_trials counts the study's total)."""
    hints = hints or Hints()
    target = cfg.n_trials if target is None else target
    batch = cfg.n_trials if hints.file_n_trials is None else hints.file_n_trials  # what a plain rerun asks for
    run = hints.run(cfg.source)
    if finished < target:
        again = run if target == batch else f"{run} --n-trials {target}"
        return f"finished {finished} of {target} trials (the last run's n_trials); `{again}` goes on"
    done = f"finished {finished} of {target} trials" if finished == target else \
        f"finished {finished} trials (the last run asked for {target})"
    return f"{done}; to add {batch} more: {run} --n-trials {finished + batch}"


def epochs_line(totals: budget.Totals, epochs: int | None, budget_epochs: int | None) -> str:
    """Epochs spent study-wide (as the budget counts them, against it when set) and those pruning and early
    stopping saved, of `epochs` per trial."""
    line = f"epochs spent {totals.spent}" + (f" of budget {budget_epochs}" if budget_epochs is not None else "")
    if epochs is None:
        return f"{line}; epochs saved unknown (the study records no epochs per trial)"
    detail = ", ".join(f"{n} by {reason.replace('_', ' ')}" for reason, n in totals.saved.items())
    return f"{line}; saved by pruning and early stopping: {sum(totals.saved.values())}" + (f" ({detail})" if detail else "")


def best_record(study: optuna.Study, cfg: StudyConfig) -> dict[str, Any]:
    """The best trial as plain data: number, value, params, checkpoint, seed, device, epoch."""
    goals, constraints = records.goals_of(study), records.constraints_of(study)
    # A plain study (one metric, no constraints) needs one query, not every trial; the others read all once.
    trials = all_trials(study) if constraints or len(goals) > 1 else []
    extra = _tradeoff_record(study, trials)
    if len(goals) > 1:  # the Pareto set's best in the first objective, as `best --export` writes it
        trial = trialsets.best_among(extra["pareto_trials"], goals[0][1])
    elif constraints:
        trial = trialsets.best_among(trials, goals[0][1])
    else:
        trial = best_trial(study)
    extra.pop("pareto_trials", None)
    if trial is None:
        return {"study": cfg.name, "metric": cfg.metric, "number": None, "value": None, "params": {},
                "checkpoint": None, **extra}
    return {"study": cfg.name, "metric": cfg.metric, "direction": cfg.resolved_direction, "number": trial.number,
            "value": records.first_value(trial), "params": trial.params, "checkpoint": records.checkpoint(trial),
            "best_epoch": records.best_epoch(trial), "seed": records.seed(trial), "device": records.device(trial),
            "hpsearch_version": records.version(trial), "costs": records.costs(trial),
            "peak_memory_kind": records.memory_kind(trial), **extra}


def print_best(record: dict[str, Any]) -> None:
    """The best trial, readable."""
    console = Console(soft_wrap=True)
    if record.get("infeasible"):
        console.print(_infeasible_line(record), markup=False)
    if record["number"] is None:
        console.print(f"study '{record['study']}' has no completed{' feasible' if record.get('constraints') else ''} "
                      f"trial yet")
        return
    if record.get("pareto") is not None:
        print_pareto(record, console)
    else:
        console.print(f"best trial #{record['number']}: {record['metric']} = {record['value']:.4f} "
                      f"(epoch {record.get('best_epoch')})")
        for key, value in record["params"].items():
            console.print(f"  {key}: {_fmt(value)}")
        if record.get("costs"):
            console.print(f"  costs: {costs_text(record['costs'], record.get('peak_memory_kind'))}", markup=False)
        console.print(f"  checkpoint: {record['checkpoint']}")
    if record.get("exported") and (record.get("pareto") is not None or record.get("exported_trial") != record["number"]):
        console.print(f"trial {record.get('exported_trial')} exported:")  # one of several, or not the best: say which
    for what, path in record.get("exported", {}).items():
        console.print(f"  exported {what}: {path}")
    if record.get("predict"):
        console.print(f"  {record['predict']}", markup=False)


def hosts_line(worker_states: Iterable[tuple[str, optuna.trial.TrialState, int]]) -> str | None:
    """`workers by host: node1 2 running, 7 finished; node2 7 finished`: the machines that ran the study, with
    the workers running there now (a host with none running shows what it finished); None before any."""
    running: dict[str, set[str]] = {}
    finished: dict[str, int] = {}
    for worker, state, n in worker_states:
        host, _, pid = worker.rpartition(":")
        host = host or worker
        running.setdefault(host, set())
        finished[host] = finished.get(host, 0)
        if state == optuna.trial.TrialState.RUNNING:
            running[host].add(pid)
        elif state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
            finished[host] += n
    if not running:
        return None
    parts = [f"{host} {len(running[host])} running, {finished[host]} finished" if running[host]
             else f"{host} {finished[host]} finished" for host in sorted(running)]
    return "workers by host: " + "; ".join(parts)


def print_summary(study: optuna.Study, cfg: StudyConfig, show_failed: bool = False,
                  hints: Hints | None = None) -> None:
    """Trials by state, the finished count against the last run's target, epochs spent and saved, the best trial and
    how to look further.

    `hints` spell the commands it suggests (program, --storage, --n-trials, --output-dir) so they find the same study.
    """
    hints = dataclasses.replace(hints or Hints(), out_dir=study_output_dir(study, cfg))
    console = Console(soft_wrap=True)
    # Counts and sums in SQL, the best trial alone: reading every trial took 19.5 s at 20,000 trials.
    counts = trialsets.counts_by_state_of(state_counts(study))
    goals = records.goals_of(study)  # the study's own objectives (the file's, or opening it was refused)
    shown = ", ".join(f"{metric} {direction}" for metric, direction in goals) if len(goals) > 1 \
        else f"{cfg.metric}, {cfg.resolved_direction}"
    table = Table(title=f"study '{cfg.name}' ({shown})")
    for state in counts:
        table.add_column(state.lower(), justify="right")
    table.add_row(*(str(n) for n in counts.values()))
    console.print(table)
    console.print(progress_line(trialsets.finished(counts), records.target_of(study), cfg, hints), markup=False)
    epochs = records.epochs_of(study)
    console.print(epochs_line(budget.totals_of(study, epochs), epochs, records.budget_of(study)), markup=False)
    hosts = hosts_line(worker_states(study))
    if hosts:
        console.print(hosts, markup=False)
    record = best_record(study, cfg)
    if record["number"] is not None:
        print_best(record)
    if show_failed:
        resumed_as = successors(study)
        failed = trials_in(study, (optuna.trial.TrialState.FAIL,))
        for trial in failed:
            console.print(trial_line(trial, cfg.metric, resumed_as.get(trial.number)), markup=False)
        if not failed:
            console.print("no trial failed")
    console.print(f"storage: {redact_url(cfg.storage_url)}", markup=False)
    console.print(f"dashboard: {hints.verb('dashboard', cfg.source)}    report: {hints.verb('report', cfg.source)}",
                  markup=False)


# --------------------------------------------------------------------------- constraints and several objectives


def _tradeoff_record(study: optuna.Study, trials: list[optuna.trial.FrozenTrial]) -> dict[str, Any]:
    """What `best` adds for constraints (how many of ``trials`` broke them) and several objectives (the Pareto set;
    its trials under ``pareto_trials`` too)."""
    goals, constraints = records.goals_of(study), records.constraints_of(study)
    extra: dict[str, Any] = {"objectives": [{"metric": m, "direction": d} for m, d in goals],
                             "constraints": constraints, "infeasible": trialsets.infeasible_count(trials)}
    if len(goals) > 1:
        front = trialsets.pareto_front(trials, [d for _, d in goals])
        extra["pareto"] = [pareto_entry(t, [m for m, _ in goals]) for t in front]
        extra["pareto_trials"] = front
    return extra


def pareto_entry(trial: optuna.trial.FrozenTrial, metrics: list[str]) -> dict[str, Any]:
    """One trial of the Pareto set as plain data: number, a value per objective, params, costs, checkpoint."""
    return {"number": trial.number, "values": dict(zip(metrics, trial.values)), "params": trial.params,
            "costs": records.costs(trial), "peak_memory_kind": records.memory_kind(trial),
            "checkpoint": records.checkpoint(trial)}


def costs_text(costs: dict[str, float], memory_kind: str | None = None) -> str:
    """`params 2410, latency_ms 0.05, peak_memory_mb 3.1 (RSS delta), train_time 1.2`."""
    kinds = {"rss_delta": "process RSS delta", "cuda_peak_allocated": "CUDA peak allocated"}
    parts = []
    for name, value in costs.items():
        note = f" ({kinds.get(memory_kind, memory_kind)})" if name == "peak_memory_mb" and memory_kind else ""
        parts.append(f"{name} {_fmt(value)}{note}")
    return ", ".join(parts)


def _infeasible_line(record: dict[str, Any]) -> str:
    bounds = ", ".join(bound_text(name, b) for name, b in record.get("constraints", {}).items())
    return (f"{record['infeasible']} finished trial(s) broke a constraint ({bounds}) and are left out of the best"
            f"{' and the Pareto set' if record.get('pareto') is not None else ''}")


def bound_text(name: str, bound: dict[str, Any]) -> str:
    """`params <= 3000`, `val_accuracy >= 0.9` or `1 <= latency_ms <= 2`."""
    low, high = bound.get("min"), bound.get("max")
    if low is not None and high is not None:
        return f"{_fmt(low)} <= {name} <= {_fmt(high)}"
    return f"{name} >= {_fmt(low)}" if low is not None else f"{name} <= {_fmt(high)}"


def print_pareto(record: dict[str, Any], console: Console) -> None:
    """The Pareto set: one row per trial (number, each objective, params)."""
    goals = ", ".join(f"{g['metric']} ({g['direction']})" for g in record["objectives"])
    console.print(f"Pareto set of {len(record['pareto'])} trial(s) over {goals}; `best --export DIR --trial N` "
                  f"exports one", markup=False)
    table = Table()
    metrics = [g["metric"] for g in record["objectives"]]
    # what the models cost besides the objectives (a cost that is an objective has its column already)
    costs = [{k: v for k, v in entry["costs"].items() if k not in metrics} for entry in record["pareto"]]
    for column in ("trial", *metrics, "hyperparameters", *(["costs"] if any(costs) else [])):
        table.add_column(column, justify="right" if column in ("trial", *metrics) else "left")
    for entry, cost in zip(record["pareto"], costs):
        table.add_row(str(entry["number"]), *(_fmt(v) for v in entry["values"].values()),
                      format_params(entry["params"]),
                      *([costs_text(cost, entry.get("peak_memory_kind"))] if any(costs) else []))
    console.print(table)
