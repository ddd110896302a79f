"""What every report figure shares: its colours, hover placeholders, layout, and the columns of its traces."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hpsearch.results.numbers import HOVER

if TYPE_CHECKING:
    import numpy as np
    import plotly.graph_objects as go

__all__ = ["STATE_COLORS", "STUDY_COLORS", "column", "hover_number", "layout", "study_color"]

STATE_COLORS = {
    "COMPLETE": "#1f77b4",
    "PRUNED": "#ff7f0e",
    "FAIL": "#d62728",
    "RUNNING": "#2ca02c",
    "WAITING": "#7f7f7f",
}
STUDY_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
                "#17becf", "#bcbd22", "#7f7f7f"]


def column(values: Sequence[Any], width: int | None = None) -> np.ndarray:
    """``values`` as a numpy array of Python objects, for a trace's data: one row per point (``width`` items each).

    Why: plotly walks a list element by element to validate it (1.3 s for x, y and customdata of a 220,000-point
    trace, 0.1 s as arrays; bench/RESULTS.md "Report at scale"); an array it takes as it is. An object array, not a numeric
    one, because plotly writes it to the page exactly as the list (numbers as text, ``None`` as ``null``), where a
    float array would go out as base64 binary with ``NaN`` for the gaps: the page's data does not change.
    """
    import numpy as np

    out = np.empty(len(values) if width is None else (len(values), width), dtype=object)
    if len(values):
        out[:] = values
    return out


def hover_number(field: str) -> str:
    """A hover-text placeholder for a number, written like every other number in the report."""
    return "%{" + field + ":" + HOVER + "}"


def layout(fig: go.Figure, title: str, height: int = 440, **kw: Any) -> go.Figure:
    """The report's common layout: title top left, white template, the figure's height and margins."""
    kw.setdefault("margin", {"l": 60, "r": 30, "t": 60, "b": 50})
    fig.update_layout(title={"text": title, "x": 0.01}, template="plotly_white", height=height, **kw)
    return fig


def study_color(position: int) -> str:
    """The colour of the study at ``position`` on the command line, the same in every comparison figure."""
    return STUDY_COLORS[position % len(STUDY_COLORS)]
