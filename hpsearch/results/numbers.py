"""How the report writes numbers and sizes value axes: one formatter for tables, titles and tick labels,
its d3 twin for plotly hover text, and padded axis ranges kept inside a metric's bounds."""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["format_number", "HOVER", "padded_range"]

DIGITS = 4  # significant digits: 3.833e-4, 0.01234, 0.9712, 123.5
# d3-format of the same rule for plotly hover text ("~" drops trailing zeros like format_number).
HOVER = f".{DIGITS}~g"


def _trim(mantissa: str) -> str:
    return mantissa.rstrip("0").rstrip(".") if "." in mantissa else mantissa


def format_number(x: float) -> str:
    """``x`` with 4 significant digits and no trailing zeros: ``0``, ``3.833e-4``, ``0.01234``, ``0.9712``,
    ``123.5``, ``1.235e5``; scientific below 1e-3 and from 1e4 on, so a small value never rounds away."""
    if x == 0:
        return "0"
    if not math.isfinite(x):
        return str(x)
    mantissa, exponent = f"{x:.{DIGITS - 1}e}".split("e")
    rounded = float(f"{mantissa}e{exponent}")  # decide on the rounded value: 9999.9 is 1e4, not "10000"
    if abs(rounded) < 1e-3 or abs(rounded) >= 1e4:
        return f"{_trim(mantissa)}e{int(exponent)}"
    decimals = max(0, DIGITS - 1 - math.floor(math.log10(abs(rounded))))
    return _trim(f"{rounded:.{decimals}f}")


def padded_range(values: Iterable[float], low: float | None = None, high: float | None = None,
                 pad: float = 0.08) -> tuple[float, float] | None:
    """An axis range around the finite ``values``, ``pad`` of their span wider on each side, kept within
    ``[low, high]`` (a metric's bounds; None: unbounded); None without a finite value.

    A single value (no span) gets a window of 5% of its size, at least 0.01, so plotly never autoranges
    one point to an arbitrary width.
    """
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return None
    lo, hi = min(finite), max(finite)
    margin = (hi - lo) * pad if hi > lo else max(abs(lo) * 0.05, 0.01)
    lo, hi = lo - margin, hi + margin
    if low is not None:
        lo = max(lo, low)
    if high is not None:
        hi = min(hi, high)
    return lo, hi
