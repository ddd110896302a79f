"""Helpers for tests that drive the CLI in process and read what it wrote: CSV rows, an exported model, one error."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

from hpsearch.cli import main


def csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file (predictions, exports) as dicts by header."""
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def export_module(tmp: Path, study: Path, name: str) -> Any:
    """The exported load_model.py of the study's best trial, imported as module ``name``."""
    assert main(["best", str(study), "--export", str(tmp / "export")]) == 0
    spec = importlib.util.spec_from_file_location(name, tmp / "export" / "load_model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The single line a refused command printed on stderr."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]
