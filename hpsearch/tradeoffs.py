"""A trial's costs against the study's constraints and objectives: what Optuna is told when a trial is measured.

A bridge (it holds an Optuna trial, the config and a model): `objective` calls it before the first epoch
(`refuse_infeasible`) and after the last (`latency_of`, `trial_values`).
"""

from __future__ import annotations

from typing import Any

import optuna
import torch
from torch import nn

from hpsearch import records
from hpsearch.config import StudyConfig
from hpsearch.costs import latency_ms
from hpsearch.data import DeviceData
from hpsearch.names import METRICS


def latency_of(model: nn.Module, data: DeviceData, val_idx: torch.Tensor, batch: int) -> float:
    """Milliseconds of one forward pass of ``batch`` validation inputs (as training sees them) on the data's device."""
    idx = val_idx[torch.arange(batch) % len(val_idx)]  # repeated when the split is smaller than the batch
    x, _ = next(data.batches(idx, batch, shuffle=False))
    return latency_ms(model, x)


def set_constraints(trial: optuna.Trial, cfg: StudyConfig, known: dict[str, float]) -> bool:
    """Tell Optuna (``trial.set_constraint``: <= 0 is feasible) each constraint whose value is known and not told
    yet (an out-of-memory retry measures twice); False when one of them is broken."""
    told = trial.constraints
    feasible = True
    for name, bound in cfg.constraints.items():
        if name not in known:
            continue
        violation = bound.violation(known[name])
        feasible = feasible and violation <= 0
        if name not in told:
            trial.set_constraint(name, violation)
    return feasible


def refuse_infeasible(trial: optuna.Trial, cfg: StudyConfig, measured: dict[str, float]) -> None:
    """A constraint known before training (``params``) that the model breaks ends the trial pruned, untrained."""
    if set_constraints(trial, cfg, measured):
        return
    attrs: dict[str, Any] = {records.COSTS: measured, records.STOP_REASON: records.INFEASIBLE,
                             records.EPOCHS_RUN: 0, records.TRAIN_TIME: 0.0}
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    broken = ", ".join(f"{name} = {measured[name]:g} (bound {bound.min}..{bound.max})"
                       for name, bound in cfg.constraints.items()
                       if name in measured and bound.violation(measured[name]) > 0)
    raise optuna.TrialPruned(f"infeasible before training: {broken}")


def trial_values(trial: optuna.Trial, cfg: StudyConfig, best: float, history: list[dict[str, float]],
                 best_epoch: int, measured: dict[str, float]) -> float | list[float]:
    """The trial's value (one metric) or values (one per objective), after telling the constraints known now.

    A metric other than the first is read at the epoch the first one chose: the epoch whose weights are kept.
    """
    at_best = next((r for r in history if int(r["epoch"]) == best_epoch), {})
    known = {**{m: float(at_best[m]) for m in METRICS if m in at_best}, **measured, cfg.metric: best}
    set_constraints(trial, cfg, known)
    if not cfg.multi_objective:
        return best
    return [known[goal.metric] for goal in cfg.goals]
