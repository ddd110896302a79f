"""The import directions of DESIGN.md: the torch side never sees Optuna; the light side never loads torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "hpsearch"
TORCH_SIDE = ("data", "models", "engine", "checkpoints")
LIGHT_SIDE = ("config", "space", "study", "report", "summary")
FORBIDDEN_ON_TORCH_SIDE = ("optuna", "hpsearch.config", "hpsearch.space", "hpsearch.study", "pydantic", "yaml")


def _imports(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", TORCH_SIDE)
def test_torch_side_never_imports_optuna_or_config(module: str) -> None:
    bad = {name for name in _imports(module) if name.startswith(FORBIDDEN_ON_TORCH_SIDE)}
    assert not bad, f"hpsearch/{module}.py imports {bad}"


@pytest.mark.parametrize("module", LIGHT_SIDE)
def test_light_side_never_loads_torch(module: str) -> None:
    code = f"import sys, hpsearch.{module}; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=PACKAGE.parent, check=True)
    assert result.stdout.strip() == "False", f"importing hpsearch.{module} loads torch"


def test_validate_does_not_load_torch() -> None:
    code = ("import sys; from hpsearch.cli import main; "
            "rc = main(['validate', 'studies/quickstart.yaml']); print('torch' in sys.modules, rc)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent,
                            check=True)
    assert result.stdout.strip().splitlines()[-1] == "False 0"
