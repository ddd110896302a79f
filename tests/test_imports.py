"""The import directions of DESIGN.md: the torch side never sees Optuna; the light side (results included)
never loads torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "hpsearch"
TORCH_SIDE = ("data", "models", "engine", "checkpoints")
RESULTS = tuple(sorted(f"results.{path.stem}" for path in (PACKAGE / "results").glob("*.py") if path.stem != "__init__"))
LIGHT_SIDE = ("config", "space", "study", "summary", "monitor", *RESULTS)
FORBIDDEN_ON_TORCH_SIDE = ("optuna", "hpsearch.config", "hpsearch.space", "hpsearch.study", "pydantic", "yaml")
TORCH = ("torch", "torchvision", "hpsearch.data", "hpsearch.models", "hpsearch.engine", "hpsearch.checkpoints",
         "hpsearch.steps", "hpsearch.objective", "hpsearch.worker")


def _imports(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module.replace('.', '/')}.py").read_text())
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


@pytest.mark.parametrize("module", RESULTS)
def test_results_never_import_torch(module: str) -> None:
    bad = {name for name in _imports(module) if name in TORCH or name.startswith(tuple(f"{t}." for t in TORCH))}
    assert not bad, f"hpsearch/{module.replace('.', '/')}.py imports {bad}"


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
