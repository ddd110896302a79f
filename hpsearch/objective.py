"""One trial: suggest → build → train epoch by epoch → report / prune / stop → value.

The only module that holds both an Optuna trial and a torch model.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.artifacts import upload_artifact

from hpsearch import __version__, budget, records, signals, space
from hpsearch.config import StudyConfig
from hpsearch.checkpoints import CheckpointWriter
from hpsearch.costs import MemoryMeter, count_params
from hpsearch.tradeoffs import latency_of, refuse_infeasible, trial_values
from hpsearch.data import DeviceData
from hpsearch.errors import CheckpointError
from hpsearch.engine import Trainer, TrainSettings, class_weights_for, seed_everything
from hpsearch.ids import trial_seed
from hpsearch.models import build_model
from hpsearch.names import MODELS, TRAIN_PARAMS
from hpsearch.pretrained import apply_pretrained, load_state, resolve_source
from hpsearch.settings import settings_from
from hpsearch.study import artifact_dir, artifact_store, is_storage_exception
from hpsearch.tasks import task_arguments
from hpsearch.trialfiles import (Checkpointer, Progress, drop_resume_files, new_progress, own_state, restore,
                                 resume_source, skip_resume)

log = logging.getLogger("hpsearch")
PROGRESS_EVERY_S = 10.0  # a trial logs its latest epoch at most this often


@dataclass
class WorkerContext:
    """What a worker prepares once and every trial reuses: config, resident data, folds, identity, writer."""

    cfg: StudyConfig
    data: DeviceData
    labels: torch.Tensor
    folds: list[tuple[torch.Tensor, torch.Tensor]]
    device: torch.device
    device_name: str
    worker: str
    slot: int = 0
    extra_attrs: dict[str, Any] = field(default_factory=dict)
    checkpoints: CheckpointWriter = field(default_factory=CheckpointWriter)


def train_settings(cfg: StudyConfig, params: dict[str, Any], labels: torch.Tensor, num_classes: int) -> TrainSettings:
    """Fixed `train:` values overridden by the sampled parameters that name training settings, field by field."""
    chosen = {name: params[name] for name in TRAIN_PARAMS if name in params}
    if cfg.train.class_weighting:
        chosen["class_weights"] = class_weights_for(labels, num_classes)
    return settings_from(dict(cfg.train), chosen)


def model_spec(cfg: StudyConfig, params: dict[str, Any], data: DeviceData) -> dict[str, Any]:
    """Everything `build_model` needs, as plain data (also stored in the checkpoint)."""
    dropout = float(params.get("dropout", cfg.train.dropout))
    own = set(TRAIN_PARAMS) | {"dropout"}
    kwargs: dict[str, Any] = dict(cfg.model.args)
    accepted = MODELS.get(cfg.model.name)
    kwargs.update({k: v for k, v in params.items() if k not in own and (accepted is None or k in accepted)})
    kwargs.update(task_arguments(cfg.model.name, data.inputs))
    return {"name": cfg.model.name, "input_shape": list(data.input_shape), "num_classes": data.num_classes,
            "dropout": dropout, "kwargs": kwargs}


def start_from_pretrained(cfg: StudyConfig, model: torch.nn.Module) -> dict[str, Any] | None:
    """Load ``model.pretrained`` into ``model`` (the file read once per worker); what was loaded, or None."""
    source = cfg.model.pretrained
    if source is None:
        return None
    path = resolve_source(source, cfg.model.name, cfg.model.download)
    return apply_pretrained(model, load_state(path), source)


def _build_trainers(ctx: WorkerContext, spec: dict[str, Any], settings: TrainSettings, seed: int,
                    trial: optuna.Trial | None = None) -> list[Trainer]:
    trainers = []
    for train_idx, val_idx in ctx.folds:
        seed_everything(seed)  # every fold starts from the same initial weights: folds differ only in data
        model = build_model(spec["name"], tuple(spec["input_shape"]), spec["num_classes"], dropout=spec["dropout"],
                            **spec["kwargs"])
        loaded = start_from_pretrained(ctx.cfg, model)  # tensors that do not fit keep the init just drawn
        if loaded is not None and trial is not None and not trainers:
            trial.set_user_attr(records.PRETRAINED, loaded)
        trainers.append(Trainer(model.to(ctx.device), ctx.data, train_idx, val_idx, settings, seed,
                                between_batches=signals.check))
    return trainers


def _mean_record(records: list[dict[str, float]]) -> dict[str, float]:
    keys = records[0].keys()
    mean = {key: sum(r[key] for r in records) / len(records) for key in keys}
    mean["epoch"] = int(records[0]["epoch"])
    return mean


def _report(trial: optuna.Trial, progress: Progress, epoch: int, value: float) -> bool:
    """Report the epoch's value unless reported already (an OOM retry must not report a step twice); True if it was."""
    if epoch in progress.reported:
        return False
    trial.report(value, epoch)
    progress.reported.add(epoch)
    return True


