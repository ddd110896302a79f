"""A worker: load data once, then run trials until the study-wide total is reached.

Supervision of several worker processes builds on `run_worker`; one worker is one process.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

import optuna
import torch

from hpsearch.config import StudyConfig
from hpsearch.data import DeviceData, load_dataset, split_folds
from hpsearch.errors import DeviceError, ModelError, TrialFailureError
from hpsearch.models import build_model
from hpsearch.objective import WorkerContext, run_trial
from hpsearch.study import finished_count

log = logging.getLogger("hpsearch")
FAIL_FAST_AFTER = 3  # the same error in this many consecutive trials stops the worker


def resolve_device(preference: str) -> torch.device:
    """`auto` → CUDA when present, else CPU; `cuda` without a GPU is refused."""
    if preference == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", 0)
    if preference == "cuda":
        raise DeviceError("device: cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device("cpu")


def describe_device(device: torch.device) -> str:
    """A human-readable device label recorded with every trial, e.g. 'cuda:0 (NVIDIA H100 80GB HBM3)'."""
    if device.type == "cuda":
        index = device.index or 0
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return "cpu"


def _preflight_model(cfg: StudyConfig, data: DeviceData) -> None:
    """Build the model once before any trial, so a bad model name or argument fails fast with exit 2."""
    try:
        build_model(cfg.model.name, tuple(data.input_shape), data.num_classes, dropout=0.0, **cfg.model.args)
    except ModelError as exc:
        raise ModelError(f"{cfg.source}: model: {exc}") from None


def prepare_context(cfg: StudyConfig, slot: int = 0) -> WorkerContext:
    """Load the dataset once, place it on the device, split it (seeded by the study seed)."""
    device = resolve_device(cfg.device)
    split = cfg.data.split
    pool = load_dataset(cfg.data.dataset, root=cfg.data.root, download=cfg.data.download,
                        image_size=cfg.data.image_size)
    data = DeviceData.place(pool, device, memory_fraction=cfg.data.memory_fraction)
    folds = split_folds(pool.y, val_split=split["val_split"], cv_folds=split["cv_folds"], seed=cfg.seed)
    _preflight_model(cfg, data)
    return WorkerContext(cfg=cfg, data=data, labels=pool.y, folds=folds, device=device,
                         device_name=describe_device(device), worker=f"{socket.gethostname()}:{os.getpid()}",
                         slot=slot)


@dataclass
class WorkerOutcome:
    """What one worker did in this run."""

    trials: list[optuna.trial.FrozenTrial] = field(default_factory=list)
    interrupted: bool = False
    timed_out: bool = False


def _signature(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _record_failure(study: optuna.Study, trial: optuna.Trial, reason: str,
                    error: str | None) -> optuna.trial.FrozenTrial:
    trial.set_user_attr("stop_reason", reason)
    if error is not None:
        trial.set_user_attr("error", error[-8000:])
    return study.tell(trial, state=optuna.trial.TrialState.FAIL)


def run_worker(study: optuna.Study, ctx: WorkerContext, n_trials: int, timeout: float | None = None,
               on_trial: Callable[[optuna.trial.FrozenTrial], None] | None = None) -> WorkerOutcome:
    """Ask/tell trials until `n_trials` finished trials exist study-wide, the timeout passes, or Ctrl-C."""
    outcome = WorkerOutcome()
    deadline = None if timeout is None else time.monotonic() + timeout
    failures: list[str] = []
    while finished_count(study) < n_trials:
        if deadline is not None and time.monotonic() >= deadline:
            outcome.timed_out = True
            break
        trial = study.ask()
        try:
            value = run_trial(trial, ctx)
            frozen = study.tell(trial, value)
            failures.clear()
        except optuna.TrialPruned:
            frozen = study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            failures.clear()
        except KeyboardInterrupt:
            outcome.trials.append(_record_failure(study, trial, "interrupted", None))
            outcome.interrupted = True
            break
        except Exception as exc:  # user code may raise anything; the trial fails, the study goes on
            log.error("trial %d failed: %s", trial.number, _signature(exc))
            frozen = _record_failure(study, trial, "error", traceback.format_exc())
            failures.append(_signature(exc))
            if len(failures) >= FAIL_FAST_AFTER and len(set(failures)) == 1:
                raise TrialFailureError(f"the last {len(failures)} trials all failed with {failures[0]}; "
                                        f"fix the cause (see `hpsearch status --failed`) and run again") from None
        outcome.trials.append(frozen)
        if on_trial is not None:
            on_trial(frozen)
    return outcome
