"""Plotly figures of collected studies (:mod:`hpsearch.results.studydata`): one function per figure.

Studies are compared only within the groups :func:`~hpsearch.results.studydata.compare_groups` forms
(same metric and direction). plotly is imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpsearch import records
from hpsearch.results.comparison import comparison_figures
from hpsearch.results.numbers import HOVER, format_number, padded_range
from hpsearch.results.pareto import pareto_figures
from hpsearch.results.studydata import STATES, Curve, SliceData, StudyData, TrialRow
from hpsearch.results.traces import STATE_COLORS, STUDY_COLORS, column, layout
from hpsearch.results.traces import hover_number as _v

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["NamedFigure", "FigureSections", "figure_sections", "build_figures"]

NamedFigure = tuple[str, "go.Figure"]


def _nan_joined(curves: Sequence[Curve]) -> tuple[list[Any], list[Any], list[Any]]:
    """All curves in one trace, separated by gaps: one trace per state keeps 5,000 trials light."""
    xs: list[Any] = []
    ys: list[Any] = []
    cd: list[Any] = []
    for c in curves:
        xs.extend(c.epochs)
        ys.extend(c.values)
        cd.extend([c.trial] * len(c.epochs))
        xs.append(None)
        ys.append(None)
        cd.append(None)
    return xs, ys, cd


def _fig_history(d: StudyData) -> go.Figure:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=("by trial number", "by wall-clock time since the first trial"))
    n = column([p.trial for p in d.best_so_far])
    fig.add_trace(go.Scatter(x=n, y=column([p.value for p in d.best_so_far]), mode="markers",
                             name="complete trial", marker={"color": STATE_COLORS["COMPLETE"], "size": 6,
                                                            "opacity": 0.6},
                             hovertemplate="trial %{x}<br>" + _v("y") + "<extra></extra>"), 1, 1)
    fig.add_trace(go.Scatter(x=n, y=column([p.best for p in d.best_so_far]), mode="lines", line_shape="hv",
                             name="best so far", line={"color": "#111111", "width": 2}), 1, 1)
    timed = [p for p in d.best_so_far if p.elapsed_s is not None]
    mins = column([p.elapsed_s / 60 for p in timed])  # type: ignore[operator]
    fig.add_trace(go.Scatter(x=mins, y=column([p.value for p in timed]), mode="markers", showlegend=False,
                             marker={"color": STATE_COLORS["COMPLETE"], "size": 6, "opacity": 0.6},
                             customdata=column([p.trial for p in timed]),
                             hovertemplate="trial %{customdata}<br>%{x:.1f} min<br>" + _v("y") + "<extra></extra>"),
                  1, 2)
    fig.add_trace(go.Scatter(x=mins, y=column([p.best for p in timed]), mode="lines", line_shape="hv",
                             showlegend=False, line={"color": "#111111", "width": 2}), 1, 2)
    fig.update_xaxes(title_text="trial number", row=1, col=1)
    fig.update_xaxes(title_text="minutes", row=1, col=2)
    fig.update_yaxes(title_text=d.metric, row=1, col=1)
    return layout(fig, f"{d.name}: optimization history ({d.direction} {d.metric})")


def _fig_curves(d: StudyData) -> go.Figure:
    import plotly.graph_objects as go

    fig = go.Figure()
    by_state: dict[str, list[Curve]] = {}
    for c in d.curves:
        by_state.setdefault(c.state, []).append(c)
    for state in STATES:
        cs = by_state.get(state)
        if not cs:
            continue
        xs, ys, cd = _nan_joined(cs)
        fig.add_trace(go.Scatter(
            x=column(xs), y=column(ys), customdata=column(cd), mode="lines", connectgaps=False,
            name=f"{state.lower()} ({len(cs)})",
            line={"color": STATE_COLORS[state], "width": 1.2},
            # thousands of overlapping lines: fade with the count so the bundle's shape stays visible
            opacity=min(0.7, max(0.06, 5.0 / math.sqrt(len(cs)))),
            hovertemplate="trial %{customdata}<br>epoch %{x}<br>" + _v("y") + "<extra>" + state.lower() + "</extra>",
        ))
    stopped = [c for c in d.curves if c.stop_reason in records.EARLY_STOP_REASONS or c.state == "PRUNED"]
    for reason, symbol in ((records.PRUNED, "x"), (records.EARLY_STOPPED, "circle-open")):
        ends = [c for c in stopped if (c.stop_reason or records.PRUNED) == reason]
        if ends:
            fig.add_trace(go.Scatter(
                x=column([c.epochs[-1] for c in ends]), y=column([c.values[-1] for c in ends]),
                customdata=column([c.trial for c in ends]), mode="markers",
                name=f"{reason.replace('_', ' ')} here",
                marker={"symbol": symbol, "size": 8,
                        "color": STATE_COLORS["PRUNED"] if reason == records.PRUNED else "#444444"},
                hovertemplate="trial %{customdata} " + reason.replace("_", " ")
                              + " after epoch %{x}<extra></extra>",
            ))
    if d.summary.best_trial is not None:
        best = next((c for c in d.curves if c.trial == d.summary.best_trial), None)
        if best is not None:
            fig.add_trace(go.Scatter(x=best.epochs, y=best.values, mode="lines+markers",
                                     name=f"best (trial {best.trial})",
                                     line={"color": "#111111", "width": 3}))
    last = max([d.epochs or 1] + [c.epochs[-1] for c in d.curves])  # a study re-run with more epochs
    fig.update_xaxes(title_text="epoch", range=[0.5, last + 0.5])
    fig.update_yaxes(title_text=d.metric)
    return layout(fig, f"{d.name}: learning curves of every trial ({d.metric} per epoch)")


def _fig_parallel(d: StudyData) -> go.Figure:
    import plotly.graph_objects as go

    p = d.parallel
    assert p is not None
    dims = []
    for a in p.dimensions:
        dim: dict[str, Any] = {"label": a.name, "values": column(a.values), "range": list(a.range)}
        if a.tickvals is not None:
            dim["tickvals"] = a.tickvals
            dim["ticktext"] = a.ticktext
        dims.append(dim)
    objective: dict[str, Any] = {"label": d.metric, "values": column(p.objective), "tickformat": HOVER}
    span = padded_range(p.objective, *records.metric_bounds(d.metric))
    if span is not None:
        objective["range"] = list(span)
    dims.append(objective)
    reverse = d.direction == "minimize"
    fig = go.Figure(go.Parcoords(
        dimensions=dims, labelside="bottom",  # titles under the axes: clear of the top ticks and the figure title
        line={"color": column(p.objective), "colorscale": "Viridis", "reversescale": reverse, "showscale": True,
              "colorbar": {"title": {"text": d.metric}, "tickformat": HOVER}},
    ))
    return layout(fig, f"{d.name}: parallel coordinates (complete trials; n/a = param not sampled)",
                   height=520, margin={"l": 80, "r": 80, "t": 80, "b": 70})


def _fig_importances(d: StudyData) -> go.Figure:
    import plotly.graph_objects as go

    items = sorted(d.importances.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[v for _, v in items], y=[k for k, _ in items], orientation="h",
                           marker={"color": STUDY_COLORS[0]}, text=[format_number(v) for _, v in items],
                           textposition="outside", hovertemplate="%{y}: " + _v("x") + "<extra></extra>"))
    fig.update_xaxes(title_text="importance (normalised)", range=[0, max([v for _, v in items] + [0.0]) * 1.15 or 1])
    title = f"{d.name}: hyperparameter importances"
    return layout(fig, title, height=max(260, 60 + 40 * len(items)))


def _contour_axis(categories: list[str] | None, log: bool) -> dict[str, Any]:
    if categories is not None:  # a choice is a category even when it is a number (batch_size 32/64/128)
        return {"type": "category", "categoryorder": "array", "categoryarray": categories}
    return {"type": "log" if log else "linear", "exponentformat": "e"}


def _contour_hover(categories: list[str] | None, field: str) -> str:
    return "%{" + field + "}" if categories is not None else _v(field)


def _fig_contour(d: StudyData) -> go.Figure:
    import plotly.graph_objects as go

    c = d.contour
    assert c is not None
    hx, hy = _contour_hover(c.x_categories, "x"), _contour_hover(c.y_categories, "y")
    surface: dict[str, Any] = dict(
        x=c.x_grid, y=c.y_grid, z=c.z, colorscale="Viridis", reversescale=d.direction == "minimize",
        colorbar={"title": {"text": d.metric}, "tickformat": HOVER},
        hovertemplate=f"{c.x_param} {hx}<br>{c.y_param} {hy}<br>~" + _v("z") + "<extra>smoothed</extra>")
    fig = go.Figure()
    if c.x_categories is not None or c.y_categories is not None:
        # one band per category, smoothed along the numeric axis only: contour lines would blend them
        fig.add_trace(go.Heatmap(**surface, hoverongaps=False))
    else:
        fig.add_trace(go.Contour(**surface, connectgaps=True, contours={"coloring": "heatmap"},
                                 line={"width": 0.5}))
    fig.add_trace(go.Scatter(x=column(c.x), y=column(c.y), mode="markers",
                             customdata=column(list(zip(c.trials, c.values)), width=2),
                             marker={"color": "white", "size": 6, "line": {"color": "black", "width": 1}},
                             name="trials", showlegend=False,
                             hovertemplate="trial %{customdata[0]}<br>" + f"{hx}, {hy}<br>"
                                           + _v("customdata[1]") + "<extra></extra>"))
    fig.update_xaxes(title_text=c.x_param, **_contour_axis(c.x_categories, c.x_log))
    fig.update_yaxes(title_text=c.y_param, **_contour_axis(c.y_categories, c.y_log))
    what = "smoothed per category" if c.x_categories or c.y_categories else "kernel-smoothed"
    return layout(fig, f"{d.name}: {d.metric} over {c.x_param} x {c.y_param} ({what}, points = trials)")


SLICE_ROW_PX = 250  # one row of slices
SLICE_GAP_PX = 70  # between rows: the x tick labels above and the next row's subplot titles


def _slice_x_axis(s: SliceData) -> dict[str, Any]:
    """Every choice of a categorical param; a numeric one over its search-space bounds (padded), so one
    point shows where in the space it lies instead of an autorange around it."""
    if s.kind == "categorical":
        n = len(s.choices or [])
        return {"type": "category", "categoryorder": "array", "categoryarray": s.choices or [],
                "range": [-0.5, max(n, 1) - 0.5]}
    axis: dict[str, Any] = {"type": "log" if s.log else "linear", "exponentformat": "e"}
    if s.low is not None and s.high is not None and s.high > s.low and (not s.log or s.low > 0):
        lo, hi = (math.log10(s.low), math.log10(s.high)) if s.log else (s.low, s.high)
        pad = 0.04 * (hi - lo)
        axis["range"] = [lo - pad, hi + pad]
    return axis


def _fig_slices(d: StudyData) -> go.Figure:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    slices = d.slices
    cols = min(3, len(slices))
    rows = math.ceil(len(slices) / cols)
    numbers = [n for s in slices for n in s.trials]
    first, last = (min(numbers), max(numbers)) if numbers else (0, 1)
    plot_px = rows * SLICE_ROW_PX + (rows - 1) * SLICE_GAP_PX
    fig = make_subplots(rows=rows, cols=cols, shared_yaxes=True, horizontal_spacing=0.05,
                        vertical_spacing=SLICE_GAP_PX / plot_px if rows > 1 else 0.0,
                        subplot_titles=[s.param + (f" (absent in {s.n_missing})" if s.n_missing else "")
                                        for s in slices])
    for i, s in enumerate(slices):
        r, col = i // cols + 1, i % cols + 1
        x_hover = "%{x}" if s.kind == "categorical" else _v("x")
        fig.add_trace(go.Scatter(
            x=column(s.x), y=column(s.y), mode="markers", showlegend=False, customdata=column(s.trials),
            marker={"color": column(s.trials), "colorscale": "Blues", "size": 6, "opacity": 0.75,
                    "cmin": first if last > first else first - 1, "cmax": last,  # a lone trial: dark, not white
                    "line": {"color": "#555555", "width": 0.4},
                    "colorbar": {"title": {"text": "trial"}} if i == 0 else None,
                    "showscale": i == 0},
            hovertemplate="trial %{customdata}<br>" + s.param + f" {x_hover}<br>" + _v("y") + "<extra></extra>",
        ), r, col)
        fig.update_xaxes(**_slice_x_axis(s), row=r, col=col)
        if col == 1:
            fig.update_yaxes(title_text=d.metric, row=r, col=col)
    # one y range for every slice, from the values and within the metric's bounds: autorange
    # stretches a lone point to an arbitrary span (0 to 1.8 for an accuracy)
    span = padded_range([y for s in slices for y in s.y], *records.metric_bounds(d.metric))
    if span is not None:
        fig.update_yaxes(range=list(span), autorange=False)
    return layout(fig, f"{d.name}: slices ({d.metric} against each param, complete trials)",
                   height=plot_px + 90 + 50, margin={"l": 60, "r": 30, "t": 90, "b": 50})


def _fig_timeline(d: StudyData) -> go.Figure:
    import plotly.graph_objects as go

    fig = go.Figure()
    rows = [r for r in d.trials if r.start is not None]

    def lane(r: TrialRow) -> str:
        parts = []
        if r.slot is not None:
            parts.append(f"slot {r.slot}")
        if r.worker:
            parts.append(r.worker)
        return " · ".join(parts) or "unknown worker"

    lanes = sorted({lane(r) for r in rows})
    # An open (RUNNING) trial is drawn up to the study's last recorded event, not "now": a worker
    # killed without a heartbeat leaves RUNNING rows behind that would stretch the axis for ever.
    last = max([r.end for r in rows if r.end is not None] + [r.start for r in rows if r.start is not None])
    for state in STATES:
        rs = [r for r in rows if r.state == state]
        if not rs:
            continue
        ends = [r.end or max(last, r.start) for r in rs]  # type: ignore[type-var]
        fig.add_trace(go.Bar(
            base=column([r.start.isoformat() for r in rs]),  # type: ignore[union-attr]
            x=column([max(0.0, (e - r.start).total_seconds() * 1000) for r, e in zip(rs, ends)]),  # type: ignore[operator]
            y=column([lane(r) for r in rs]), orientation="h", name=state.lower(),
            marker={"color": STATE_COLORS[state], "line": {"color": "white", "width": 0.5}},
            customdata=column([[r.number, r.value if r.value is not None else float("nan"),
                                r.stop_reason or "", r.epochs_run or 0] for r in rs], width=4),
            hovertemplate="trial %{customdata[0]}<br>value " + _v("customdata[1]") + "<br>"
                          "%{customdata[2]}, %{customdata[3]} epochs<extra></extra>",
        ))
    fig.update_xaxes(type="date", title_text="time")
    fig.update_yaxes(categoryorder="array", categoryarray=lanes, autorange="reversed")
    return layout(fig, f"{d.name}: timeline of trials per worker slot", barmode="overlay",
                   height=max(260, 120 + 40 * len(lanes)))


def _study_figures(d: StudyData) -> list[NamedFigure]:
    """The figures of one study, each only when the study has its data."""
    figs: list[NamedFigure] = []
    if d.best_so_far:
        figs.append((f"{d.name}: optimization history", _fig_history(d)))
    if d.curves:
        figs.append((f"{d.name}: learning curves", _fig_curves(d)))
    if d.parallel is not None and d.parallel.dimensions:
        figs.append((f"{d.name}: parallel coordinates", _fig_parallel(d)))
    if d.importances:
        figs.append((f"{d.name}: param importances", _fig_importances(d)))
    figs += pareto_figures(d)  # several objectives only: the front(s) and each objective's importances
    if d.contour is not None:
        figs.append((f"{d.name}: lr x batch_size contour", _fig_contour(d)))
    if d.slices:
        figs.append((f"{d.name}: slices", _fig_slices(d)))
    if any(r.start is not None for r in d.trials):
        figs.append((f"{d.name}: timeline", _fig_timeline(d)))
    return figs


@dataclass
class FigureSections:
    """The figures of a report by section: one list per study (in the order given), then the comparison."""

    per_study: list[list[NamedFigure]]
    comparison: list[NamedFigure]

    def all(self) -> list[NamedFigure]:
        """Every figure, in page order."""
        return [f for figs in self.per_study for f in figs] + self.comparison


def figure_sections(studies: Sequence[StudyData]) -> FigureSections:
    """The figures of :func:`build_figures`, by report section."""
    return FigureSections([_study_figures(d) for d in studies], comparison_figures(studies))


def build_figures(studies: Sequence[StudyData]) -> list[NamedFigure]:
    """Named plotly figures: per study, then a comparison when there are two or more studies.

    Per study (each only when it has the data): optimization history, learning curves,
    parallel coordinates, param importances, lr x batch_size contour, slices, timeline.
    Comparison: best so far vs trial number and vs wall-clock time, final metric distributions;
    when the studies do not all share one metric and direction, these three are drawn once per
    (metric, direction) group, named ``Comparison (METRIC, DIRECTION): ...``.
    """
    return figure_sections(studies).all()
