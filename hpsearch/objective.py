"""One trial: suggest → build → train epoch by epoch → report / prune / stop → value.

The only module that holds both an Optuna trial and a torch model.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch

from hpsearch import __version__, space
from hpsearch.config import BUILTIN_MODELS, TRAIN_PARAMS, StudyConfig
from hpsearch.data import DeviceData
from hpsearch.engine import EarlyStopping, Trainer, TrainSettings, class_weights_for, save_checkpoint, seed_everything
from hpsearch.models import build_model


@dataclass
class WorkerContext:
    """What a worker prepares once and every trial reuses: config, resident data, folds, identity."""

    cfg: StudyConfig
    data: DeviceData
    labels: torch.Tensor
    folds: list[tuple[torch.Tensor, torch.Tensor]]
    device: torch.device
    device_name: str
    worker: str
    slot: int = 0
    extra_attrs: dict[str, Any] = field(default_factory=dict)


def trial_seed(study_seed: int, trial_number: int) -> int:
    """A per-trial seed derived from the study seed and trial number (stable across runs and machines)."""
    digest = hashlib.sha256(f"{study_seed}:{trial_number}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def train_settings(cfg: StudyConfig, params: dict[str, Any], labels: torch.Tensor, num_classes: int) -> TrainSettings:
    """Fixed `train:` values overridden by the sampled parameters that name training settings."""
    t = cfg.train
    chosen = {name: params.get(name, getattr(t, name)) for name in TRAIN_PARAMS}
    weights = class_weights_for(labels, num_classes) if t.class_weighting else None
    return TrainSettings(
        epochs=t.epochs, lr=float(chosen["lr"]), batch_size=int(chosen["batch_size"]), optimizer=str(chosen["optimizer"]),
        momentum=float(chosen["momentum"]), nesterov=bool(chosen["nesterov"]),
        weight_decay=float(chosen["weight_decay"]), scheduler=str(chosen["scheduler"]),
        warmup_epochs=float(chosen["warmup_epochs"]), step_size=int(chosen["step_size"]),
        gamma=None if chosen["gamma"] is None else float(chosen["gamma"]),
        accum_steps=int(chosen["accum_steps"]), label_smoothing=float(chosen["label_smoothing"]),
        class_weights=weights, augment=tuple(t.augment), amp=t.amp,
    )


def model_spec(cfg: StudyConfig, params: dict[str, Any], data: DeviceData) -> dict[str, Any]:
    """Everything `build_model` needs, as plain data (also stored in the checkpoint)."""
    dropout = float(params.get("dropout", cfg.train.dropout))
    own = set(TRAIN_PARAMS) | {"dropout"}
    kwargs: dict[str, Any] = dict(cfg.model.args)
    accepted = BUILTIN_MODELS.get(cfg.model.name)
    kwargs.update({k: v for k, v in params.items() if k not in own and (accepted is None or k in accepted)})
    return {"name": cfg.model.name, "input_shape": list(data.input_shape), "num_classes": data.num_classes,
            "dropout": dropout, "kwargs": kwargs}


def _build_trainers(ctx: WorkerContext, spec: dict[str, Any], settings: TrainSettings, seed: int) -> list[Trainer]:
    trainers = []
    for train_idx, val_idx in ctx.folds:
        seed_everything(seed)  # every fold starts from the same initial weights: folds differ only in data
        model = build_model(spec["name"], tuple(spec["input_shape"]), spec["num_classes"], dropout=spec["dropout"],
                            **spec["kwargs"]).to(ctx.device)
        trainers.append(Trainer(model, ctx.data, train_idx, val_idx, settings, seed))
    return trainers


def _mean_record(records: list[dict[str, float]]) -> dict[str, float]:
    keys = records[0].keys()
    mean = {key: sum(r[key] for r in records) / len(records) for key in keys}
    mean["epoch"] = int(records[0]["epoch"])
    return mean


class _Checkpointer:
    """Writes the best-weights checkpoint of one trial whenever its metric improves."""

    def __init__(self, ctx: WorkerContext, trial: optuna.Trial, params: dict[str, Any], spec: dict[str, Any]):
        self.enabled = ctx.cfg.train.checkpoint
        self.path = (Path(ctx.cfg.out_dir) / "checkpoints" / f"trial_{trial.number:05d}.pt").resolve()
        self.base = {"params": params, "model_spec": spec, "hpsearch_version": __version__,
                     "study": ctx.cfg.name, "trial": trial.number}
        self.metric = ctx.cfg.metric

    def save(self, trainers: list[Trainer], epoch: int, value: float) -> None:
        if not self.enabled:
            return
        first = trainers[0]
        payload = {**self.base, "model": first.model.state_dict(), "optimizer": first.optimizer.state_dict(),
                   "epoch": epoch, "metric": {"name": self.metric, "value": value}}
        if len(trainers) > 1:
            payload["fold_models"] = [t.model.state_dict() for t in trainers]
        save_checkpoint(self.path, payload)


def _improved(value: float, best: float | None, maximize: bool) -> bool:
    return best is None or (value > best if maximize else value < best)


def run_trial(trial: optuna.Trial, ctx: WorkerContext) -> float:
    """Train one trial; return its best validation metric, or raise TrialPruned (pruned or diverged)."""
    cfg = ctx.cfg
    params = space.suggest(trial, cfg)
    seed = trial_seed(cfg.seed, trial.number)
    for key, value in {"seed": seed, "device": ctx.device_name, "worker": ctx.worker, "slot": ctx.slot,
                       "hpsearch_version": __version__, **ctx.extra_attrs}.items():
        trial.set_user_attr(key, value)
    settings = train_settings(cfg, params, ctx.labels, ctx.data.num_classes)
    spec = model_spec(cfg, params, ctx.data)
    trainers = _build_trainers(ctx, spec, settings, seed)
    checkpointer = _Checkpointer(ctx, trial, params, spec)
    maximize = cfg.resolved_direction == "maximize"
    stopper = None
    if cfg.train.early_stopping is not None:
        es = cfg.train.early_stopping
        stopper = EarlyStopping(es.patience, es.min_delta, mode="max" if maximize else "min")
    history: list[dict[str, float]] = []
    best: float | None = None
    best_epoch = 0
    started = time.perf_counter()

    def finish(reason: str) -> None:
        trial.set_user_attr("stop_reason", reason)
        trial.set_user_attr("epochs_run", len(history))
        trial.set_user_attr("best_epoch", best_epoch)
        trial.set_user_attr("train_time", time.perf_counter() - started)
        if checkpointer.enabled and best is not None:
            trial.set_user_attr("checkpoint", str(checkpointer.path))

    for epoch in range(1, cfg.train.epochs + 1):
        record = _mean_record([t.run_epoch() for t in trainers])
        history.append(record)
        trial.set_user_attr("history", history)
        value = record[cfg.metric]
        if not math.isfinite(record["train_loss"]) or not math.isfinite(value):
            finish("diverged")
            raise optuna.TrialPruned(f"loss diverged at epoch {epoch}")
        trial.report(value, epoch)
        if _improved(value, best, maximize):
            best, best_epoch = value, epoch
            checkpointer.save(trainers, epoch, value)
        if stopper is not None and stopper.step(value):
            finish("early_stopped")
            break
        if trial.should_prune():
            finish("pruned")
            raise optuna.TrialPruned(f"pruned at epoch {epoch}")
    else:
        finish("completed")
    return float(best)  # type: ignore[arg-type]  # epochs >= 1 (schema) so best is set
