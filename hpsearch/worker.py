"""A worker: load data once, then run trials until the study-wide total is reached.

Supervision of several worker processes builds on `run_worker`; one worker is one process.
"""

from __future__ import annotations

import inspect
import logging
import os
import signal
import socket
import threading
import time
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import optuna
import torch
from optuna.storages import fail_stale_trials
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import TrialState

from hpsearch.config import TRAIN_PARAMS, StudyConfig
from hpsearch.data import ArrayData, DeviceData, load_dataset, split_folds
from hpsearch.errors import DataError, DeviceError, ModelError, TrialFailureError
from hpsearch.models import build_model
from hpsearch.objective import WorkerContext, release_memory
from hpsearch.plugins import import_callable
from hpsearch.slots import Slot
from hpsearch.study import requeue

log = logging.getLogger("hpsearch")
FAIL_FAST_AFTER = 3  # the same error in this many consecutive trials stops the worker


def resolve_device(preference: str, gpu: int | None) -> torch.device:
    """The slot's GPU under `auto`/`cuda`, else the CPU; `cuda` without a GPU is refused."""
    if preference == "cpu":
        return torch.device("cpu")
    if gpu is not None and torch.cuda.is_available():
        return torch.device("cuda", gpu)
    if preference == "cuda":
        raise DeviceError("device: cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device("cpu")


def describe_device(device: torch.device) -> str:
    """A human-readable device label recorded with every trial, e.g. 'cuda:0 (NVIDIA H100 80GB HBM3)'."""
    if device.type == "cuda":
        index = device.index or 0
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return "cpu"


def _check_factory_arguments(cfg: StudyConfig) -> None:
    """Every model.args key and searched model argument of a custom factory is a parameter it accepts."""
    if not cfg.model.is_custom:
        return  # config checked the builtins' arguments already
    try:
        factory = import_callable(cfg.model.name, "model", ModelError)
    except ModelError as exc:
        raise ModelError(f"{cfg.source}: model.name: {exc}") from None
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return  # no inspectable signature (some builtins, C extensions): the first build will tell
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    given = ("input_shape", "num_classes", "dropout")  # hpsearch passes these itself
    accepted = [p.name for p in parameters if p.name not in given and p.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    searched = [name for name in cfg.space if name not in TRAIN_PARAMS and name != "dropout"]
    for where, name in [(f"model.args.{key}", key) for key in cfg.model.args] + [(f"space.{n}", n) for n in searched]:
        if name not in accepted:
            raise ModelError(f"{cfg.source}: {where}: model factory '{cfg.model.name}' takes no argument '{name}' "
                             f"(it accepts: {', '.join(accepted) or 'none'}); add it to the factory's parameters "
                             f"or remove {where}")


def _preflight_model(cfg: StudyConfig, data: DeviceData) -> None:
    """Build the model once before any trial, so a bad model name or argument fails fast with exit 2."""
    _check_factory_arguments(cfg)
    try:
        build_model(cfg.model.name, tuple(data.input_shape), data.num_classes, dropout=0.0, **cfg.model.args)
    except ModelError as exc:
        raise ModelError(f"{cfg.source}: model: {exc}") from None


def _load_pool(cfg: StudyConfig) -> ArrayData:
    try:
        return load_dataset(cfg.data.dataset, root=cfg.data.root, download=cfg.data.download,
                            image_size=cfg.data.image_size)
    except DataError as exc:
        raise DataError(f"{cfg.source}: data.dataset: {exc}") from None


def _split(cfg: StudyConfig, labels: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    split = cfg.data.split
    try:
        return split_folds(labels, val_split=split["val_split"], cv_folds=split["cv_folds"], seed=cfg.seed)
    except DataError as exc:
        raise DataError(f"{cfg.source}: data.{'cv_folds' if split['cv_folds'] else 'val_split'}: {exc}") from None


def preflight(cfg: StudyConfig) -> None:
    """Load the data and build the model once on the CPU, so bad input fails before the study is touched."""
    pool = _load_pool(cfg)
    _split(cfg, pool.y)
    _preflight_model(cfg, DeviceData.place(pool, torch.device("cpu")))


def prepare_context(cfg: StudyConfig, slot: Slot | None = None) -> WorkerContext:
    """Load the dataset once, place it on the slot's device, split it (seeded by the study seed)."""
    slot = slot or Slot(index=0, gpu=0)
    device = resolve_device(cfg.device, slot.gpu)
    pool = _load_pool(cfg)
    data = DeviceData.place(pool, device, memory_fraction=cfg.data.memory_fraction)
    folds = _split(cfg, pool.y)
    _preflight_model(cfg, data)
    return WorkerContext(cfg=cfg, data=data, labels=pool.y, folds=folds, device=device,
                         device_name=describe_device(device), worker=f"{socket.gethostname()}:{os.getpid()}",
                         slot=slot.index)


@dataclass
class WorkerOutcome:
    """What one worker did in this run."""

    trials: list[optuna.trial.FrozenTrial] = field(default_factory=list)
    interrupted: bool = False
    timed_out: bool = False


Objective = Callable[[optuna.Trial], float]
CLAIMED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


def _fail_stale_trials(study: optuna.Study) -> None:
    """Fail (and so requeue) running trials whose worker stopped sending heartbeats."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        fail_stale_trials(study)


@contextmanager
def _held_interrupts() -> Iterator[list[int]]:
    """Hold SIGINT and SIGTERM back (main thread only), listing the ones that arrive meanwhile."""
    held: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield held
        return
    previous = {sig: handler for sig in (signal.SIGINT, signal.SIGTERM) if (handler := signal.getsignal(sig)) is not None}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: held.append(signum))
    try:
        yield held
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _ask(study: optuna.Study, max_retries: int) -> optuna.Trial:
    """study.ask() with heartbeats on; this loop runs the heartbeat thread itself, as Study.optimize does.

    The trial is RUNNING in storage before ask returns (samplers then fit their models, which can take
    seconds), and it has no heartbeat yet, so nothing would ever fail it: Ctrl-C or SIGTERM is held
    until the trial is in hand, then the trial is handed back (failed, queued again) and the stop goes on.
    """
    with _held_interrupts() as held, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed", category=UserWarning)
        trial = study.ask()
    if held:
        _interrupted(study, trial, max_retries)
        signal.raise_signal(held[0])  # delivered to the usual handler now: KeyboardInterrupt
    return trial


def _signature(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _fail(study: optuna.Study, trial: optuna.Trial, reason: str, error: str | None = None) -> optuna.trial.FrozenTrial:
    trial.set_user_attr("stop_reason", reason)
    if error is not None:
        trial.set_user_attr("error", error[-8000:])
    return study.tell(trial, state=TrialState.FAIL)


def _is_surplus(study: optuna.Study, trial: optuna.Trial, n_trials: int) -> bool:
    """True when `n_trials` lower-numbered trials already finished, run or wait: this one would overshoot."""
    if trial.number < n_trials:  # fewer than n trials of any state lie below it: no query needed
        return False
    claimed = study.get_trials(deepcopy=False, states=CLAIMED)
    return sum(1 for t in claimed if t.number < trial.number) >= n_trials


def _interrupted(study: optuna.Study, trial: optuna.Trial, max_retries: int) -> None:
    """Fail a trial cut short by Ctrl-C or SIGTERM and queue it again (to resume), unless that happened already."""
    if study._storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
        requeue(study, _fail(study, trial, "interrupted"), max_retries)


def _run_one(study: optuna.Study, trial: optuna.Trial, objective: Objective,
             failures: list[str]) -> optuna.trial.FrozenTrial:
    """Run the objective under a heartbeat and tell the storage how it ended."""
    with get_heartbeat_thread(trial._trial_id, study._storage):
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            failures.clear()
            return study.tell(trial, state=TrialState.PRUNED)
        except Exception as exc:  # user code may raise anything; the trial fails, the study goes on
            reason = "oom" if isinstance(exc, torch.cuda.OutOfMemoryError) else "error"
            log.error("trial %d failed (%s): %s", trial.number, reason, _signature(exc))
            failures.append(_signature(exc))
            return _fail(study, trial, reason, traceback.format_exc())
    failures.clear()
    return study.tell(trial, value)


def run_worker(study: optuna.Study, objective: Objective, n_trials: int, timeout: float | None = None,
               on_trial: Callable[[optuna.trial.FrozenTrial], None] | None = None, max_retries: int = 3,
               poll_s: float = 1.0, stale_check_s: float = 10.0) -> WorkerOutcome:
    """Run trials until exactly `n_trials` finished trials exist study-wide (across all workers).

    Stops starting trials after `timeout` seconds; Ctrl-C marks the trial in flight failed and
    queues it again (it resumes from its checkpoint on the next run). Stale trials (no heartbeat)
    are looked for every `stale_check_s` seconds: nothing can go stale faster than the heartbeat.
    """
    outcome = WorkerOutcome()
    deadline = None if timeout is None else time.monotonic() + timeout
    failures: list[str] = []
    waiting_logged = False
    next_stale_check = 0.0
    try:
        while True:
            if time.monotonic() >= next_stale_check:
                _fail_stale_trials(study)
                next_stale_check = time.monotonic() + stale_check_s
            claimed = study.get_trials(deepcopy=False, states=CLAIMED)  # one read decides both checks below
            waiting = sum(1 for t in claimed if t.state == TrialState.WAITING)
            running = sum(1 for t in claimed if t.state == TrialState.RUNNING)
            if len(claimed) - waiting - running >= n_trials:
                break
            if deadline is not None and time.monotonic() >= deadline:
                outcome.timed_out = True
                break
            if waiting == 0 and len(claimed) - waiting >= n_trials:
                if not waiting_logged:
                    log.info("the last trials are running elsewhere; waiting in case one must be retried")
                    waiting_logged = True
                time.sleep(poll_s)
                continue
            trial = _ask(study, max_retries)
            try:
                if _is_surplus(study, trial, n_trials):
                    _fail(study, trial, "surplus")  # another worker took the last place between count and ask
                    continue
                frozen = _run_one(study, trial, objective, failures)
            except KeyboardInterrupt:  # wherever it lands between ask and tell: never leave the trial RUNNING
                _interrupted(study, trial, max_retries)
                raise
            if frozen.state == TrialState.FAIL:  # after the except block, so the traceback no longer pins memory
                release_memory(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
            outcome.trials.append(frozen)
            if on_trial is not None:
                on_trial(frozen)
            if len(failures) >= FAIL_FAST_AFTER and len(set(failures)) == 1:
                raise TrialFailureError(f"the last {len(failures)} trials all failed with {failures[0]}; fix the "
                                        f"cause (see `hpsearch status --failed`) and run again")
    except KeyboardInterrupt:
        outcome.interrupted = True
    return outcome
