"""The set-up commands: `make quickstart` installs what running needs (no test tools) and says what it does."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MAKEFILE = (REPO / "Makefile").read_text()


def _recipe(target: str) -> tuple[list[str], list[str]]:
    """(prerequisites, recipe lines) of a Makefile target."""
    match = re.search(rf"^{re.escape(target)}:([^\n]*)\n((?:\t[^\n]*\n)*)", MAKEFILE, re.MULTILINE)
    assert match, f"no target {target}"
    return match.group(1).split(), [line.strip() for line in match.group(2).splitlines()]


def test_quickstart_installs_no_test_tools() -> None:
    prerequisites, _ = _recipe("quickstart")
    assert prerequisites == ["venv"]
    assert _recipe("venv")[0] == ["$(BIN)/hpsearch"]
    _, install = _recipe("$(BIN)/hpsearch")
    assert any(line.endswith("install --progress-bar on -e .") for line in install)
    assert not any("[dev]" in line for line in install)


def test_tests_get_the_dev_extras() -> None:
    assert _recipe("test")[0] == ["dev"] and _recipe("dev")[0] == ["$(VENV)/.dev"]
    assert any("-e '.[dev]'" in line for line in _recipe("$(VENV)/.dev")[1])


def test_every_install_step_says_what_it_does_and_shows_progress() -> None:
    for target in ("$(BIN)/hpsearch", "$(VENV)/.dev"):
        lines = _recipe(target)[1]
        installs = [line for line in lines if " install " in line]
        assert installs and all("-q" not in line.split() for line in installs)
        assert sum(line.startswith("@echo \"==>") for line in lines) >= len(installs)
