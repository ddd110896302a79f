"""Several worker processes on one machine: start one per slot, replace the dead, stop them all cleanly.

Workers are plain `hpsearch worker` processes (the same command another machine runs to join), each
pinned to its GPU by `CUDA_VISIBLE_DEVICES`. They coordinate only through the study's storage.
Each one is tied to the supervisor (Linux): if the supervisor dies, even by SIGKILL, its workers get
SIGTERM and stop as on Ctrl-C.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable

import optuna
from optuna.trial import TrialState

from hpsearch import ids, records, signals
from hpsearch.config import STORAGE_ENV, StudyConfig
from hpsearch.errors import (HpsearchError, StorageError, StorageFailure, SupervisorGoneError, TrialFailureError,
                             WorkerCrashError)
from hpsearch.monitor import Monitor
from hpsearch.slots import MemoryProbe, Slot, auto_trials_per_gpu, enough_slots
from hpsearch.status import read_status
from hpsearch.study import (STORAGE_EXCEPTIONS, check_storage_file, find_study, finished_count, guard_storage,
                            hand_back, open_study)
from hpsearch.threads import planned_threads, usable_cores, worker_env

log = logging.getLogger("hpsearch")
STOP_GRACE_S = 8.0  # SIGINT, then SIGKILL after this: everything is down within 10 s
POLL_S = 0.5
STALL_S = 30.0  # a worker not in a trial this long after its start gets its log shown
STALL_LINES = 8
EXIT_FATAL = (1, 2)  # a worker that exits with these hit a problem every worker would hit
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass
class _Process:
    slot: Slot
    popen: subprocess.Popen[bytes]
    log_file: IO[bytes]
    restarts: int = 0
    started: float = field(default_factory=time.monotonic)
    probing: bool = False

    @property
    def worker_id(self) -> str:
        return ids.worker_id(self.popen.pid)


@dataclass
class Supervisor:
    """Runs `hpsearch worker` once per slot until the study has its `n_trials` finished trials."""

    cfg: StudyConfig
    study: optuna.Study | None  # None until a worker has created it
    slots: list[Slot]
    worker_argv: list[str]
    auto_scale: bool = False  # the first worker on each GPU probes memory; more are added from what it measured
    procs: dict[int, _Process] = field(default_factory=dict)
    scaled: set[int] = field(default_factory=set)  # GPUs whose worker count is settled
    stalls_reported: set[int] = field(default_factory=set)
    announced: bool = False

    @property
    def threads(self) -> int:
        """CPU threads per worker: the machine's cores shared by every planned worker, GPU ones too."""
        return planned_threads(usable_cores(), len(self.slots), os.environ)

    @property
    def log_dir(self) -> Path:
        return ids.log_dir(self.cfg.out_dir)

    def status_path(self, slot: Slot) -> Path:
        return ids.status_path(self.cfg.out_dir, slot.index)

    def _spawn(self, slot: Slot, restarts: int = 0, probe: bool = False) -> _Process:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_file = open(ids.worker_log_path(self.cfg.out_dir, slot.index), "ab")  # noqa: SIM115 (closed in _close)
        # The storage URL travels in the environment: on the command line, `ps` would show its password.
        env = {**os.environ, **slot.env, "PYTHONUNBUFFERED": "1", "HPSEARCH_SPAWNED_AT": repr(time.time()),
               STORAGE_ENV: self.cfg.storage_url}
        # Workers share the cores instead of oversubscribing them, and idle OpenMP threads sleep instead of spinning.
        env.update(worker_env(usable_cores(), len(self.slots), os.environ))
        self.status_path(slot).unlink(missing_ok=True)
        argv = [sys.executable, "-m", "hpsearch", "worker", *self.worker_argv, "--slot", str(slot.index),
                "--supervisor-pid", str(os.getpid()), "--status-file", str(self.status_path(slot))]
        if probe:
            argv.append("--probe-memory")
        # Own session: a terminal's Ctrl-C reaches only the supervisor, which stops workers in order.
        # Spawned from the main thread only: the kernel's parent-death signal fires when the forking thread exits.
        popen = subprocess.Popen(argv, env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
        log.debug("worker %s started (pid %d, log %s)", slot.label, popen.pid, log_file.name)
        return _Process(slot, popen, log_file, restarts, probing=probe)

    def _announce(self, statuses: dict[int, dict[str, Any]]) -> None:
        """One line once every worker has started its trials (a start that fails on bad input prints only the error)."""
        if self.announced or not statuses or len(statuses) < len(self.procs):
            return
        if all(status.get("phase") in ("trials", "done") for status in statuses.values()):
            self.announced = True
            pids = ", ".join(f"{p.slot.label} {p.popen.pid}" for p in self.procs.values())
            log.info("%d workers running trials (pids: %s; logs in %s)", len(self.procs), pids, self.log_dir)

    def _scale(self) -> None:
        """Once the first worker on a GPU has measured a trial's memory, start the others that fit there."""
        for proc in list(self.procs.values()):
            gpu = proc.slot.gpu
            if not proc.probing or gpu is None or gpu in self.scaled:
                continue
            status = read_status(self.status_path(proc.slot)) or {}
            if "probe" not in status and proc.popen.poll() is None:
                continue  # still measuring
            self.scaled.add(gpu)
            found = status.get("probe")
            gpus = len({slot.gpu for slot in self.slots})
            count, why = auto_trials_per_gpu(MemoryProbe(**found) if found else None, usable_cores(), gpus)
            room = self.cfg.n_trials - self._finished() - len(self.slots)
            extra = max(0, min(count - 1, room))
            log.info("GPU %d: trials_per_gpu auto chose %s%s", gpu, why,
                     f"; starting {extra} more" if extra < count - 1 else "")
            for _ in range(extra):
                slot = Slot(max(s.index for s in self.slots) + 1, gpu)
                self.slots.append(slot)
                self.procs[slot.index] = self._spawn(slot)
            self._write_plan()

    def _write_plan(self) -> None:
        """Tell the running workers their share of the cores now that the worker count is known."""
        plan = self.log_dir / "plan.json"
        tmp = plan.with_name(".plan.json.tmp")
        tmp.write_text(json.dumps({"threads": self.threads, "workers": len(self.slots)}))
        os.replace(tmp, plan)

    def _report_stalls(self) -> None:
        """Print the last log lines of a worker that has not reached a trial STALL_S seconds after it started."""
        for proc in self.procs.values():
            if proc.slot.index in self.stalls_reported or time.monotonic() - proc.started < STALL_S:
                continue
            status = read_status(self.status_path(proc.slot)) or {}
            phase = status.get("phase", "starting")
            if phase in ("trials", "done") or proc.popen.poll() is not None:
                continue
            self.stalls_reported.add(proc.slot.index)
            since = time.time() - float(status.get("since", time.time()))
            tail = Path(proc.log_file.name).read_text(errors="replace").splitlines()[-STALL_LINES:]
            log.warning("worker %s has not reached a trial %.0f s after it started (phase: %s, for %.0f s); "
                        "the last lines of %s:\n%s", proc.slot.label, time.monotonic() - proc.started, phase, since,
                        proc.log_file.name, "\n".join(f"  | {line}" for line in tail) or "  | (nothing yet)")

    def statuses(self) -> dict[int, dict[str, Any]]:
        """Each worker's status file, by slot index (those written so far)."""
        found = {}
        for slot in self.slots:
            status = read_status(self.status_path(slot))
            if status is not None:
                found[slot.index] = status
        return found

    def _finished(self) -> int:
        return 0 if self.study is None else finished_count(self.study)

    def _attach_study(self, statuses: dict[int, dict[str, Any]], monitor: Monitor) -> None:
        """Open the study once a worker has created it (it reached its trials)."""
        if self.study is None and any(s.get("phase") in ("trials", "done") for s in statuses.values()):
            self.study = self._open(open_study)  # it exists: nothing is created
        if self.study is not None and monitor.study is None:
            monitor.attach(self.study)

    def _open(self, opener: Callable[[StudyConfig], optuna.Study | None]) -> optuna.Study | None:
        """Open the study in mid-run: a storage that fails now failed during the run (exit 1, not bad input)."""
        try:
            return opener(self.cfg)
        except StorageError as exc:
            raise StorageFailure(str(exc)) from exc

    def _release_trials_of(self, proc: _Process) -> None:
        """Fail a dead worker's running trial at once and queue it to resume (no wait for the heartbeat grace)."""
        if self.study is None:  # a worker can start a trial and die between two polls, before the study is opened
            self.study = self._open(find_study)
        if self.study is None:
            return
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if records.worker(trial) == proc.worker_id:  # None back: it finished after all, or the stale check won
                hand_back(self.study, trial, records.WORKER_DIED, self.cfg.workers.max_retries)

    def _last_line(self, proc: _Process) -> str:
        path = Path(proc.log_file.name)
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
        return lines[-1] if lines else "(no output)"

    def _check(self, proc: _Process) -> bool:
        """Handle one worker's exit; True while the worker (or its replacement) is still wanted."""
        code = proc.popen.poll()
        if code is None:
            return True
        proc.log_file.close()
        if code == 0:
            return False
        if code in EXIT_FATAL:
            line = self._last_line(proc).removeprefix("hpsearch: error: ")
            raise (TrialFailureError if code == 1 else HpsearchError)(f"worker {proc.slot.label}: {line}")
        self._release_trials_of(proc)
        if self._finished() >= self.cfg.n_trials:
            return False
        if proc.restarts >= self.cfg.workers.max_restarts:
            raise WorkerCrashError(f"worker {proc.slot.label} died {proc.restarts + 1} times (last exit {code}); "
                                   f"see {proc.log_file.name}")
        self.procs[proc.slot.index] = self._spawn(proc.slot, proc.restarts + 1)
        log.warning("worker %s (pid %d) died (exit %d); started a replacement (pid %d)", proc.slot.label,
                    proc.popen.pid, code, self.procs[proc.slot.index].popen.pid)
        return True

    def stop(self) -> None:
        """SIGINT every worker (each marks its trial failed and resumable), SIGKILL the ones still up."""
        live = [p for p in self.procs.values() if p.popen.poll() is None]
        for proc in live:
            proc.popen.send_signal(signal.SIGINT)
        deadline = time.monotonic() + STOP_GRACE_S
        killed = []
        for proc in live:
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
                killed.append(proc)
        for proc in self.procs.values():
            proc.log_file.close()
        for proc in killed:
            try:
                self._release_trials_of(proc)
            except (*STORAGE_EXCEPTIONS, StorageFailure) as exc:  # the storage failed: the next run's stale check frees them
                log.warning("could not free the trial of worker %s: %s", proc.slot.label, type(exc).__name__)

    def run(self, monitor: Monitor) -> None:
        """Start every slot, supervise until all workers are done; raises KeyboardInterrupt on Ctrl-C."""
        for slot in self.slots:
            self.procs[slot.index] = self._spawn(slot, probe=self.auto_scale and slot.gpu is not None)
        self._write_plan()
        try:
            while True:
                signals.check()
                wanted = [self._check(proc) for proc in list(self.procs.values())]
                if self.auto_scale:
                    self._scale()
                self._report_stalls()
                statuses = self.statuses()
                self._attach_study(statuses, monitor)
                self._announce(statuses)
                monitor.update(statuses)
                if not any(wanted):
                    break
                signals.sleep(POLL_S)
        except BaseException:
            self.stop()
            monitor.update(self.statuses())
            raise
        finally:
            monitor.close()


@dataclass
class SupervisedOutcome:
    """How a supervised run ended (the CLI turns it into an exit code)."""

    interrupted: bool = False


def supervise(cfg: StudyConfig, slots: list[Slot], auto_scale: bool,
              argv: list[str]) -> tuple[SupervisedOutcome, optuna.Study | None]:
    """Run the study with one worker process per slot; the study (None if no worker created it).

    The workers load the data, check the model and create the study themselves: the supervisor
    only reads a study that exists already, so bad input still ends with nothing written.
    """
    with guard_storage(cfg):
        study = find_study(cfg)
    with guard_storage(cfg, running=True):
        slots = enough_slots(slots, cfg.n_trials - (finished_count(study) if study is not None else 0))
        supervisor = Supervisor(cfg, study, slots, argv, auto_scale=auto_scale)
        try:
            supervisor.run(Monitor(study, cfg, supervisor.slots))
        except KeyboardInterrupt:
            return SupervisedOutcome(interrupted=True), supervisor.study
        if supervisor.study is not None:
            check_storage_file(supervisor.study, thorough=True)  # the file the workers wrote is still the one opened
    return SupervisedOutcome(), supervisor.study


def worker_argv(study_file: str, args: Any) -> list[str]:
    """The command-line overrides every worker repeats (the study file is re-read by each worker).

    The storage URL is not among them: `Supervisor` passes it in $HPSEARCH_STORAGE.
    """
    argv = [study_file]
    for flag in ("n_trials", "timeout", "epochs", "device", "output_dir", "budget_epochs"):
        value = getattr(args, flag, None)
        if value is not None:
            argv += [f"--{flag.replace('_', '-')}", str(value)]
    if getattr(args, "debug", False):
        argv.append("--debug")
    return argv


def _die_with_parent(signum: int) -> bool:
    """Ask the kernel to send `signum` to this process when its parent dies; False where it cannot (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None)
    args = (ctypes.c_ulong(signum), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    return libc.prctl(PR_SET_PDEATHSIG, *args) == 0


def follow_supervisor(pid: int) -> None:
    """Stop this worker as on SIGTERM when its supervisor `pid` dies; raise if it died already.

    Called first thing in a worker started by `hpsearch run`; a worker started by hand is never tied.
    """
    if not _die_with_parent(signal.SIGTERM):
        log.warning("cannot tie this worker to its supervisor (pid %d) on %s: if the supervisor is killed, "
                    "stop this worker by hand", pid, sys.platform)
    if os.getppid() != pid:  # the supervisor died before the signal was armed: it will never come
        raise SupervisorGoneError(f"the supervisor (pid {pid}) that started this worker is gone; not starting")
