"""How a config error reads: file, key path, what is wrong, the fix, and a did-you-mean."""

from __future__ import annotations

import difflib
from typing import Any

from hpsearch.errors import ConfigError


def _shown(value: Any, limit: int = 60) -> str:
    """repr(value), cut short: an error line must stay one readable line even for a huge list."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 5]}...{text[-2:]}"


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------- loading


def _did_you_mean(word: str, options: Any) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _error(cfg_or_source: Any, where: str, message: str) -> ConfigError:
    source = getattr(cfg_or_source, "source", cfg_or_source)
    return ConfigError(f"{source}: {where}: {message}")
