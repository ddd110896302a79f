"""The comparison figures of two or more studies: best so far by trial number and by wall-clock time, and the
distribution of their complete trials' values, once per group of studies with one metric and direction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from hpsearch.results.studydata import CompareGroup, StudyData, compare_groups
from hpsearch.results.traces import column, layout, study_color

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["comparison_figures"]


def _fig_compare_best(group: CompareGroup, by_time: bool, prefix: str) -> go.Figure:
    import plotly.graph_objects as go

    fig = go.Figure()
    for pos, d in zip(group.positions, group.studies):
        pts = [p for p in d.best_so_far if not by_time or p.elapsed_s is not None]
        x = [p.elapsed_s / 60 for p in pts] if by_time else [p.trial for p in pts]  # type: ignore[operator]
        fig.add_trace(go.Scatter(x=column(x), y=column([p.best for p in pts]), mode="lines", line_shape="hv",
                                 name=d.name, line={"color": study_color(pos), "width": 2}))
    fig.update_xaxes(title_text="minutes since the study's first trial" if by_time else "trial number")
    fig.update_yaxes(title_text=group.metric)
    what = "wall-clock time" if by_time else "trial number"
    return layout(fig, f"{prefix}: best so far vs {what}")


def _fig_compare_dist(group: CompareGroup, prefix: str) -> go.Figure:
    import plotly.graph_objects as go

    fig = go.Figure()
    for pos, d in zip(group.positions, group.studies):
        fig.add_trace(go.Box(y=column([p.value for p in d.best_so_far]), name=d.name, boxpoints="all",
                             jitter=0.4, pointpos=0, boxmean=True,
                             marker={"color": study_color(pos), "size": 4, "opacity": 0.6}))
    fig.update_yaxes(title_text=group.metric)
    return layout(fig, f"{prefix}: final metric of complete trials", showlegend=False)


def comparison_figures(studies: Sequence[StudyData]) -> list[tuple[str, go.Figure]]:
    """The comparison figures of two or more studies, one set per :func:`compare_groups` group.

    With one group the names carry no group label (``Comparison: ...``); with several each
    name and title says its metric and direction (``Comparison (val_loss, minimize): ...``).
    """
    if len(studies) < 2:
        return []
    groups = compare_groups(studies)
    figs: list[tuple[str, go.Figure]] = []
    for g in groups:
        prefix = "Comparison" if len(groups) == 1 else f"Comparison ({g.metric}, {g.direction})"
        figs.append((f"{prefix}: best so far vs trial number", _fig_compare_best(g, False, prefix)))
        figs.append((f"{prefix}: best so far vs wall-clock time", _fig_compare_best(g, True, prefix)))
        figs.append((f"{prefix}: final metric distribution", _fig_compare_dist(g, prefix)))
    return figs
