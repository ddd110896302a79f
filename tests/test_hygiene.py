"""What the README's commands write is ignored by git and removed by `make clean`."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WRITTEN = ["runs/quickstart/study.db", "best/weights.pt", "report.html", "predictions.csv"]  # run, best, report, predict


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_what_the_readme_writes_is_ignored_by_git() -> None:
    done = subprocess.run(["git", "check-ignore", "--no-index", *WRITTEN], cwd=ROOT, capture_output=True, text=True,
                          check=False)
    assert done.stdout.split() == WRITTEN, done.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_clean_removes_what_the_readme_writes() -> None:
    done = subprocess.run(["make", "-n", "clean"], cwd=ROOT, capture_output=True, text=True, check=True)
    removed = {word for line in done.stdout.splitlines() if line.startswith("rm -rf") for word in shlex.split(line)[2:]}
    assert {path.split("/")[0] for path in WRITTEN} <= removed
