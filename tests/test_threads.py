"""The CPU thread policy: each worker's share of the cores, idle OpenMP threads that sleep, the user's settings kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from conftest import python_env
from hpsearch.threads import (apply_wait_policy, explicit_threads, planned_threads, threads_per_worker, usable_cores,
                              wait_env, worker_env)


def test_threads_are_shared_by_every_worker() -> None:
    assert [threads_per_worker(16, n) for n in (1, 4, 8, 32)] == [16, 4, 2, 1]
    assert threads_per_worker(1, 0) == 1


@pytest.mark.parametrize(("cores", "workers", "environ", "expected"), [
    (2, 1, {}, {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}),
    (16, 4, {}, {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"}),
    (2, 3, {}, {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}),
    # the user's own settings win, each on its own
    (16, 4, {"OMP_NUM_THREADS": "3"}, {"OMP_WAIT_POLICY": "PASSIVE"}),
    (16, 4, {"MKL_NUM_THREADS": "1"}, {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "4"}),
    (16, 4, {"OMP_WAIT_POLICY": "active"}, {"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"}),
    (16, 4, {"GOMP_SPINCOUNT": "300000"}, {"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"}),
    (16, 4, {"OMP_NUM_THREADS": "8", "OMP_WAIT_POLICY": "ACTIVE"}, {}),
])
def test_a_worker_environment_adds_only_what_the_user_left_unset(cores: int, workers: int, environ: dict[str, str],
                                                                 expected: dict[str, str]) -> None:
    assert worker_env(cores, workers, environ) == expected


@pytest.mark.parametrize(("value", "expected"), [("4", 4), ("4,2", 4), (" 3 ", 3), ("0", None), ("", None),
                                                 ("many", None), ("-2", None)])
def test_an_explicit_thread_count_is_read_as_openmp_reads_it(value: str, expected: int | None) -> None:
    assert explicit_threads({"OMP_NUM_THREADS": value}) == expected
    assert planned_threads(16, 4, {"OMP_NUM_THREADS": value}) == (expected or 4)


def test_the_plan_keeps_the_users_thread_count() -> None:
    assert planned_threads(16, 8, {}) == 2
    assert planned_threads(16, 8, {"OMP_NUM_THREADS": "6"}) == 6


def test_the_wait_policy_is_set_only_where_the_user_did_not() -> None:
    environ: dict[str, str] = {}
    apply_wait_policy(environ)
    assert environ == {"OMP_WAIT_POLICY": "PASSIVE"}
    mine = {"OMP_WAIT_POLICY": "ACTIVE"}
    apply_wait_policy(mine)
    assert mine == {"OMP_WAIT_POLICY": "ACTIVE"}
    assert wait_env({"GOMP_SPINCOUNT": "0"}) == {}


def test_usable_cores_follow_the_cpu_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert usable_cores() == 3


def _openmp_settings(text: str) -> dict[str, str]:
    """What libgomp printed for OMP_DISPLAY_ENV=VERBOSE: the values the runtime actually uses.

    Its OMP_WAIT_POLICY line reads PASSIVE for the default too; GOMP_SPINCOUNT tells them apart (0 when passive).
    """
    settings = {}
    for line in text.splitlines():
        name, sep, value = line.strip().partition(" = ")
        if sep and name.startswith(("OMP_", "GOMP_")):
            settings[name] = value.strip("'")
    return settings


@pytest.mark.slow
@pytest.mark.parametrize(("chosen", "spin_count"), [(None, "0"), ("ACTIVE", "30000000000")])
def test_torchs_openmp_runtime_in_a_run_sleeps_when_idle(write_study: Callable[..., Path], workdir: Path,
                                                         chosen: str | None, spin_count: str) -> None:
    path = write_study(n_trials=1, train={"epochs": 1, "batch_size": 64})
    env = python_env(OMP_DISPLAY_ENV="VERBOSE")
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("GOMP_SPINCOUNT", None)
    if chosen is not None:
        env["OMP_WAIT_POLICY"] = chosen
    done = subprocess.run([sys.executable, "-m", "hpsearch", "run", str(path)], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert _openmp_settings(done.stderr)["GOMP_SPINCOUNT"] == spin_count  # the default spins 300000 times


@pytest.mark.slow
def test_supervised_workers_get_their_share_and_sleep_when_idle(write_study: Callable[..., Path],
                                                                workdir: Path) -> None:
    path = write_study(n_trials=2, train={"epochs": 1, "batch_size": 64})
    env = python_env(OMP_DISPLAY_ENV="VERBOSE")
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "hpsearch", "run", str(path), "--workers", "2"], cwd=workdir,
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    for slot in (0, 1):
        settings = _openmp_settings((workdir / f"runs/tiny/logs/worker-{slot}.log").read_text())
        assert settings["GOMP_SPINCOUNT"] == "0"
        assert settings["OMP_NUM_THREADS"] == str(max(1, usable_cores() // 2))
