"""Shared fixtures: an isolated working directory per test and tiny study files."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

TINY_STUDY: dict[str, Any] = {
    "name": "tiny",
    "n_trials": 4,
    "seed": 0,
    "device": "cpu",
    "sampler": {"type": "random"},
    "pruner": {"type": "none"},
    "data": {"dataset": "digits", "val_split": 0.25},
    "model": {"name": "mlp", "args": {"width": 32, "depth": 1}},
    "train": {"epochs": 2, "batch_size": 64},
    "space": {
        "lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
        "dropout": {"type": "float", "low": 0.0, "high": 0.3},
    },
}


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C reaches the tests and their children as it would from a terminal.

    A runner started in the background of a non-interactive shell (`cmd &`, nohup) hands pytest SIGINT ignored,
    and every child would inherit that: the Ctrl-C tests would then fail on how CI was launched, not on hpsearch.
    A handler (unlike SIG_IGN) is reset to the default at exec, so children get Python's usual KeyboardInterrupt.
    """
    import signal

    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests skip (with a reason) where CUDA is absent."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip = pytest.mark.skip(reason="no CUDA GPU on this machine")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test inside its own empty folder, so runs/ lands there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def write_study(workdir: Path) -> Callable[..., Path]:
    """Write a study file built from TINY_STUDY plus overrides (a value of None deletes the key)."""

    def write(filename: str = "study.yaml", **overrides: Any) -> Path:
        raw = {**TINY_STUDY, **overrides}
        raw = {k: v for k, v in raw.items() if v is not None}
        path = workdir / filename
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    return write


@pytest.fixture(scope="session")
def pg_url() -> Any:
    """URL of a fresh PostgreSQL database on 127.0.0.1:5432 for this session, dropped afterwards.

    Skips (naming host and port) when no server answers; HPSEARCH_REQUIRE_POSTGRES=1 makes that a failure.
    """
    import os

    import pg

    try:
        url, name = pg.create_database()
    except pg.PostgresUnavailable as exc:
        if os.environ.get("HPSEARCH_REQUIRE_POSTGRES") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    yield url
    pg.drop_database(name)


@pytest.fixture
def empty_pg_url(pg_url: str) -> Any:
    """URL of a PostgreSQL database of this test's own, with no tables (pg_url is shared by the session)."""
    import pg

    url, name = pg.create_database()
    yield url
    pg.drop_database(name)


def start_hpsearch(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Any:
    """A real `python -m hpsearch ARGS` child in `cwd`, text pipes for stdout and stderr (a subprocess.Popen)."""
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "hpsearch", *args], cwd=cwd, env=env or python_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def python_env(*paths: str | Path, **variables: str) -> dict[str, str]:
    """The environment for a real `python -m hpsearch` child: this checkout first on PYTHONPATH, then
    `paths`, then whatever PYTHONPATH already holds (where packages may be installed, as on the GPU machine)."""
    import os

    root = Path(__file__).resolve().parent.parent
    inherited = [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []
    return {**os.environ, **variables, "PYTHONPATH": os.pathsep.join([str(root), *map(str, paths), *inherited])}
