"""The ids and paths that processes of one study share, defined once: worker ids, run ids, status files, seeds.

A worker id (`host:pid`) is written by the worker, matched by the supervisor and parsed by the study's
checks; a run id names one `hpsearch run` (or lone worker); the status file is where a worker says its
phase and the supervisor reads it; seeds are derived from the study seed the same way everywhere.
Standard library only.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import time
from pathlib import Path

MAX_WORKERS = 1024  # the most workers one run starts (--workers and the file's workers.n)
LOGS = "logs"  # folder under the study's output dir: worker logs, status files, the thread plan


def host_name() -> str:
    """This machine's name, the host part of its workers' ids."""
    return socket.gethostname()


def worker_id(pid: int | None = None) -> str:
    """`host:pid` of a worker process of this machine (this one unless `pid` is given), as recorded with every trial."""
    return f"{host_name()}:{os.getpid() if pid is None else pid}"


def parse_worker_id(worker: object) -> tuple[str, int] | None:
    """(host, pid) of a worker id; None for anything else (an old or foreign record)."""
    if not isinstance(worker, str) or ":" not in worker:
        return None
    host, _, pid = worker.rpartition(":")
    return (host, int(pid)) if pid.isdigit() else None


def run_id() -> str:
    """A new id for one `hpsearch run` (or a lone `hpsearch worker`): `host:pid:start time:random`."""
    return f"{worker_id()}:{int(time.time())}:{secrets.token_hex(3)}"


def log_dir(out_dir: str | Path) -> Path:
    """The study's `logs/` folder under its output dir."""
    return Path(out_dir) / LOGS


def status_path(out_dir: str | Path, slot: int) -> Path:
    """The status file of the worker on `slot` (`logs/worker-N.json`): its phase, read by the supervisor."""
    return log_dir(out_dir) / f"worker-{slot}.json"


def worker_log_path(out_dir: str | Path, slot: int) -> Path:
    """The output of the worker on `slot` started by the supervisor (`logs/worker-N.log`)."""
    return log_dir(out_dir) / f"worker-{slot}.log"


def _seed31(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


def derive_seed(study_seed: int, salt: str) -> int:
    """A sampler seed of its own for one process or run of a study: 31 bits of sha256(study seed, salt).

    Every worker and every rerun draws differently, and the same (study seed, salt) always draws the same.
    """
    return _seed31(f"{study_seed}:sampler:{salt}")


def trial_seed(study_seed: int, trial_number: int) -> int:
    """A per-trial seed derived from the study seed and trial number (stable across runs and machines)."""
    return _seed31(f"{study_seed}:{trial_number}")
