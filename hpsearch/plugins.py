"""User code named in a study file as 'package.module:callable' (custom datasets and models)."""

from __future__ import annotations

import importlib
from typing import Any, Callable

from hpsearch.errors import HpsearchError


def import_callable(spec: str, kind: str, error: type[HpsearchError]) -> Callable[..., Any]:
    """Import `spec`; any failure becomes one `error` line naming the `kind` ('dataset', 'model') and the fix."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise error(f"{kind} '{spec}': write a custom {kind} as 'package.module:callable'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise error(
            f"{kind} '{spec}': cannot import module '{module_name}' ({type(exc).__name__}: {exc}); "
            f"make sure it is on PYTHONPATH"
        ) from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise error(f"{kind} '{spec}': module '{module_name}' has no callable '{attr}'")
    return factory
