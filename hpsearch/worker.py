"""A worker: load data once onto its device, then run trials (the ask/tell loop) until the study-wide total is reached.

The checks before the study is touched and the memory probe are in `hpsearch.preflight`; a trial cut
short is handed back through `hpsearch.study.hand_back`. One worker is one process; supervision of
several builds on `run_worker`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import importlib
import logging
import os
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Callable

import optuna
import torch
from optuna.trial import TrialState

from hpsearch import budget, ids, records, signals, trialsets
from hpsearch.config import RUN_ENV, StudyConfig
from hpsearch.data import DeviceData
from hpsearch.errors import CheckpointError, DeviceError, TrialFailureError
from hpsearch.objective import WorkerContext, release_memory, run_trial
from hpsearch.preflight import check_image_keys, check_model, load_pool, probe_memory, split_data
from hpsearch.slots import Slot
from hpsearch.status import WorkerStatus, process_start_time, read_status
from hpsearch.study import (STORAGE_EXCEPTIONS, Heartbeat, check_storage_file, claim_output_dir, fail_stale_trials,
                            finished_count, guard_storage, hand_back, is_storage_exception, open_study, settings_id,
                            state_counts, storage_cause)

log = logging.getLogger("hpsearch")
FAIL_FAST_AFTER = 3  # the same error this many trials in a row stops the worker


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


def prepare_context(cfg: StudyConfig, slot: Slot | None = None, status: WorkerStatus | None = None) -> WorkerContext:
    """Load the dataset once, place it on the slot's device, split it (seeded by the study seed)."""
    slot = slot or Slot(index=0, gpu=0)
    status = status or WorkerStatus(None)
    with signals.interruptible():  # nothing to hand back yet: a stop signal ends the loading at once
        status.phase("loading data")
        pool = load_pool(cfg)
        check_image_keys(cfg, pool)
        status.phase("placing data")
        device = resolve_device(cfg.device, slot.gpu)
        data = DeviceData.place(pool, device, memory_fraction=cfg.data.memory_fraction)
        folds = split_data(cfg, pool.strata)
        status.phase("building the model")
        check_model(cfg, data)
        # torch.optim imports torch._dynamo on first use (~2 s): here rather than inside the first trial.
        # (A thread beside the data loading measured slower: both imports and loading hold the GIL.)
        status.phase("importing torch._dynamo")
        importlib.import_module("torch._dynamo")
    worker = ids.worker_id()
    run = os.environ.get(RUN_ENV) or ids.run_id()  # a lone worker is a run of its own
    return WorkerContext(cfg=cfg, data=data, labels=pool.y, folds=folds, device=device,
                         device_name=describe_device(device), worker=worker, slot=slot.index,
                         extra_attrs={records.SETTINGS: settings_id(cfg), records.RUN: run})


@dataclass
class WorkerOutcome:
    """What one worker did in this run."""

    trials: list[optuna.trial.FrozenTrial] = field(default_factory=list)
    interrupted: bool = False
    timed_out: bool = False


Objective = Callable[[optuna.Trial], float]
CLAIMED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
WAIT_REPORT_S = 30.0  # while waiting on other workers' last trials, say so this often


@dataclass
class FailureStreak:
    """Trials that failed in the objective (errors, OOM) since the last one that finished.

    The worker stops when the same error ended `FAIL_FAST_AFTER` trials in a row, or when `limit`
    trials in a row failed whatever the errors: failed trials never count toward n_trials, so a
    study whose every trial fails would otherwise run forever.
    """

    limit: int
    errors: list[str] = field(default_factory=list)

    def add(self, error: str) -> None:
        self.errors.append(error)

    def clear(self) -> None:
        self.errors.clear()

    def verdict(self) -> str | None:
        """Why the worker must stop, or None."""
        last = self.errors[-FAIL_FAST_AFTER:]
        if len(last) == FAIL_FAST_AFTER and len(set(last)) == 1:
            return f"the last {FAIL_FAST_AFTER} trials all failed with {last[0]}"
        if len(self.errors) >= self.limit:
            return f"the last {len(self.errors)} trials all failed, the first with {self.errors[0]}"
        return None