def _fit(trial: optuna.Trial, ctx: WorkerContext, trainers: list[Trainer], files: Checkpointer,
         progress: Progress) -> float:
    """The epoch loop: train all folds one epoch, report the mean, checkpoint, stop or prune."""
    cfg = ctx.cfg
    started = time.perf_counter()
    prunable = not cfg.multi_objective  # Optuna neither takes reports nor prunes with several objectives

    def finish(reason: str) -> None:
        files.flush()  # the checkpoint attr must name a complete file
        progress.train_time = time.perf_counter() - started
        for key, value in {records.STOP_REASON: reason, records.EPOCHS_RUN: len(progress.history),
                           records.BEST_EPOCH: progress.best_epoch,
                           records.TRAIN_TIME: progress.train_time}.items():
            trial.set_user_attr(key, value)
        if len(trainers) > 1 and progress.best_splits:
            trial.set_user_attr(records.SPLIT_VALUES, progress.best_splits)
        if _best_file(files, progress) is not None:
            trial.set_user_attr(records.CHECKPOINT, str(files.path))
        _upload_artifacts(trial, ctx, progress.history, _best_file(files, progress))
        files.drop_resume()

    last = cfg.train.epochs  # a trial that trained its last epoch is complete: pruning it would save nothing
    for record in progress.history:  # a resumed trial meets the pruner's rungs with its earlier epochs' values
        if prunable and _report(trial, progress, int(record["epoch"]), record[cfg.metric]) \
                and int(record["epoch"]) < last and trial.should_prune():
            finish(records.PRUNED)
            raise optuna.TrialPruned(f"pruned at epoch {int(record['epoch'])} (resumed)")
    first = trainers[0].epoch + 1
    said = time.monotonic()
    epoch_budget, resumed = budget.of(cfg), budget.resumed_epochs(trial)
    for epoch in range(first, cfg.train.epochs + 1):
        if epoch_budget is not None and not budget.reserve(trial.study, trial, epoch - resumed, epoch_budget):
            finish(records.BUDGET)  # the study-wide epoch budget is spent: the trial ends with what it has
            if progress.best is None:
                raise optuna.TrialPruned(f"epoch budget spent before epoch {epoch}")
            return float(progress.best)
        per_split = [t.run_epoch() for t in trainers]
        record = _mean_record(per_split)
        if epoch == first:
            trial.set_user_attr(records.CUDA_GRAPHS, trainers[0].graphs)  # captured (or refused) during this epoch
        if time.monotonic() - said >= PROGRESS_EVERY_S:  # long trials show progress; short ones stay quiet
            said = time.monotonic()
            log.info("trial %d epoch %d/%d: %s=%.4f (%.1f s an epoch)", trial.number, epoch, cfg.train.epochs,
                     cfg.metric, record[cfg.metric], record["epoch_time"])
        progress.history.append(record)
        trial.set_user_attr(records.HISTORY, progress.history)
        value = record[cfg.metric]
        if not math.isfinite(record["train_loss"]) or not math.isfinite(value):
            finish(records.DIVERGED)
            raise optuna.TrialPruned(f"loss diverged at epoch {epoch}")
        improved = progress.improved(value)
        if improved:
            progress.best, progress.best_epoch = value, epoch
            progress.best_splits = [float(r[cfg.metric]) for r in per_split]
        stop = progress.stopper is not None and progress.stopper.step(value)
        files.save_epoch(trainers, progress, improved)
        if prunable:
            _report(trial, progress, epoch, value)
        if stop:
            finish(records.EARLY_STOPPED)
            return float(progress.best)
        if prunable and epoch < last and trial.should_prune():
            finish(records.PRUNED)
            raise optuna.TrialPruned(f"pruned at epoch {epoch}")
    finish(records.COMPLETED)
    if progress.best is None:  # resumed with no epoch left to run and none recorded
        raise optuna.TrialPruned("no epoch was run")
    return float(progress.best)


def _best_file(files: Checkpointer, progress: Progress) -> Path | None:
    """The trial's best-weights file, when it keeps one and an epoch was best."""
    return files.path if files.best_enabled and progress.best is not None else None


def _finite(value: Any) -> Any:
    return value if not isinstance(value, float) or math.isfinite(value) else None


def _upload_artifacts(trial: optuna.Trial, ctx: WorkerContext, history: list[dict[str, float]],
                      checkpoint: Path | None) -> None:
    """The whole history (JSON) and the best weights as the trial's artifacts, which optuna-dashboard lists and
    downloads: its view of the `history` user attr stops at 1,024 characters (about six epochs)."""
    store = artifact_store(ctx.cfg.out_dir)
    try:
        with tempfile.TemporaryDirectory(dir=artifact_dir(ctx.cfg.out_dir)) as tmp:
            path = Path(tmp) / records.HISTORY_ARTIFACT
            rows = [{key: _finite(value) for key, value in record.items()} for record in history]
            path.write_text(json.dumps(rows, indent=1, allow_nan=False) + "\n", encoding="utf-8")
            upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
        if checkpoint is not None:
            upload_artifact(artifact_store=store, file_path=str(checkpoint), study_or_trial=trial)
    except OSError as exc:  # a copy for the dashboard: the trial's own files and attrs are already saved
        log.warning("trial %d: artifacts not saved in %s (%s)", trial.number, artifact_dir(ctx.cfg.out_dir), exc)


