"""What a cluster job must be able to do before it is submitted: shared storage, GPUs the plan uses, time.

Every refusal is a ConfigError or StorageError (one line, exit 2), raised before a script is
written or a job submitted.
"""

from __future__ import annotations

import re
import statistics

from sqlalchemy.engine import make_url

from hpsearch.config import STORAGE_ENV, StudyConfig
from hpsearch.errors import ConfigError
from hpsearch import records
from hpsearch.study import find_study, guard_storage, redact_url

PG_EXAMPLE = f"export {STORAGE_ENV}='postgresql+psycopg://user:PASSWORD@db-host:5432/hpsearch'"
_SLURM_TIME = re.compile(r"^(?:(?P<d>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?$")


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def check_shared_storage(cfg: StudyConfig, machines: int, what: str) -> None:
    """A study that several machines (or pods) share needs a database server, not an SQLite file."""
    if machines > 1 and is_sqlite(cfg.storage_url):
        raise ConfigError(f"{cfg.source}: storage: '{redact_url(cfg.storage_url)}' is an SQLite file, which {machines} "
                          f"{what} cannot share; use PostgreSQL: {PG_EXAMPLE} (then rerun this command)")


def workers_per_gpu(cfg: StudyConfig) -> int:
    """Workers one GPU runs: the study's trials_per_gpu, or 1 where it is auto (no probe runs inside a job)."""
    tpg = cfg.workers.trials_per_gpu
    return tpg if isinstance(tpg, int) else 1


def check_gpu_plan(cfg: StudyConfig, gpus: int, flag: str) -> int:
    """The number of `hpsearch worker`s one node (pod) starts for `gpus` GPUs; refuses GPUs the plan leaves idle."""
    if gpus == 0:
        if cfg.device == "cuda":
            raise ConfigError(f"{cfg.source}: device: cuda needs GPUs, and {flag} is 0; pass {flag} 1 or more, "
                              f"or set device: cpu")
        return 1
    if cfg.device == "cpu":
        raise ConfigError(f"{cfg.source}: device: cpu would leave the {gpus} GPUs of {flag} {gpus} idle; "
                          f"drop {flag} or set device: auto")
    listed = cfg.workers.gpus
    if isinstance(listed, list) and len(listed) < gpus:
        raise ConfigError(f"{cfg.source}: workers.gpus: the study uses {len(listed)} GPU(s) {listed}, fewer than "
                          f"{flag} {gpus}; pass {flag} {len(listed)} or set workers.gpus: all")
    workers = gpus * workers_per_gpu(cfg)
    if cfg.workers.n is not None and cfg.workers.n < gpus:
        raise ConfigError(f"{cfg.source}: workers.n: {cfg.workers.n} worker(s) cannot use the {gpus} GPUs of {flag} "
                          f"{gpus}; pass {flag} {cfg.workers.n} or raise workers.n")
    return min(workers, cfg.workers.n) if cfg.workers.n is not None else workers


def slurm_seconds(text: str) -> int:
    """Seconds of a Slurm time limit: M, M:S, H:M:S, D-H, D-H:M or D-H:M:S; ConfigError otherwise."""
    match = _SLURM_TIME.match(text.strip())
    if not match:
        raise ConfigError(f"command line: --time {text!r} is not a Slurm time; use minutes, HH:MM:SS or D-HH:MM:SS")
    d, a, b, c = (int(match[k]) if match[k] is not None else None for k in ("d", "a", "b", "c"))
    if d is not None:  # D-H, D-H:M, D-H:M:S
        return d * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    if c is not None:
        return a * 3600 + b * 60 + c
    if b is not None:
        return a * 60 + b
    return a * 60


def measured_epoch_s(cfg: StudyConfig) -> float | None:
    """The median epoch time of the study's stored trials, None before any; opening the study checks the storage.

    An unreachable or damaged storage is a StorageError (exit 2) here, before anything is submitted.
    """
    with guard_storage(cfg):
        study = find_study(cfg, create=False)
        if study is None:
            return None
        times = [t for trial in study.get_trials(deepcopy=False) for t in records.epoch_times(trial)]
    return statistics.median(times) if times else None


def check_time_limit(cfg: StudyConfig, limit_s: int, warning_s: int, epoch_s: float | None, text: str) -> None:
    """A limit must leave time for the stop warning and, when measured, for at least one epoch after it."""
    if limit_s <= warning_s:
        raise ConfigError(f"command line: --time {text} is not longer than the {warning_s} s stop warning the job "
                          f"gets before its limit; give it more time")
    if epoch_s is not None and limit_s - warning_s < epoch_s:
        raise ConfigError(f"command line: --time {text} leaves {limit_s - warning_s} s before the stop warning, "
                          f"shorter than one epoch of study '{cfg.name}' ({epoch_s:.0f} s measured); give it more time")
