"""A trial's state between epochs and its files: progress (history, best, early stopping), the best-weights and
resume checkpoints it writes, and which saved state a retry continues from.

Holds an Optuna trial and torch state (a bridge); knows nothing of the worker that runs it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch

from hpsearch import __version__, records
from hpsearch.checkpoints import CheckpointWriter, load_checkpoint
from hpsearch.config import StudyConfig
from hpsearch.engine import EarlyStopping, Trainer
from hpsearch.errors import HpsearchError
from hpsearch.study import retry_history

log = logging.getLogger("hpsearch")


@dataclass
class Progress:
    """Where a trial stands: history, best value and epoch, early-stopping state, reported steps."""

    maximize: bool
    stopper: EarlyStopping | None
    history: list[dict[str, float]] = field(default_factory=list)
    best: float | None = None
    best_epoch: int = 0
    best_splits: list[float] = field(default_factory=list)  # each fold's (bootstrap split's) value at best_epoch
    reported: set[int] = field(default_factory=set)
    train_time: float = 0.0  # seconds in the epoch loop, once it ended

    def improved(self, value: float) -> bool:
        return self.best is None or (value > self.best if self.maximize else value < self.best)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "best": self.best, "best_epoch": self.best_epoch,
                "best_splits": self.best_splits, "stopper": None if self.stopper is None else self.stopper.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history, self.best, self.best_epoch = list(state["history"]), state["best"], state["best_epoch"]
        self.best_splits = list(state.get("best_splits", []))  # a file from before splits were kept has none
        if self.stopper is not None and state.get("stopper") is not None:
            self.stopper.load_state_dict(state["stopper"])


def new_progress(cfg: StudyConfig) -> Progress:
    """A trial's progress before its first epoch: nothing run, early stopping as the study file sets it."""
    maximize = cfg.resolved_direction == "maximize"
    stopper = None
    if cfg.train.early_stopping is not None:
        es = cfg.train.early_stopping
        stopper = EarlyStopping(es.patience, es.min_delta, mode="max" if maximize else "min")
    return Progress(maximize=maximize, stopper=stopper)


def resume_path(out_dir: Path, trial_number: int) -> Path:
    """Where a trial keeps its per-epoch resumable state."""
    return out_dir / "resume" / f"trial_{trial_number:05d}.pt"


class Checkpointer:
    """The trial's files: best weights when the metric improves, resumable state every epoch.

    Both are written in the background (the worker's CheckpointWriter); :meth:`flush` waits for them.
    """

    def __init__(self, cfg: StudyConfig, writer: CheckpointWriter, trial: optuna.Trial, params: dict[str, Any],
                 spec: dict[str, Any], inputs: dict[str, Any], seed: int = 0):
        out = Path(cfg.out_dir).resolve()
        self.best_enabled = cfg.train.checkpoint
        self.resume_enabled = cfg.train.resume_checkpoints
        self.path = out / "checkpoints" / f"trial_{trial.number:05d}.pt"
        self.resume_path = resume_path(out, trial.number)
        self.base = {"params": params, "model_spec": spec, "hpsearch_version": __version__,
                     "study": cfg.name, "trial": trial.number, "inputs": inputs,
                     "tta": {"augment": list(cfg.train.augment), "seed": seed}}  # what predict(x, tta=K) draws
        self.metric = cfg.metric
        self.writer = writer
        # resume files of the trials this one retries: obsolete once it ends
        self.retried = [resume_path(out, n) for n in retry_history(trial)]

    def save_epoch(self, trainers: list[Trainer], progress: Progress, improved: bool) -> None:
        """Submit the epoch's files together (weights shared by both are copied once): best, resume."""
        files: dict[Path, dict[str, Any]] = {}
        if improved and self.best_enabled:
            first = trainers[0]
            files[self.path] = {**self.base, "model": first.model.state_dict(),
                                "optimizer": first.optimizer.state_dict(), "epoch": progress.best_epoch,
                                "metric": {"name": self.metric, "value": progress.best}}
            if len(trainers) > 1:
                files[self.path]["fold_models"] = [t.model.state_dict() for t in trainers]
        if self.resume_enabled:
            files[self.resume_path] = {**self.base, "trainers": [t.state_dict() for t in trainers],
                                       **progress.state_dict()}
        if files:
            self.writer.submit(files)

    def flush(self) -> None:
        """Wait until every checkpoint of this trial submitted so far is on disk."""
        self.writer.flush()

    def flush_quietly(self) -> None:
        """:meth:`flush` while another error is on its way: a write error is logged, not raised."""
        try:
            self.writer.flush()
        except HpsearchError as exc:
            log.warning("trial %d: %s", self.base["trial"], exc)

    def drop_resume(self) -> None:
        """The trial ended: neither its own state nor that of the trials it retries is needed any more."""
        self.flush()  # a write still in flight would bring the file back
        for path in [self.resume_path, *self.retried]:
            path.unlink(missing_ok=True)


