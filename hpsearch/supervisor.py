"""Several worker processes on one machine: start one per slot, replace the dead, stop them all cleanly.

Workers are plain `hpsearch worker` processes (the same command another machine runs to join), each
pinned to its GPU by `CUDA_VISIBLE_DEVICES`. They coordinate only through the study's storage.
Each one is tied to the supervisor (Linux): if the supervisor dies, even by SIGKILL, its workers get
SIGTERM and stop as on Ctrl-C.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import optuna
from optuna.trial import TrialState

from hpsearch.config import STORAGE_ENV, StudyConfig
from hpsearch.errors import HpsearchError, SupervisorGoneError, TrialFailureError
from hpsearch.monitor import Monitor
from hpsearch.slots import Slot
from hpsearch.study import finished_count, requeue

log = logging.getLogger("hpsearch")
STOP_GRACE_S = 8.0  # SIGINT, then SIGKILL after this: everything is down within 10 s
POLL_S = 0.5
EXIT_FATAL = (1, 2)  # a worker that exits with these hit a problem every worker would hit
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass
class _Process:
    slot: Slot
    popen: subprocess.Popen[bytes]
    log_file: IO[bytes]
    restarts: int = 0

    @property
    def worker_id(self) -> str:
        return f"{socket.gethostname()}:{self.popen.pid}"


@dataclass
class Supervisor:
    """Runs `hpsearch worker` once per slot until the study has its `n_trials` finished trials."""

    cfg: StudyConfig
    study: optuna.Study
    slots: list[Slot]
    worker_argv: list[str]
    procs: dict[int, _Process] = field(default_factory=dict)

    @property
    def cpu_threads(self) -> int:
        cpu_slots = sum(1 for slot in self.slots if slot.gpu is None)
        return max(1, (os.cpu_count() or 1) // max(1, cpu_slots))

    @property
    def log_dir(self) -> Path:
        return Path(self.cfg.out_dir) / "logs"

    def _spawn(self, slot: Slot, restarts: int = 0) -> _Process:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_file = open(self.log_dir / f"worker-{slot.index}.log", "ab")  # noqa: SIM115 (closed in _close)
        # The storage URL travels in the environment: on the command line, `ps` would show its password.
        env = {**os.environ, **slot.env, "PYTHONUNBUFFERED": "1", STORAGE_ENV: self.cfg.storage_url}
        if slot.gpu is None and "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = str(self.cpu_threads)  # CPU workers share the cores instead of oversubscribing
        argv = [sys.executable, "-m", "hpsearch", "worker", *self.worker_argv, "--slot", str(slot.index),
                "--supervisor-pid", str(os.getpid())]
        # Own session: a terminal's Ctrl-C reaches only the supervisor, which stops workers in order.
        # Spawned from the main thread only: the kernel's parent-death signal fires when the forking thread exits.
        popen = subprocess.Popen(argv, env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
        log.info("worker %s started (pid %d, log %s)", slot.label, popen.pid, log_file.name)
        return _Process(slot, popen, log_file, restarts)

    def _release_trials_of(self, proc: _Process) -> None:
        """Fail a dead worker's running trial at once and queue it to resume (no wait for the heartbeat grace)."""
        storage = self.study._storage
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.user_attrs.get("worker") != proc.worker_id:
                continue
            try:
                storage.set_trial_user_attr(trial._trial_id, "stop_reason", "worker_died")
                if storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                    requeue(self.study, storage.get_trial(trial._trial_id), self.cfg.workers.max_retries)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # the worker finished it after all, or the heartbeat check got there first

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
        if finished_count(self.study) >= self.cfg.n_trials:
            return False
        if proc.restarts >= self.cfg.workers.max_restarts:
            raise HpsearchError(f"worker {proc.slot.label} died {proc.restarts + 1} times (last exit {code}); "
                                f"see {proc.log_file.name}")
        log.warning("worker %s (pid %d) died (exit %d); starting a replacement", proc.slot.label, proc.popen.pid, code)
        self.procs[proc.slot.index] = self._spawn(proc.slot, proc.restarts + 1)
        return True

    def stop(self) -> None:
        """SIGINT every worker (each marks its trial failed and resumable), SIGKILL the ones still up."""
        live = [p for p in self.procs.values() if p.popen.poll() is None]
        for proc in live:
            proc.popen.send_signal(signal.SIGINT)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in live:
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
                self._release_trials_of(proc)
        for proc in self.procs.values():
            proc.log_file.close()

    def run(self, monitor: Monitor) -> None:
        """Start every slot, supervise until all workers are done; raises KeyboardInterrupt on Ctrl-C."""
        for slot in self.slots:
            self.procs[slot.index] = self._spawn(slot)
        try:
            while True:
                wanted = [self._check(proc) for proc in list(self.procs.values())]
                monitor.update()
                if not any(wanted):
                    break
                time.sleep(POLL_S)
        except BaseException:
            self.stop()
            monitor.update()
            raise
        finally:
            monitor.close()


def worker_argv(study_file: str, args: Any) -> list[str]:
    """The command-line overrides every worker repeats (the study file is re-read by each worker).

    The storage URL is not among them: `Supervisor` passes it in $HPSEARCH_STORAGE.
    """
    argv = [study_file]
    for flag in ("n_trials", "timeout", "epochs", "device"):
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
