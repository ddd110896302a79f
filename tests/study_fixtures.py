"""Synthetic hpsearch studies in real Optuna storage, shaped exactly like `hpsearch run` writes them.

Used by the report/export/dashboard tests and by ``bench/report_scale.py``. Nothing here imports
torch: trials are made with ``optuna.trial.create_trial`` and carry the same params, intermediate
values, study user attrs and trial user attrs (history, seed, device, worker, slot, checkpoint,
best_epoch, epochs_run, stop_reason, train_time) that the objective stores.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

METRIC = "val_accuracy"
BATCH_SIZES = [64, 128, 256, 512]
OPTIMIZERS = ["sgd", "adamw"]
T0 = dt.datetime(2025, 1, 6, 9, 0, 0)

DISTRIBUTIONS: dict[str, Any] = {
    "lr": FloatDistribution(1e-4, 0.3, log=True),
    "batch_size": CategoricalDistribution(BATCH_SIZES),
    "dropout": FloatDistribution(0.0, 0.5),
    "weight_decay": FloatDistribution(1e-6, 1e-2, log=True),
    "optimizer": CategoricalDistribution(OPTIMIZERS),
    "momentum": FloatDistribution(0.8, 0.99),
}


def study_config(name: str, epochs: int, direction: str = "maximize", metric: str = METRIC) -> dict[str, Any]:
    """A resolved study config as ``study.user_attrs["config"]`` holds it (JSON-able)."""
    return {
        "name": name,
        "direction": direction,
        "metric": metric,
        "n_trials": 0,
        "model": {"name": "mlp"},
        "data": {"dataset": "digits"},
        "train": {"epochs": epochs},
        "space": {
            "lr": {"type": "float", "low": 1e-4, "high": 0.3, "log": True},
            "batch_size": {"type": "categorical", "choices": BATCH_SIZES},
            "dropout": {"type": "float", "low": 0.0, "high": 0.5},
            "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
            "optimizer": {"type": "categorical", "choices": OPTIMIZERS},
            "momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"optimizer": "sgd"}},
        },
    }


def new_study(
    storage: str | optuna.storages.BaseStorage,
    name: str,
    *,
    epochs: int = 6,
    direction: str = "maximize",
    output_dir: str | None = None,
    metric: str = METRIC,
) -> optuna.Study:
    """An empty study with the study user attrs hpsearch sets."""
    study = optuna.create_study(storage=storage, study_name=name, direction=direction)
    study.set_user_attr("metric", metric)
    study.set_user_attr("epochs", epochs)
    study.set_user_attr("output_dir", output_dir or f"runs/{name}")
    study.set_user_attr("hpsearch_version", "0.1.0")
    study.set_user_attr("config", study_config(name, epochs, direction, metric))
    return study


def sample_params(rng: random.Random) -> dict[str, Any]:
    """Params as space.py suggests them; ``momentum`` only when the optimizer is sgd."""
    params: dict[str, Any] = {
        "lr": 10 ** rng.uniform(-4, math.log10(0.3)),
        "batch_size": rng.choice(BATCH_SIZES),
        "dropout": rng.uniform(0.0, 0.5),
        "weight_decay": 10 ** rng.uniform(-6, -2),
        "optimizer": rng.choice(OPTIMIZERS),
    }
    if params["optimizer"] == "sgd":
        params["momentum"] = rng.uniform(0.8, 0.99)
    return params


def _quality(params: dict[str, Any]) -> float:
    """Final accuracy a trial would reach: best near lr=0.01, batch 128, low dropout."""
    lr_term = (math.log10(params["lr"]) + 2.0) ** 2 * 0.08
    bs_term = abs(math.log2(params["batch_size"]) - 7) * 0.02
    return max(0.15, 0.97 - lr_term - bs_term - 0.1 * params["dropout"])


def synthetic_trials(
    n: int,
    *,
    epochs: int = 6,
    seed: int = 0,
    n_slots: int = 2,
    t0: dt.datetime = T0,
    prune_every: int = 4,
    early_stop_every: int = 5,
    fail_every: int = 0,
    running: int = 0,
    checkpoint_dir: str | None = None,
    metric: str = METRIC,
) -> Iterator[FrozenTrial]:
    """Yield ``n`` finished trials (plus ``running`` RUNNING ones) like the objective records them.

    Trials are scheduled on ``n_slots`` workers back to back, so datetimes, worker and slot agree.
    Every ``prune_every``-th trial is PRUNED, every ``early_stop_every``-th COMPLETE trial stops
    early, every ``fail_every``-th trial FAILs (0: never). ``metric`` (a history key) is the
    reported value; one ending in ``loss`` is lower-is-better when picking the best epoch.
    """
    rng = random.Random(seed)
    slot_free = [t0 + dt.timedelta(seconds=0.5 * s) for s in range(n_slots)]
    for i in range(n + running):
        slot = min(range(n_slots), key=lambda s: slot_free[s])
        start = slot_free[slot]
        params = sample_params(rng)
        quality = _quality(params)
        if i >= n:
            state, stop_reason, epochs_run = TrialState.RUNNING, None, rng.randint(1, epochs - 1)
        elif fail_every and i % fail_every == fail_every - 1:
            state, stop_reason, epochs_run = TrialState.FAIL, "error", rng.randint(1, epochs)
        elif prune_every and i % prune_every == prune_every - 1:
            state, stop_reason, epochs_run = TrialState.PRUNED, "pruned", rng.randint(1, epochs - 1)
        elif early_stop_every and i % early_stop_every == early_stop_every - 1:
            state, stop_reason, epochs_run = (
                TrialState.COMPLETE, "early_stopped", rng.randint(2, epochs - 1))
        else:
            state, stop_reason, epochs_run = TrialState.COMPLETE, "completed", epochs
        if state == TrialState.PRUNED:
            quality *= 0.7
        history = []
        for epoch in range(1, epochs_run + 1):
            frac = 1.0 - math.exp(-1.2 * epoch)
            acc = min(0.999, 0.1 + (quality - 0.1) * frac + rng.gauss(0, 0.004))
            epoch_time = 0.4 + params["batch_size"] / 1024 + rng.random() * 0.1
            history.append({
                "epoch": epoch,
                "train_loss": 2.3 * (1 - frac) + 0.05 + rng.random() * 0.01,
                "train_accuracy": min(1.0, acc + 0.02),
                "val_loss": 2.3 * (1 - frac) + 0.1 + rng.random() * 0.02,
                "val_accuracy": acc,
                "lr": params["lr"] * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / epochs)),
                "epoch_time": epoch_time,
            })
        intermediate = {h["epoch"]: h[metric] for h in history}
        best = (min if metric.endswith("loss") else max)(history, key=lambda h: h[metric])
        train_time = sum(h["epoch_time"] for h in history)
        user_attrs: dict[str, Any] = {
            "history": history,
            "seed": 1000 + i,
            "device": "cpu",
            "worker": f"node{slot % 2}:{4200 + slot}",
            "slot": slot,
            "hpsearch_version": "0.1.0",
            "best_epoch": best["epoch"],
            "epochs_run": epochs_run,
            "train_time": train_time,
        }
        if stop_reason is not None:
            user_attrs["stop_reason"] = stop_reason
        if checkpoint_dir is not None and state == TrialState.COMPLETE:
            user_attrs["checkpoint"] = f"{checkpoint_dir}/trial_{i}/best.pt"
        if state == TrialState.FAIL:
            user_attrs["error"] = "Traceback (most recent call last):\n  ...\nRuntimeError: boom"
        trial = optuna.trial.create_trial(
            state=state,
            value=best[metric] if state == TrialState.COMPLETE else None,
            params=params,
            distributions={k: DISTRIBUTIONS[k] for k in params},
            user_attrs=user_attrs,
            intermediate_values=intermediate,
        )
        duration = dt.timedelta(seconds=train_time + 0.3)
        trial.datetime_start = start
        trial.datetime_complete = start + duration if state.is_finished() else None
        slot_free[slot] = start + duration + dt.timedelta(milliseconds=50)
        yield trial


def add_trials(study: optuna.Study, trials: Iterable[FrozenTrial]) -> optuna.Study:
    """Add trials (keeping their datetimes) and return the study."""
    study.add_trials(trials)
    return study


def make_study(
    storage: str | optuna.storages.BaseStorage,
    name: str = "synthetic",
    n: int = 24,
    *,
    epochs: int = 6,
    direction: str = "maximize",
    seed: int = 0,
    metric: str = METRIC,
    **kwargs: Any,
) -> optuna.Study:
    """A study of ``n`` synthetic trials in ``storage`` (see :func:`synthetic_trials`)."""
    study = new_study(storage, name, epochs=epochs, direction=direction, metric=metric)
    return add_trials(study, synthetic_trials(n, epochs=epochs, seed=seed, metric=metric, **kwargs))


def clone_first_trial(db_path: str, count: int) -> None:
    """Append `count` copies of trial 0 to the only study in a SQLite file, in one SQL transaction.

    Optuna's add_trials takes ~30 ms a trial; tests that need a study with thousands of trials
    (a busy storage layer) build it in well under a second this way. Works on Optuna's RDB schema:
    every trial_* table with a trial_id column is copied row for row.
    """
    import sqlite3

    with sqlite3.connect(db_path) as conn:
        first = conn.execute("SELECT trial_id FROM trials WHERE number = 0").fetchone()[0]
        top = conn.execute("SELECT max(trial_id) FROM trials").fetchone()[0]
        seq = f"WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < {int(count)}) "
        conn.execute(f"{seq}INSERT INTO trials (trial_id, number, study_id, state, datetime_start, datetime_complete) "
                     f"SELECT {top} + i, i, study_id, state, datetime_start, datetime_complete "
                     f"FROM trials, seq WHERE trial_id = {first}")
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                                 "AND name LIKE 'trial!_%' ESCAPE '!'")]
        for table in tables:
            columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
            if "trial_id" not in columns:
                continue
            key = next(row[1] for row in conn.execute(f"PRAGMA table_info({table})") if row[5] == 1)
            rest = [c for c in columns if c not in (key, "trial_id")]
            names = ", ".join(f'"{c}"' for c in rest)
            conn.execute(f"{seq}INSERT INTO {table} (trial_id, {names}) SELECT {top} + i, {names} "
                         f"FROM {table}, seq WHERE trial_id = {first}")


# A study with a known epoch history (6 epochs a trial, budget 30): spent 2+4+6+3+3+1 = 19 epochs; saved 4 by
# pruning (trial 0) and 2 by early stopping (trial 1); trial 4 resumes trial 3 from epoch 3 (its 3 count once).
KNOWN_EPOCHS = {"spent": 19, "budget": 30, "saved": {"pruned": 4, "early_stopped": 2}}


def known_epochs_trials() -> list[FrozenTrial]:
    """Pruned, early-stopped, complete, handed-back + resumed and failed trials of :data:`KNOWN_EPOCHS`."""
    shapes = [(TrialState.PRUNED, "pruned", 2, {}), (TrialState.COMPLETE, "early_stopped", 4, {}),
              (TrialState.COMPLETE, "completed", 6, {}), (TrialState.FAIL, "interrupted", 3, {}),
              (TrialState.COMPLETE, "completed", 6, {"resumed_from": {"trial": 3, "epoch": 3}}),
              (TrialState.FAIL, "error", 1, {})]
    trials = []
    for number, (state, reason, run, extra) in enumerate(shapes):
        start = T0 + dt.timedelta(minutes=number)
        trials.append(optuna.trial.create_trial(
            state=state, value=0.5 + number / 100 if state == TrialState.COMPLETE else None,
            params={"lr": 0.01}, distributions={"lr": DISTRIBUTIONS["lr"]},
            intermediate_values={e: 0.4 for e in range(1, run + 1)},
            user_attrs={"stop_reason": reason, "epochs_run": run, **extra}))
        trials[-1].datetime_start, trials[-1].datetime_complete = start, start + dt.timedelta(seconds=30)
    return trials


def known_epochs_study(storage: str | optuna.storages.BaseStorage, name: str = "known") -> optuna.Study:
    """A study of :func:`known_epochs_trials` whose last run set the budget of :data:`KNOWN_EPOCHS`."""
    study = add_trials(new_study(storage, name, epochs=6), known_epochs_trials())
    study.set_user_attr("budget_epochs", KNOWN_EPOCHS["budget"])
    return study


def make_tradeoff_study(storage: str | optuna.storages.BaseStorage, name: str = "tradeoff", n: int = 24,
                        metrics: tuple[str, ...] = ("val_accuracy", "latency_ms"), seed: int = 0,
                        bound: float = 1.5) -> optuna.Study:
    """A study of several objectives as hpsearch writes one: accuracy rises with width, so do the costs; trials
    whose latency_ms exceeds ``bound`` carry a broken constraint (Optuna's ``set_constraint`` layout)."""
    from hpsearch import records
    from hpsearch.names import COSTS, METRICS

    rng = random.Random(seed)
    directions = [{**METRICS, **COSTS}[m] for m in metrics]
    study = optuna.create_study(storage=storage, study_name=name, directions=directions)
    study.set_user_attr(records.STUDY_OBJECTIVES, [{"metric": m, "direction": d} for m, d in zip(metrics, directions)])
    study.set_user_attr(records.STUDY_CONFIG, {"constraints": {"latency_ms": {"min": None, "max": bound}}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(metrics))
    dists = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
             "width": optuna.distributions.IntDistribution(8, 256)}
    for _ in range(n):
        width, lr = rng.randint(8, 256), 10 ** rng.uniform(-4, -1)
        known = {"val_accuracy": 0.6 + 0.3 * width / 256 + rng.uniform(-0.05, 0.05),
                 "latency_ms": 0.2 + 2.0 * width / 256 * rng.uniform(0.8, 1.2), "params": 100.0 * width,
                 "val_loss": 1.0 - 0.5 * width / 256 + rng.uniform(0, 0.1)}
        study.add_trial(optuna.trial.create_trial(
            values=[known[m] for m in metrics], params={"lr": lr, "width": width}, distributions=dists,
            user_attrs={records.COSTS: {"params": known["params"], "latency_ms": known["latency_ms"]},
                        records.STOP_REASON: records.COMPLETED},
            constraints={"latency_ms": known["latency_ms"] - bound}))
    return study