def resume_source(cfg: StudyConfig, device: torch.device,
                  trial: optuna.Trial) -> tuple[int, dict[str, Any]] | None:
    """The newest state saved along the chain of trials this one retries (their workers died or stopped).

    A retry of a retry that stopped before saving anything resumes from the trial before; a file
    that cannot be read is skipped (recorded as `resume_skipped`), and with none left the trial
    starts from scratch.
    """
    if not cfg.train.resume_checkpoints:
        return None
    out = Path(cfg.out_dir).resolve()
    for number in reversed(retry_history(trial)):
        path = resume_path(out, number)
        if not path.is_file():
            continue
        try:
            return number, load_checkpoint(path, map_location=device)
        except HpsearchError as exc:
            skip_resume(trial, number, str(exc))
    return None


def own_state(cfg: StudyConfig, device: torch.device, trial: optuna.Trial) -> tuple[int, dict[str, Any]] | None:
    """The state this trial saved at its last finished epoch, before an out-of-memory error (if any)."""
    path = resume_path(Path(cfg.out_dir).resolve(), trial.number)
    if not cfg.train.resume_checkpoints or not path.is_file():
        return None
    try:
        return trial.number, load_checkpoint(path, map_location=device)
    except HpsearchError as exc:
        skip_resume(trial, trial.number, str(exc))
        return None


def skip_resume(trial: optuna.Trial, source: int, why: str) -> None:
    """Record (and log) that the state saved by trial ``source`` cannot be used: the trial starts from scratch."""
    log.warning("trial %d cannot resume trial %d (%s); it starts from scratch", trial.number, source, why)
    trial.set_user_attr(records.RESUME_SKIPPED, {"trial": source, "reason": why[:500]})


def restore(trial: optuna.Trial, trainers: list[Trainer], progress: Progress,
            resume: tuple[int, dict[str, Any]]) -> None:
    """Load a saved state into fresh trainers and progress; a file of another shape raises (KeyError, ValueError...)."""
    source, state = resume
    if len(state["trainers"]) != len(trainers):
        raise ValueError(f"{len(state['trainers'])} folds or bootstrap splits saved, {len(trainers)} to train")
    for trainer, trainer_state in zip(trainers, state["trainers"]):
        trainer.load_state_dict(trainer_state)
    progress.load_state_dict(state)
    if source != trial.number:  # its own state (an OOM retry) is no resume from another trial
        trial.set_user_attr(records.RESUMED_FROM, {"trial": source, "epoch": trainers[0].epoch})
        log.info("trial %d resumes trial %d from epoch %d", trial.number, source, trainers[0].epoch)


def drop_resume_files(cfg: StudyConfig, writer: CheckpointWriter, trial: optuna.Trial) -> None:
    """Remove the resume files of the trial and of those it retries (it failed for good: nobody will resume it)."""
    out = Path(cfg.out_dir).resolve()
    writer.flush()
    for number in [trial.number, *retry_history(trial)]:
        resume_path(out, number).unlink(missing_ok=True)
