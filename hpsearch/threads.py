"""CPU threads for torch and its OpenMP runtime: how many per worker, and how an idle thread waits.

Standard library only: the command line applies it before anything loads torch, because the
OpenMP runtime (torch's bundled libgomp) reads its environment once, when it is loaded.

Why PASSIVE: by default libgomp's idle threads spin (about 3 ms) after each parallel region
before they sleep. A training step is thousands of tiny regions, so every spare thread spins
almost all the time; beside other busy processes the spinners take the cores the thread doing
the work needs, and the quickstart took 16x its idle time (358.7 s against 22.0 s beside two busy
processes; bench/contention.py, bench/RESULTS.md). Sleeping at once costs nothing measurable idle.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

THREADS_ENV = "OMP_NUM_THREADS"
# MKL in torch's wheels uses the GNU OpenMP layer, so its threads follow the same count and wait policy.
THREAD_COUNT_VARS = (THREADS_ENV, "MKL_NUM_THREADS")
# Either one means the user chose how idle threads wait: theirs is kept.
WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
WAIT_POLICY = "PASSIVE"


def usable_cores() -> int:
    """The cores this process may run on (a `taskset` or container CPU set), not all of the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def threads_per_worker(cores: int, workers: int) -> int:
    """CPU threads for each of `workers` processes sharing `cores` (torch and OpenMP): at least one."""
    return max(1, cores // max(1, workers))


def explicit_threads(environ: Mapping[str, str]) -> int | None:
    """The thread count the user set in $OMP_NUM_THREADS (its first level, as OpenMP reads `4,2`), if valid."""
    first = environ.get(THREADS_ENV, "").split(",")[0].strip()
    return int(first) if first.isdigit() and int(first) >= 1 else None


def planned_threads(cores: int, workers: int, environ: Mapping[str, str]) -> int:
    """Each worker's intra-op threads: the user's $OMP_NUM_THREADS if set, else its share of the cores."""
    return explicit_threads(environ) or threads_per_worker(cores, workers)


def wait_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The wait policy to add: PASSIVE unless the user set $OMP_WAIT_POLICY or $GOMP_SPINCOUNT."""
    return {} if any(name in environ for name in WAIT_VARS) else {"OMP_WAIT_POLICY": WAIT_POLICY}


def worker_env(cores: int, workers: int, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables to add to a worker process's environment: its thread share and the wait policy.

    What the user set wins: an explicit $OMP_NUM_THREADS (or $MKL_NUM_THREADS) is kept as it is.
    """
    added = wait_env(environ)
    if THREADS_ENV not in environ:
        threads = str(threads_per_worker(cores, workers))
        added.update({name: threads for name in THREAD_COUNT_VARS if name not in environ})
    return added


def apply_wait_policy(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set the wait policy in this process's environment; effective only before torch is first imported."""
    environ.update(wait_env(environ))