def _attempt(trial: optuna.Trial, ctx: WorkerContext, params: dict[str, Any], settings: TrainSettings,
             seed: int, resume: tuple[int, dict[str, Any]] | None, reported: set[int]) -> float | list[float]:
    spec = model_spec(ctx.cfg, params, ctx.data)
    trainers = _build_trainers(ctx, spec, settings, seed, trial)
    progress = new_progress(ctx.cfg)
    progress.reported = reported
    files = Checkpointer(ctx.cfg, ctx.checkpoints, trial, params, spec, ctx.data.inputs, seed)
    if resume is not None:
        try:
            restore(trial, trainers, progress, resume)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # a file of another shape: start afresh
            skip_resume(trial, resume[0], f"{type(exc).__name__}: {exc}")
            trainers = _build_trainers(ctx, spec, settings, seed)
            progress = new_progress(ctx.cfg)
            progress.reported = reported
    measured: dict[str, float] = {"params": count_params(trainers[0].model)}
    refuse_infeasible(trial, ctx.cfg, measured)  # before the first epoch: no training time spent on it
    trial.set_user_attr(records.COSTS, measured)  # known now: a trial pruned later still says what it costs
    meter = MemoryMeter(ctx.device)
    meter.start()
    try:
        best = _fit(trial, ctx, trainers, files, progress)
        measured.update(peak_memory_mb=meter.peak_mb(),
                        latency_ms=latency_of(trainers[0].model, ctx.data, ctx.folds[0][1], ctx.cfg.latency_batch))
        trial.set_user_attr(records.COSTS, measured)
        trial.set_user_attr(records.MEMORY_KIND, meter.kind)
        measured["train_time"] = progress.train_time
        return trial_values(trial, ctx.cfg, best, progress.history, progress.best_epoch, measured)
    except BaseException as exc:
        files.flush_quietly()  # an interrupted trial resumes from the last epoch it submitted
        if _fails_for_good(exc) and progress.history:  # the epochs it ran, for whoever debugs it in the dashboard
            _upload_artifacts(trial, ctx, progress.history, _best_file(files, progress))
        raise
    finally:
        for trainer in trainers:
            trainer.close()


def _fails_for_good(exc: BaseException) -> bool:
    """An error of the trial's own that fails it (user code, a bad value): not a stop signal, a pruning, an
    out-of-memory retried at half the batch, or a storage or checkpoint failure that hands the trial back."""
    return isinstance(exc, Exception) and not isinstance(
        exc, (optuna.TrialPruned, torch.cuda.OutOfMemoryError, CheckpointError)) and not is_storage_exception(exc)


def release_memory(device: torch.device) -> None:
    """Give cached accelerator memory back after a failed trial, before the next one."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_trial(trial: optuna.Trial, ctx: WorkerContext) -> float | list[float]:
    """Train one trial; return its best validation metric (one per objective with several), or raise TrialPruned
    (pruned, diverged, or infeasible before training).

    A CUDA out-of-memory error is retried once with half the batch size and twice the gradient
    accumulation (the same effective batch), from the last epoch the trial saved; a second one
    propagates (and the trial's resume files go: nobody will resume it).
    """
    cfg = ctx.cfg
    params = space.suggest(trial, cfg)
    seed = trial_seed(cfg.seed, trial.number)
    for key, value in {records.SEED: seed, records.DEVICE: ctx.device_name, records.WORKER: ctx.worker,
                       records.SLOT: ctx.slot, records.VERSION: __version__, records.INPUTS: ctx.data.inputs,
                       **ctx.extra_attrs}.items():
        trial.set_user_attr(key, value)
    settings = train_settings(cfg, params, ctx.labels, ctx.data.num_classes)
    reported: set[int] = set()
    try:
        return _attempt(trial, ctx, params, settings, seed, resume_source(cfg, ctx.device, trial), reported)
    except torch.cuda.OutOfMemoryError:
        if settings.batch_size < 2:
            drop_resume_files(cfg, ctx.checkpoints, trial)
            raise
    release_memory(ctx.device)  # outside the except block: the traceback no longer pins the tensors
    smaller = replace(settings, batch_size=settings.batch_size // 2, accum_steps=settings.accum_steps * 2)
    resume = own_state(cfg, ctx.device, trial) or resume_source(cfg, ctx.device, trial)
    done = 0 if resume is None else int(resume[1]["trainers"][0]["epoch"])
    trial.set_user_attr(records.OOM_RETRY, {"batch_size": smaller.batch_size, "accum_steps": smaller.accum_steps,
                                      "from_epoch": done})
    log.warning("trial %d ran out of memory; retrying with batch %d x %d accumulation from epoch %d", trial.number,
                smaller.batch_size, smaller.accum_steps, done)
    try:
        return _attempt(trial, ctx, params, smaller, seed, resume, reported)
    except torch.cuda.OutOfMemoryError:
        drop_resume_files(cfg, ctx.checkpoints, trial)  # it fails for good: nobody will resume it
        raise
