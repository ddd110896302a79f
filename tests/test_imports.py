"""The import directions of DESIGN.md, for every module of the package.

The torch side never sees Optuna or the schema; the light side never loads torch (so `validate --config-only`,
`status` and `report` start fast); a few modules are standard library only. A new module must be
placed in one of these groups, or this test fails.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "hpsearch"
STDLIB_ONLY = ("errors", "ids", "names", "signals", "status", "plugins", "threads", "__init__")
TORCH_SIDE = ("data", "models", "settings", "optim", "engine", "steps", "checkpoints", "pretrained", "tasks", "costs")
LIGHT_SIDE = ("budget", "cliargs", "config", "records", "trialsets", "space", "baseline", "study", "slots", "summary", "monitor",
              "supervisor", "cli", "__main__")
# the only modules that hold both a config or trial and a model
BRIDGES = ("objective", "trialfiles", "preflight", "worker", "predict", "tradeoffs")
LIGHT_PACKAGES = ("results", "cluster")  # every module under these is light side too
FORBIDDEN_ON_TORCH_SIDE = ("optuna", "hpsearch.config", "hpsearch.space", "hpsearch.study", "pydantic", "yaml")
TORCH = ("torch", "torchvision", *(f"hpsearch.{m}" for m in TORCH_SIDE + BRIDGES))


def _modules() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        found.append(".".join(path.relative_to(PACKAGE).with_suffix("").parts))
    return found


def _group(module: str) -> str:
    top = module.split(".")[0]
    for name, members in (("stdlib", STDLIB_ONLY), ("torch", TORCH_SIDE), ("light", LIGHT_SIDE), ("bridge", BRIDGES)):
        if module in members or top in members:  # a package (config/, study/, data/) is placed as a whole
            return name
    return "light" if top in LIGHT_PACKAGES else "unplaced"


def _imports(module: str) -> set[str]:
    path = PACKAGE.joinpath(*module.split(".")).with_suffix(".py")
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_every_module_has_a_place() -> None:
    assert [m for m in _modules() if _group(m) == "unplaced"] == []


@pytest.mark.parametrize("module", [m for m in _modules() if _group(m) == "stdlib"])
def test_stdlib_modules_import_nothing_else(module: str) -> None:
    allowed = set(sys.stdlib_module_names) | {"__future__"}
    outside = {name for name in _imports(module) if name.split(".")[0] not in allowed
               and name not in {f"hpsearch.{m}" for m in STDLIB_ONLY} and name != "hpsearch"}
    assert not outside, f"hpsearch/{module} imports {outside}"


@pytest.mark.parametrize("module", [m for m in _modules() if _group(m) == "torch"])
def test_torch_side_never_imports_optuna_or_config(module: str) -> None:
    bad = {name for name in _imports(module) if name.startswith(FORBIDDEN_ON_TORCH_SIDE)}
    assert not bad, f"hpsearch/{module}.py imports {bad}"


@pytest.mark.parametrize("module", [m for m in _modules() if m.startswith(LIGHT_PACKAGES)])
def test_results_never_import_torch_even_lazily(module: str) -> None:
    bad = {name for name in _imports(module) if name in TORCH or name.startswith(tuple(f"{t}." for t in TORCH))}
    assert not bad, f"hpsearch/{module.replace('.', '/')}.py imports {bad}"


# __main__ runs the command when imported: test_validate_config_only_does_not_load_torch covers the entry point.
@pytest.mark.parametrize("module", [m for m in _modules() if _group(m) == "light" and m != "__main__"])
def test_light_side_never_loads_torch(module: str) -> None:
    code = f"import sys, importlib; importlib.import_module('hpsearch.{module}'); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=PACKAGE.parent, check=True)
    assert result.stdout.strip() == "False", f"importing hpsearch.{module} loads torch"


def test_validate_config_only_does_not_load_torch() -> None:  # plain validate builds the model, as run does
    code = ("import sys; from hpsearch.cli import main; "
            "rc = main(['validate', '--config-only', 'studies/quickstart.yaml']); print('torch' in sys.modules, rc)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent,
                            check=True)
    assert result.stdout.strip().splitlines()[-1] == "False 0"