def _signature(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _fail(study: optuna.Study, trial: optuna.Trial, reason: str, error: str | None = None) -> optuna.trial.FrozenTrial:
    trial.set_user_attr(records.STOP_REASON, reason)
    if error is not None:
        trial.set_user_attr(records.ERROR, error[-8000:])
    return study.tell(trial, state=TrialState.FAIL)


def _is_surplus(study: optuna.Study, trial: optuna.Trial, n_trials: int) -> bool:
    """True when `n_trials` lower-numbered trials already finished, run or wait: this one would overshoot."""
    if trial.number < n_trials:  # fewer than n trials of any state lie below it: no query needed
        return False
    counts = state_counts(study, below=trial.number)
    return sum(counts.get(state, 0) for state in CLAIMED) >= n_trials


def _hand_back_quietly(study: optuna.Study, trial: optuna.Trial, max_retries: int, reason: str) -> None:
    """:func:`hand_back` while the storage or the disk is failing: where the storage answers the trial is freed.

    Where it does not, that is logged; the caller reports the failure itself.
    """
    try:
        hand_back(study, trial, reason, max_retries)
    except Exception as exc:  # noqa: BLE001 - the storage error itself is what the caller reports
        log.warning("trial %d could not be marked failed (%s); a later run fails it and queues it again once "
                    "its heartbeat is older than the grace period", trial.number, type(storage_cause(exc)).__name__)


def _run_one(study: optuna.Study, trial: optuna.Trial, objective: Objective,
             streak: FailureStreak) -> optuna.trial.FrozenTrial:
    """Run the objective and tell the storage how it ended; storage errors propagate."""
    try:
        value = objective(trial)
    except optuna.TrialPruned:
        streak.clear()
        return study.tell(trial, state=TrialState.PRUNED)
    except Exception as exc:  # user code may raise anything; the trial fails, the study goes on
        if is_storage_exception(exc) or isinstance(exc, CheckpointError):  # no fault of the trial: the run stops
            raise
        reason = records.OOM if isinstance(exc, torch.cuda.OutOfMemoryError) else records.ERRORED
        log.debug("trial %d failed (%s): %s", trial.number, reason, _signature(exc))  # on_trial prints its line
        streak.add(_signature(exc))
        return _fail(study, trial, reason, traceback.format_exc())
    streak.clear()
    return study.tell(trial, value)


def _claimed(study: optuna.Study) -> dict[TrialState, int]:
    """How many trials hold or held a place in the total, by state: finished, running, or waiting to run."""
    counts = state_counts(study)
    return {state: counts.get(state, 0) for state in CLAIMED}


def _ask(study: optuna.Study) -> optuna.Trial:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed", category=UserWarning)
        return study.ask()


def _trial(study: optuna.Study, objective: Objective, n_trials: int, max_retries: int, streak: FailureStreak,
           on_trial: Callable[..., None] | None = None,
           epoch_budget: budget.Budget | None = None) -> optuna.trial.FrozenTrial | None:
    """Ask for one trial and run it under a heartbeat; None when it was surplus.

    From `ask` to `tell` the trial is RUNNING in storage: whatever stops the worker in between
    (stop signal, storage failure) hands it back, failed and queued again, before going on; a
    stop signal's hand-back goes to `on_trial` with the trial that will resume it.
    """
    trial = _ask(study)
    try:
        with Heartbeat(study, trial):
            signals.check()  # a stop that came while asking: the trial goes back untouched
            if _is_surplus(study, trial, n_trials):
                _fail(study, trial, records.SURPLUS)  # another worker took the last place between count and ask
                return None
            if epoch_budget is not None and not budget.reserve(study, trial, epoch_budget.first_rung, epoch_budget):
                _fail(study, trial, records.BUDGET)  # the rest of the epoch budget cannot pay its first rung
                return None
            return _run_one(study, trial, objective, streak)
    except KeyboardInterrupt:
        failed = hand_back(study, trial, records.INTERRUPTED, max_retries)
        if failed is not None and on_trial is not None:
            on_trial(failed, trialsets.retried_as(study.get_trials(deepcopy=False), failed.number))
        raise
    except STORAGE_EXCEPTIONS:
        _hand_back_quietly(study, trial, max_retries, records.STORAGE_FAILED)
        raise
    except CheckpointError:
        _hand_back_quietly(study, trial, max_retries, records.CHECKPOINT_FAILED)
        raise


class _WaitReport:
    """Says, now and then, which trials elsewhere the worker waits for, so a wait never looks like a hang."""

    def __init__(self, grace_period: float) -> None:
        self.grace_period = grace_period
        self.next = 0.0

    def note(self, study: optuna.Study) -> None:
        if time.monotonic() < self.next:
            return
        self.next = time.monotonic() + WAIT_REPORT_S
        running = [f"#{t.number} ({records.worker(t) or 'worker unknown'})"
                   for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
        log.info("waiting for the last trials running elsewhere: %s; a trial whose worker is gone is failed "
                 "%g s after its last heartbeat and retried here", ", ".join(running) or "none", self.grace_period)


def run_worker(study: optuna.Study, objective: Objective, n_trials: int, timeout: float | None = None,
               on_trial: Callable[..., None] | None = None, max_retries: int = 3,
               poll_s: float = 1.0, stale_check_s: float = 10.0, grace_period: float = 40.0,
               max_failures: int = 5, epoch_budget: budget.Budget | None = None) -> WorkerOutcome:
    """Run trials until exactly `n_trials` finished trials exist study-wide (across all workers), or until
    the rest of `epoch_budget` cannot pay a trial's first rung (see hpsearch/budget.py).

    Stops starting trials after `timeout` seconds. SIGINT and SIGTERM are honoured at the next safe
    point (between batches, between trials, while waiting): the trial in flight is marked failed and
    queued again (it resumes from its checkpoint on the next run). Stale trials are looked for every
    `stale_check_s` seconds: nothing can go stale faster than the heartbeat. Too many failures in a
    row raise TrialFailureError (see :class:`FailureStreak`); storage errors propagate.
    """
    outcome = WorkerOutcome()
    deadline = None if timeout is None else time.monotonic() + timeout
    streak = FailureStreak(max_failures)
    report = _WaitReport(grace_period)
    next_stale_check = 0.0
    with signals.installed():
        try:
            while True:
                signals.check()
                if time.monotonic() >= next_stale_check:
                    fail_stale_trials(study, grace_period, max_retries)
                    next_stale_check = time.monotonic() + stale_check_s
                claimed = _claimed(study)  # one count query decides both checks below
                waiting, running = claimed[TrialState.WAITING], claimed[TrialState.RUNNING]
                if sum(claimed.values()) - waiting - running >= n_trials:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    outcome.timed_out = True
                    break
                if epoch_budget is not None and not budget.study_can_start(study, epoch_budget):
                    break
                if waiting == 0 and sum(claimed.values()) >= n_trials:
                    report.note(study)
                    signals.sleep(poll_s)
                    continue
                frozen = _trial(study, objective, n_trials, max_retries, streak, on_trial, epoch_budget)
                check_storage_file(study)  # before the trial is reported as saved
                if frozen is None:
                    continue
                if frozen.state == TrialState.FAIL:  # outside the except block: the traceback no longer pins memory
                    release_memory(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
                outcome.trials.append(frozen)
                if on_trial is not None:
                    on_trial(frozen)
                verdict = streak.verdict()
                if verdict is not None:
                    raise TrialFailureError(f"{verdict}; the study stopped instead of failing on: fix the cause "
                                            f"(`hpsearch status --failed` lists the errors) and run again")
        except KeyboardInterrupt:
            outcome.interrupted = True
    return outcome


def with_thread_plan(objective: Objective, status: WorkerStatus) -> Objective:
    """The objective, first adopting the CPU thread count the supervisor planned (plan.json beside the status).

    Workers started before the supervisor knew how many would share the machine (the memory
    probe decides) start with more threads than their share; they take their share at the next trial.
    """
    plan = None if status.path is None else status.path.with_name("plan.json")

    def run(trial: optuna.Trial) -> float:
        threads = (read_status(plan) or {}).get("threads") if plan is not None else None
        if isinstance(threads, int) and threads >= 1 and threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        return objective(trial)

    return run


# --------------------------------------------------------------------------- one worker, assembled

def open_and_enqueue(cfg: StudyConfig, sampler_seed: int | None = None) -> optuna.Study:
    """Open (or create) the study and queue the file's `enqueue:` points once."""
    study = open_study(cfg, sampler_seed=sampler_seed)
    for point in cfg.enqueue:
        study.enqueue_trial(point, skip_if_exists=True)
    return study


def work_in_this_process(cfg: StudyConfig, slot: Slot, on_trial: Callable[..., None],
                         sampler_seed: int | None = None, status: WorkerStatus | None = None,
                         probe: bool = False) -> tuple[WorkerOutcome, optuna.Study]:
    """One worker: load the data once, open the study, run trials to the study-wide total.

    A storage found broken while opening is bad input (exit 2, nothing written); one that fails
    during the run is a StorageFailure (exit 1; the trial in flight is handed back where it can be).
    Without `status` (a run of one worker in this process), its phases go to runs/<name>/logs/worker-0.json
    once the study is open.
    """
    status = status or WorkerStatus(ids.status_path(cfg.out_dir, 0), process_start_time(),
                                    wait_for_folder=True)
    ctx = prepare_context(cfg, slot, status)
    if probe:
        status.phase("probing memory")
        found = probe_memory(ctx)
        status.note(probe=None if found is None else dataclasses.asdict(found))
    status.phase("opening the study")
    with guard_storage(cfg):
        study = open_and_enqueue(cfg, sampler_seed)
    claim_output_dir(cfg, study)
    status.materialise()
    status.phase("trials")
    with guard_storage(cfg, running=True), checkpoints_guarded(cfg):
        log.info("study '%s', worker %s on %s: %d of %d trials finished", cfg.name, slot.label, ctx.device_name,
                 finished_count(study), cfg.n_trials)
        workers = cfg.workers
        outcome = run_worker(study, with_thread_plan(functools.partial(run_trial, ctx=ctx), status), cfg.n_trials,
                             cfg.timeout, on_trial=on_trial, max_retries=workers.max_retries,
                             stale_check_s=workers.heartbeat_interval, grace_period=workers.grace_period,
                             max_failures=workers.max_consecutive_failures, epoch_budget=budget.of(cfg))
        check_storage_file(study, thorough=True)  # nothing is reported as saved that the file does not hold
    status.phase("done")
    return outcome, study


@contextlib.contextmanager
def checkpoints_guarded(cfg: StudyConfig) -> Iterator[None]:
    """A checkpoint the file system refused ends the run with one line naming output_dir (exit 1)."""
    try:
        yield
    except CheckpointError as exc:
        cause = exc.__cause__
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
        full = isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT)
        what, fix = ("the disk is full", "free space") if full else ("the file system refused it", "fix that")
        raise CheckpointError(f"{cfg.source}: output_dir: '{cfg.out_dir}' cannot be written: {what} ({exc.path}: "
                              f"{reason}); {fix}, then rerun to continue", exc.path) from None
