"""Study reports: collect trials into plain data, draw plotly figures, write one offline HTML file.

Three layers, each testable on its own:

- :func:`collect_study` reads an Optuna study once and returns a :class:`StudyData` made of plain
  dataclasses, lists and dicts (no plotly): summary, per-trial rows, learning curves, best-so-far
  series, importances and the data behind parallel coordinates, the lr x batch-size contour and
  the slice plots.
- :func:`build_figures` turns one or more :class:`StudyData` into named plotly figures; studies
  are compared only within the groups :func:`compare_groups` forms (same metric and direction).
- :func:`write_report` writes them into a single self-contained HTML file (plotly.js inlined once,
  no network access needed to view it), optionally also one PNG per figure.

This module never imports torch (``hpsearch report`` must start fast).
"""

from __future__ import annotations

import datetime as dt
import html
import logging
import math
import re
import statistics
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from hpsearch.errors import HpsearchError

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = [
    "StudyData",
    "Summary",
    "TrialRow",
    "Curve",
    "BestPoint",
    "ParamInfo",
    "Axis",
    "ParallelData",
    "ContourData",
    "SliceData",
    "CompareGroup",
    "collect_study",
    "compare_groups",
    "build_figures",
    "write_report",
]

logger = logging.getLogger(__name__)

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
STATE_COLORS = {
    "COMPLETE": "#1f77b4",
    "PRUNED": "#ff7f0e",
    "FAIL": "#d62728",
    "RUNNING": "#2ca02c",
    "WAITING": "#7f7f7f",
}
STUDY_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
                "#17becf", "#bcbd22", "#7f7f7f"]
# stop reasons whose unrun epochs count as "saved" (the search decided to stop the trial early)
EARLY_STOP_REASONS = ("pruned", "early_stopped")
NA = "n/a"
# Importance evaluators gain nothing past a few thousand trials and get slow (fANOVA): subsample above.
MAX_IMPORTANCE_TRIALS = 5000
CONTOUR_PARAMS = ("lr", "batch_size")
CONTOUR_GRID = 48


# --------------------------------------------------------------------------------------------
# Plain data
# --------------------------------------------------------------------------------------------


@dataclass
class ParamInfo:
    """One hyperparameter as seen across the study's trials."""

    name: str
    kind: str  # "float" | "int" | "categorical"
    log: bool
    low: float | None
    high: float | None
    choices: list[Any] | None
    n_present: int  # trials (any state) that have it; conditional params have fewer
    n_missing: int
    varies: bool  # more than one distinct value among complete trials


@dataclass
class TrialRow:
    """One trial, flattened for tables and exports."""

    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    start: dt.datetime | None
    end: dt.datetime | None
    duration_s: float | None
    worker: str | None
    slot: int | None
    device: str | None
    epochs_run: int | None
    best_epoch: int | None
    stop_reason: str | None
    train_time: float | None
    checkpoint: str | None


@dataclass
class Curve:
    """Validation metric per epoch of one trial (1-based epochs)."""

    trial: int
    state: str
    stop_reason: str | None
    epochs: list[int]
    values: list[float]


@dataclass
class BestPoint:
    """A complete trial's value and the best value up to and including it."""

    trial: int
    elapsed_s: float | None  # seconds from the study's first trial start to this trial's end
    value: float
    best: float


@dataclass
class Summary:
    """Headline numbers of one study."""

    n_trials: int
    by_state: dict[str, int]
    best_value: float | None
    best_trial: int | None
    best_params: dict[str, Any]
    total_wall_s: float | None
    mean_trial_s: float | None
    median_trial_s: float | None
    epochs_max: int | None
    epochs_run: int
    epochs_saved: int
    epochs_saved_by_reason: dict[str, int]
    stop_reasons: dict[str, int]
    workers: list[str]
    slots: list[int]
    devices: list[str]
    notes: list[str] = field(default_factory=list)


@dataclass
class Axis:
    """One numeric axis over the complete trials (parallel coordinates).

    ``values`` are plot positions: log10 of the value for log-scale params, the index into
    ``ticktext`` for categorical ones; a trial without the param sits at the ``n/a`` tick.
    """

    name: str
    values: list[float]
    tickvals: list[float] | None
    ticktext: list[str] | None
    n_missing: int


@dataclass
class ParallelData:
    """Parallel coordinates: one line per complete trial, one axis per param, objective last."""

    trials: list[int]
    objective: list[float]
    dimensions: list[Axis]


@dataclass
class ContourData:
    """Objective over lr x batch size, smoothed onto a grid, plus the trials as points."""

    x_param: str
    y_param: str
    x_log: bool
    y_log: bool
    x_grid: list[float]  # in param units
    y_grid: list[float]
    z: list[list[float]]  # z[j][i] at (x_grid[i], y_grid[j])
    x: list[float]
    y: list[float]
    values: list[float]
    trials: list[int]


@dataclass
class SliceData:
    """Objective against one param over the complete trials that have it."""

    param: str
    kind: str
    log: bool
    x: list[Any]
    y: list[float]
    trials: list[int]
    n_missing: int
    choices: list[str] | None = None  # categorical: axis order


@dataclass
class StudyData:
    """Everything a report needs about one study, read once from storage."""

    name: str
    direction: str  # "maximize" | "minimize"
    metric: str
    epochs: int | None
    output_dir: str | None
    collected_at: dt.datetime
    start: dt.datetime | None
    summary: Summary
    params: list[ParamInfo]
    trials: list[TrialRow]
    curves: list[Curve]
    best_so_far: list[BestPoint]
    importances: dict[str, float]
    importance_note: str | None
    parallel: ParallelData | None
    contour: ContourData | None
    slices: list[SliceData]


@dataclass
class CompareGroup:
    """Studies that optimise one metric in one direction, so they can share a y axis.

    ``positions`` are the studies' indices in the sequence given to :func:`compare_groups`; a
    study keeps the colour of its position in every comparison figure.
    """

    metric: str
    direction: str
    studies: list[StudyData]
    positions: list[int]


def compare_groups(studies: Sequence[StudyData]) -> list[CompareGroup]:
    """Group ``studies`` by (metric, direction); groups and members keep the order given.

    A study whose metric or direction no other study shares is a group of its own.
    """
    groups: dict[tuple[str, str], CompareGroup] = {}
    for i, d in enumerate(studies):
        group = groups.setdefault((d.metric, d.direction), CompareGroup(d.metric, d.direction, [], []))
        group.studies.append(d)
        group.positions.append(i)
    return list(groups.values())


# --------------------------------------------------------------------------------------------
# Collection
# --------------------------------------------------------------------------------------------


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _duration(t: FrozenTrial) -> float | None:
    if t.datetime_start is None or t.datetime_complete is None:
        return None
    return (t.datetime_complete - t.datetime_start).total_seconds()


def _epochs_run(t: FrozenTrial) -> int | None:
    run = _as_int(t.user_attrs.get("epochs_run"))
    if run is not None:
        return run
    history = t.user_attrs.get("history")
    if isinstance(history, list) and history:
        return len(history)
    if t.intermediate_values:
        return max(t.intermediate_values)
    return None


def _stop_reason(t: FrozenTrial) -> str | None:
    reason = t.user_attrs.get("stop_reason")
    if isinstance(reason, str):
        return reason
    if t.state == TrialState.PRUNED:
        return "pruned"
    return None


def _curve(t: FrozenTrial, metric: str) -> Curve | None:
    """Per-epoch metric: from the history user attr when it has ``metric``, else intermediate values."""
    epochs: list[int] = []
    values: list[float] = []
    history = t.user_attrs.get("history")
    if isinstance(history, list) and history and all(
        isinstance(h, dict) and _as_float(h.get(metric)) is not None for h in history
    ):
        for i, h in enumerate(history, start=1):
            epochs.append(_as_int(h.get("epoch")) or i)
            values.append(float(h[metric]))
    elif t.intermediate_values:
        for step in sorted(t.intermediate_values):
            epochs.append(int(step))
            values.append(float(t.intermediate_values[step]))
    if not epochs:
        return None
    return Curve(t.number, t.state.name, _stop_reason(t), epochs, values)


def _param_infos(trials: Sequence[FrozenTrial], complete: Sequence[FrozenTrial]) -> list[ParamInfo]:
    dists: dict[str, Any] = {}
    present: Counter[str] = Counter()
    for t in trials:
        for name, dist in t.distributions.items():
            present[name] += 1
            dists.setdefault(name, dist)
    infos = []
    for name, dist in dists.items():
        distinct = {repr(t.params[name]) for t in complete if name in t.params}
        if isinstance(dist, CategoricalDistribution):
            infos.append(ParamInfo(name, "categorical", False, None, None, list(dist.choices),
                                   present[name], len(trials) - present[name], len(distinct) > 1))
        else:
            kind = "int" if isinstance(dist, IntDistribution) else "float"
            log = bool(getattr(dist, "log", False))
            infos.append(ParamInfo(name, kind, log, float(dist.low), float(dist.high), None,
                                   present[name], len(trials) - present[name], len(distinct) > 1))
    return infos


def _fmt_num(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return f"{x:.0e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{x:.3g}"


def _nice_ticks(lo: float, hi: float, log: bool) -> tuple[list[float], list[str]]:
    """Tick positions (plot units) and labels (param units) for a numeric axis."""
    if log:
        a, b = math.floor(lo + 1e-9), math.ceil(hi - 1e-9)
        pos = [float(k) for k in range(a, b + 1) if lo - 1e-9 <= k <= hi + 1e-9]
        if len(pos) < 2:
            pos = sorted({lo, hi})
        return pos, [_fmt_num(10**p) for p in pos]
    if hi <= lo:
        return [lo], [_fmt_num(lo)]
    pos = [lo + (hi - lo) * k / 4 for k in range(5)]
    return pos, [_fmt_num(p) for p in pos]


def _axis(info: ParamInfo, complete: Sequence[FrozenTrial]) -> Axis:
    raw = [t.params.get(info.name) for t in complete]
    n_missing = sum(v is None for v in raw)
    if info.kind == "categorical":
        labels = [str(c) for c in info.choices or []]
        index = {repr(c): i for i, c in enumerate(info.choices or [])}
        values = [float(index.get(repr(v), len(labels))) if v is not None else float(len(labels))
                  for v in raw]
        tickvals = [float(i) for i in range(len(labels))]
        if n_missing:
            tickvals.append(float(len(labels)))
            labels.append(NA)
        return Axis(info.name, values, tickvals, labels, n_missing)
    nums = [float(v) for v in raw if v is not None]
    to_pos = (lambda v: math.log10(v)) if info.log else (lambda v: v)
    lo = to_pos(info.low) if info.low is not None and (not info.log or info.low > 0) else None
    hi = to_pos(info.high) if info.high is not None and (not info.log or info.high > 0) else None
    if nums:
        pos_nums = [to_pos(v) for v in nums if not info.log or v > 0]
        lo = min(pos_nums + ([lo] if lo is not None else []))
        hi = max(pos_nums + ([hi] if hi is not None else []))
    if lo is None or hi is None:
        lo, hi = 0.0, 1.0
    tickvals, ticktext = _nice_ticks(lo, hi, info.log)
    na_pos = lo - 0.12 * ((hi - lo) or 1.0)
    values = [to_pos(float(v)) if v is not None else na_pos for v in raw]
    if n_missing:
        tickvals = [na_pos, *tickvals]
        ticktext = [NA, *ticktext]
    return Axis(info.name, values, tickvals, ticktext, n_missing)


def _contour(infos: dict[str, ParamInfo], complete: Sequence[FrozenTrial]) -> ContourData | str:
    """Smoothed objective over lr x batch_size, or the reason it cannot be drawn."""
    xp, yp = CONTOUR_PARAMS
    missing = [p for p in CONTOUR_PARAMS if p not in infos]
    if missing:
        return f"lr x batch_size contour skipped: the study has no {' or '.join(missing)} param"
    pts = [t for t in complete if xp in t.params and yp in t.params
           and _as_float(t.params[xp]) is not None and _as_float(t.params[yp]) is not None
           and _finite(t.value)]
    if len(pts) < 3:
        return "lr x batch_size contour skipped: fewer than 3 complete trials with numeric lr and batch_size"
    xs = [float(t.params[xp]) for t in pts]
    ys = [float(t.params[yp]) for t in pts]
    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return "lr x batch_size contour skipped: lr or batch_size did not vary"
    x_log = all(v > 0 for v in xs) and (infos[xp].log or max(xs) / min(xs) >= 10)
    y_log = all(v > 0 for v in ys) and (infos[yp].log or infos[yp].kind == "categorical"
                                         or max(ys) / min(ys) >= 10)
    import numpy as np  # numpy ships with optuna

    fx = np.log10 if x_log else (lambda a: a)
    fy = np.log2 if y_log else (lambda a: a)
    px, py = fx(np.asarray(xs)), fy(np.asarray(ys))
    z = np.asarray([float(t.value) for t in pts])  # type: ignore[arg-type]
    gx = np.linspace(px.min(), px.max(), CONTOUR_GRID)
    if infos[yp].kind == "categorical" or len(set(ys)) <= 12:
        gy = np.unique(py)
    else:
        gy = np.linspace(py.min(), py.max(), CONTOUR_GRID // 2)
    # Gaussian-kernel average in axis-normalised coordinates: smooth, and bounded by the data
    # (inverse-distance weighting spikes at every point).
    sx = (px.max() - px.min()) or 1.0
    sy = (py.max() - py.min()) or 1.0
    bw = 0.12
    dx = (gx[:, None] - px[None, :]) / sx  # (GX, N)
    dy = (gy[:, None] - py[None, :]) / sy  # (GY, N)
    wx = np.exp(-0.5 * (dx / bw) ** 2)
    wy = np.exp(-0.5 * (dy / bw) ** 2)
    w = wy[:, None, :] * wx[None, :, :]  # (GY, GX, N)
    num = (w * z[None, None, :]).sum(-1)
    den = w.sum(-1)
    grid = np.where(den > 1e-12, num / np.maximum(den, 1e-300), np.nan)
    inv_x = (lambda a: 10**a) if x_log else (lambda a: a)
    inv_y = (lambda a: 2**a) if y_log else (lambda a: a)
    return ContourData(
        xp, yp, bool(x_log), bool(y_log),
        [float(v) for v in inv_x(gx)], [float(v) for v in inv_y(gy)],
        [[float(v) for v in row] for row in grid],
        xs, ys, [float(v) for v in z], [t.number for t in pts],
    )


def _importances(study: optuna.Study, complete: Sequence[FrozenTrial],
                 infos: list[ParamInfo]) -> tuple[dict[str, float], str | None]:
    """Optuna's param importances over the complete trials, or why there are none."""
    varying = [p.name for p in infos if p.varies]
    if len(complete) < 2:
        return {}, "param importances need at least 2 complete trials"
    if not varying:
        return {}, "param importances skipped: no param varies across complete trials"
    target = study
    note_parts = []
    if len(complete) > MAX_IMPORTANCE_TRIALS:
        # Evaluators scale with trials; a fixed-seed subsample keeps the ranking and the runtime.
        import random

        sample = random.Random(0).sample(list(complete), MAX_IMPORTANCE_TRIALS)
        target = optuna.create_study(direction=study.direction)
        target.add_trials(sample)
        note_parts.append(f"importances from a random sample of {MAX_IMPORTANCE_TRIALS} of "
                          f"{len(complete)} complete trials")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = optuna.importance.get_param_importances(target, params=varying)
    except (ValueError, RuntimeError, ZeroDivisionError) as e:
        return {}, f"param importances failed: {e}"
    note_parts += sorted({str(w.message) for w in caught})
    return {k: float(v) for k, v in result.items()}, ("; ".join(note_parts) or None)


def collect_study(study: optuna.Study) -> StudyData:
    """Read ``study`` once and return plain data for tables, figures and tests."""
    collected_at = dt.datetime.now()
    trials = study.get_trials(deepcopy=False)
    attrs = study.user_attrs
    metric = str(attrs.get("metric") or "objective")
    epochs_max = _as_int(attrs.get("epochs"))
    try:
        direction = "maximize" if study.direction == optuna.study.StudyDirection.MAXIMIZE else "minimize"
    except RuntimeError:  # multi-objective: hpsearch studies are single-objective
        direction = "maximize" if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else "minimize"
    maximize = direction == "maximize"
    notes: list[str] = []

    complete = [t for t in trials if t.state == TrialState.COMPLETE and _finite(t.value)]
    rows: list[TrialRow] = []
    curves: list[Curve] = []
    for t in trials:
        rows.append(TrialRow(
            number=t.number,
            state=t.state.name,
            value=float(t.value) if t.value is not None else None,
            params=dict(t.params),
            start=t.datetime_start,
            end=t.datetime_complete,
            duration_s=_duration(t),
            worker=str(t.user_attrs["worker"]) if "worker" in t.user_attrs else None,
            slot=_as_int(t.user_attrs.get("slot")),
            device=str(t.user_attrs["device"]) if "device" in t.user_attrs else None,
            epochs_run=_epochs_run(t),
            best_epoch=_as_int(t.user_attrs.get("best_epoch")),
            stop_reason=_stop_reason(t),
            train_time=_as_float(t.user_attrs.get("train_time")),
            checkpoint=str(t.user_attrs["checkpoint"]) if "checkpoint" in t.user_attrs else None,
        ))
        curve = _curve(t, metric)
        if curve is not None:
            curves.append(curve)

    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    start = min(starts) if starts else None
    ends = [t.datetime_complete for t in trials if t.datetime_complete is not None]

    # best so far, in trial-number order (the order the sampler saw them)
    best_so_far: list[BestPoint] = []
    best: float | None = None
    for t in sorted(complete, key=lambda t: t.number):
        v = float(t.value)  # type: ignore[arg-type]
        best = v if best is None else (max(best, v) if maximize else min(best, v))
        elapsed = ((t.datetime_complete - start).total_seconds()
                   if start is not None and t.datetime_complete is not None else None)
        best_so_far.append(BestPoint(t.number, elapsed, v, best))
    best_trial = None
    if complete:
        best_trial = (max if maximize else min)(complete, key=lambda t: (t.value, -t.number))

    durations = [r.duration_s for r in rows if r.duration_s is not None and r.state != "RUNNING"]
    epochs_run = sum(r.epochs_run or 0 for r in rows)
    saved_by: dict[str, int] = {}
    if epochs_max is not None:
        for r in rows:
            if r.stop_reason in EARLY_STOP_REASONS and r.epochs_run is not None:
                saved_by[r.stop_reason] = saved_by.get(r.stop_reason, 0) + max(0, epochs_max - r.epochs_run)
    else:
        notes.append("epochs saved unknown: the study has no 'epochs' user attr")
    by_state = {s: 0 for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    for t in trials:
        by_state[t.state.name] = by_state.get(t.state.name, 0) + 1

    summary = Summary(
        n_trials=len(trials),
        by_state=by_state,
        best_value=float(best_trial.value) if best_trial is not None else None,  # type: ignore[arg-type]
        best_trial=best_trial.number if best_trial is not None else None,
        best_params=dict(best_trial.params) if best_trial is not None else {},
        total_wall_s=(max(ends) - start).total_seconds() if ends and start is not None else None,
        mean_trial_s=statistics.fmean(durations) if durations else None,
        median_trial_s=statistics.median(durations) if durations else None,
        epochs_max=epochs_max,
        epochs_run=epochs_run,
        epochs_saved=sum(saved_by.values()),
        epochs_saved_by_reason=saved_by,
        stop_reasons=dict(Counter(r.stop_reason for r in rows if r.stop_reason)),
        workers=sorted({r.worker for r in rows if r.worker}),
        slots=sorted({r.slot for r in rows if r.slot is not None}),
        devices=sorted({r.device for r in rows if r.device}),
        notes=notes,
    )
    if not trials:
        notes.append("this study has no trials yet")
    elif not complete:
        notes.append("no trial has completed yet: history, importances, parallel coordinates, "
                     "contour and slices need complete trials")

    infos = _param_infos(trials, complete)
    importances, importance_note = _importances(study, complete, infos) if complete else ({}, None)
    if importance_note and not importances:
        notes.append(importance_note)

    parallel = None
    slices: list[SliceData] = []
    contour: ContourData | None = None
    if complete:
        ordered = sorted(complete, key=lambda t: t.number)
        parallel = ParallelData(
            trials=[t.number for t in ordered],
            objective=[float(t.value) for t in ordered],  # type: ignore[arg-type]
            dimensions=[_axis(p, ordered) for p in infos],
        )
        for p in infos:
            have = [t for t in ordered if p.name in t.params]
            slices.append(SliceData(
                p.name, p.kind, p.log,
                [t.params[p.name] if p.kind != "categorical" else str(t.params[p.name]) for t in have],
                [float(t.value) for t in have],  # type: ignore[arg-type]
                [t.number for t in have],
                len(ordered) - len(have),
                [str(c) for c in p.choices] if p.choices is not None else None,
            ))
        got = _contour({p.name: p for p in infos}, ordered)
        if isinstance(got, str):
            notes.append(got)
        else:
            contour = got

    return StudyData(
        name=study.study_name,
        direction=direction,
        metric=metric,
        epochs=epochs_max,
        output_dir=str(attrs["output_dir"]) if "output_dir" in attrs else None,
        collected_at=collected_at,
        start=start,
        summary=summary,
        params=infos,
        trials=rows,
        curves=curves,
        best_so_far=best_so_far,
        importances=importances,
        importance_note=importance_note,
        parallel=parallel,
        contour=contour,
        slices=slices,
    )


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _layout(fig: go.Figure, title: str, height: int = 440, **kw: Any) -> go.Figure:
    kw.setdefault("margin", {"l": 60, "r": 30, "t": 60, "b": 50})
    fig.update_layout(title={"text": title, "x": 0.01}, template="plotly_white", height=height, **kw)
    return fig


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
    n = [p.trial for p in d.best_so_far]
    fig.add_trace(go.Scatter(x=n, y=[p.value for p in d.best_so_far], mode="markers",
                             name="complete trial", marker={"color": STATE_COLORS["COMPLETE"], "size": 6,
                                                            "opacity": 0.6},
                             hovertemplate="trial %{x}<br>%{y:.4g}<extra></extra>"), 1, 1)
    fig.add_trace(go.Scatter(x=n, y=[p.best for p in d.best_so_far], mode="lines", line_shape="hv",
                             name="best so far", line={"color": "#111111", "width": 2}), 1, 1)
    timed = [p for p in d.best_so_far if p.elapsed_s is not None]
    mins = [p.elapsed_s / 60 for p in timed]  # type: ignore[operator]
    fig.add_trace(go.Scatter(x=mins, y=[p.value for p in timed], mode="markers", showlegend=False,
                             marker={"color": STATE_COLORS["COMPLETE"], "size": 6, "opacity": 0.6},
                             customdata=[p.trial for p in timed],
                             hovertemplate="trial %{customdata}<br>%{x:.1f} min<br>%{y:.4g}<extra></extra>"),
                  1, 2)
    fig.add_trace(go.Scatter(x=mins, y=[p.best for p in timed], mode="lines", line_shape="hv",
                             showlegend=False, line={"color": "#111111", "width": 2}), 1, 2)
    fig.update_xaxes(title_text="trial number", row=1, col=1)
    fig.update_xaxes(title_text="minutes", row=1, col=2)
    fig.update_yaxes(title_text=d.metric, row=1, col=1)
    return _layout(fig, f"{d.name}: optimization history ({d.direction} {d.metric})")


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
            x=xs, y=ys, customdata=cd, mode="lines", connectgaps=False,
            name=f"{state.lower()} ({len(cs)})",
            line={"color": STATE_COLORS[state], "width": 1.2},
            # thousands of overlapping lines: fade with the count so the bundle's shape stays visible
            opacity=min(0.7, max(0.06, 5.0 / math.sqrt(len(cs)))),
            hovertemplate="trial %{customdata}<br>epoch %{x}<br>%{y:.4g}<extra>" + state.lower() + "</extra>",
        ))
    stopped = [c for c in d.curves if c.stop_reason in EARLY_STOP_REASONS or c.state == "PRUNED"]
    for reason, symbol in (("pruned", "x"), ("early_stopped", "circle-open")):
        ends = [c for c in stopped if (c.stop_reason or "pruned") == reason]
        if ends:
            fig.add_trace(go.Scatter(
                x=[c.epochs[-1] for c in ends], y=[c.values[-1] for c in ends],
                customdata=[c.trial for c in ends], mode="markers",
                name=f"{reason.replace('_', ' ')} here",
                marker={"symbol": symbol, "size": 8,
                        "color": STATE_COLORS["PRUNED"] if reason == "pruned" else "#444444"},
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
    return _layout(fig, f"{d.name}: learning curves of every trial ({d.metric} per epoch)")


def _fig_parallel(d: StudyData) -> go.Figure:
    import plotly.graph_objects as go

    p = d.parallel
    assert p is not None
    dims = []
    for a in p.dimensions:
        dim: dict[str, Any] = {"label": a.name, "values": a.values}
        if a.tickvals is not None:
            dim["tickvals"] = a.tickvals
            dim["ticktext"] = a.ticktext
        dims.append(dim)
    dims.append({"label": d.metric, "values": p.objective})
    reverse = d.direction == "minimize"
    fig = go.Figure(go.Parcoords(
        dimensions=dims,
        line={"color": p.objective, "colorscale": "Viridis", "reversescale": reverse, "showscale": True,
              "colorbar": {"title": {"text": d.metric}}},
    ))
    return _layout(fig, f"{d.name}: parallel coordinates (complete trials; n/a = param not sampled)",
                   height=500, margin={"l": 70, "r": 70, "t": 120, "b": 40})


def _fig_importances(d: StudyData) -> go.Figure:
    import plotly.graph_objects as go

    items = sorted(d.importances.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[v for _, v in items], y=[k for k, _ in items], orientation="h",
                           marker={"color": STUDY_COLORS[0]}, text=[f"{v:.2f}" for _, v in items],
                           textposition="outside", hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    fig.update_xaxes(title_text="importance (normalised)", range=[0, max([v for _, v in items] + [0.0]) * 1.15 or 1])
    title = f"{d.name}: hyperparameter importances"
    return _layout(fig, title, height=max(260, 60 + 40 * len(items)))


def _fig_contour(d: StudyData) -> go.Figure:
    import plotly.graph_objects as go

    c = d.contour
    assert c is not None
    fig = go.Figure()
    fig.add_trace(go.Contour(x=c.x_grid, y=c.y_grid, z=c.z, colorscale="Viridis",
                             reversescale=d.direction == "minimize", connectgaps=True,
                             contours={"coloring": "heatmap"}, line={"width": 0.5},
                             colorbar={"title": {"text": d.metric}},
                             hovertemplate=f"{c.x_param} %{{x:.3g}}<br>{c.y_param} %{{y}}<br>~%{{z:.4g}}<extra>smoothed</extra>"))
    fig.add_trace(go.Scatter(x=c.x, y=c.y, mode="markers", customdata=list(zip(c.trials, c.values)),
                             marker={"color": "white", "size": 6, "line": {"color": "black", "width": 1}},
                             name="trials", showlegend=False,
                             hovertemplate="trial %{customdata[0]}<br>%{x:.3g}, %{y}<br>%{customdata[1]:.4g}<extra></extra>"))
    fig.update_xaxes(title_text=c.x_param, type="log" if c.x_log else "linear")
    ytick = {"tickvals": c.y_grid} if len(c.y_grid) <= 12 else {}
    fig.update_yaxes(title_text=c.y_param, type="log" if c.y_log else "linear", **ytick)
    return _layout(fig, f"{d.name}: {d.metric} over {c.x_param} x {c.y_param} (kernel-smoothed, points = trials)")


def _fig_slices(d: StudyData) -> go.Figure:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    slices = d.slices
    cols = min(3, len(slices))
    rows = math.ceil(len(slices) / cols)
    fig = make_subplots(rows=rows, cols=cols, shared_yaxes=True, horizontal_spacing=0.05,
                        vertical_spacing=0.18,
                        subplot_titles=[s.param + (f" (absent in {s.n_missing})" if s.n_missing else "")
                                        for s in slices])
    for i, s in enumerate(slices):
        r, col = i // cols + 1, i % cols + 1
        fig.add_trace(go.Scatter(
            x=s.x, y=s.y, mode="markers", showlegend=False, customdata=s.trials,
            marker={"color": s.trials, "colorscale": "Blues", "size": 6, "opacity": 0.75,
                    "line": {"color": "#555555", "width": 0.4},
                    "colorbar": {"title": {"text": "trial"}} if i == 0 else None,
                    "showscale": i == 0},
            hovertemplate="trial %{customdata}<br>" + s.param + " %{x}<br>%{y:.4g}<extra></extra>",
        ), r, col)
        if s.kind == "categorical":
            fig.update_xaxes(type="category", categoryorder="array", categoryarray=s.choices or [],
                             row=r, col=col)
        else:
            fig.update_xaxes(type="log" if s.log else "linear", row=r, col=col)
        if col == 1:
            fig.update_yaxes(title_text=d.metric, row=r, col=col)
    return _layout(fig, f"{d.name}: slices ({d.metric} against each param, complete trials)",
                   height=140 + 300 * rows)


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
            base=[r.start.isoformat() for r in rs],  # type: ignore[union-attr]
            x=[max(0.0, (e - r.start).total_seconds() * 1000) for r, e in zip(rs, ends)],  # type: ignore[operator]
            y=[lane(r) for r in rs], orientation="h", name=state.lower(),
            marker={"color": STATE_COLORS[state], "line": {"color": "white", "width": 0.5}},
            customdata=[[r.number, r.value if r.value is not None else float("nan"),
                         r.stop_reason or "", r.epochs_run or 0] for r in rs],
            hovertemplate="trial %{customdata[0]}<br>value %{customdata[1]:.4g}<br>"
                          "%{customdata[2]}, %{customdata[3]} epochs<extra></extra>",
        ))
    fig.update_xaxes(type="date", title_text="time")
    fig.update_yaxes(categoryorder="array", categoryarray=lanes, autorange="reversed")
    return _layout(fig, f"{d.name}: timeline of trials per worker slot", barmode="overlay",
                   height=max(260, 120 + 40 * len(lanes)))


def _study_color(position: int) -> str:
    return STUDY_COLORS[position % len(STUDY_COLORS)]


def _fig_compare_best(group: CompareGroup, by_time: bool, prefix: str) -> go.Figure:
    import plotly.graph_objects as go

    fig = go.Figure()
    for pos, d in zip(group.positions, group.studies):
        pts = [p for p in d.best_so_far if not by_time or p.elapsed_s is not None]
        x = [p.elapsed_s / 60 for p in pts] if by_time else [p.trial for p in pts]  # type: ignore[operator]
        fig.add_trace(go.Scatter(x=x, y=[p.best for p in pts], mode="lines", line_shape="hv",
                                 name=d.name, line={"color": _study_color(pos), "width": 2}))
    fig.update_xaxes(title_text="minutes since the study's first trial" if by_time else "trial number")
    fig.update_yaxes(title_text=group.metric)
    what = "wall-clock time" if by_time else "trial number"
    return _layout(fig, f"{prefix}: best so far vs {what}")


def _fig_compare_dist(group: CompareGroup, prefix: str) -> go.Figure:
    import plotly.graph_objects as go

    fig = go.Figure()
    for pos, d in zip(group.positions, group.studies):
        fig.add_trace(go.Box(y=[p.value for p in d.best_so_far], name=d.name, boxpoints="all",
                             jitter=0.4, pointpos=0, boxmean=True,
                             marker={"color": _study_color(pos), "size": 4, "opacity": 0.6}))
    fig.update_yaxes(title_text=group.metric)
    return _layout(fig, f"{prefix}: final metric of complete trials", showlegend=False)


def _comparison_figures(studies: Sequence[StudyData]) -> list[tuple[str, go.Figure]]:
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


def _figure_groups(
    studies: Sequence[StudyData],
) -> tuple[list[list[tuple[str, go.Figure]]], list[tuple[str, go.Figure]]]:
    per_study: list[list[tuple[str, go.Figure]]] = []
    for d in studies:
        figs: list[tuple[str, go.Figure]] = []
        if d.best_so_far:
            figs.append((f"{d.name}: optimization history", _fig_history(d)))
        if d.curves:
            figs.append((f"{d.name}: learning curves", _fig_curves(d)))
        if d.parallel is not None and d.parallel.dimensions:
            figs.append((f"{d.name}: parallel coordinates", _fig_parallel(d)))
        if d.importances:
            figs.append((f"{d.name}: param importances", _fig_importances(d)))
        if d.contour is not None:
            figs.append((f"{d.name}: lr x batch_size contour", _fig_contour(d)))
        if d.slices:
            figs.append((f"{d.name}: slices", _fig_slices(d)))
        if any(r.start is not None for r in d.trials):
            figs.append((f"{d.name}: timeline", _fig_timeline(d)))
        per_study.append(figs)
    return per_study, _comparison_figures(studies)


def build_figures(studies: Sequence[StudyData]) -> list[tuple[str, go.Figure]]:
    """Named plotly figures: per study, then a comparison when there are two or more studies.

    Per study (each only when it has the data): optimization history, learning curves,
    parallel coordinates, param importances, lr x batch_size contour, slices, timeline.
    Comparison: best so far vs trial number and vs wall-clock time, final metric distributions;
    when the studies do not all share one metric and direction, these three are drawn once per
    (metric, direction) group, named ``Comparison (METRIC, DIRECTION): ...``.
    """
    per_study, comparison = _figure_groups(studies)
    return [f for group in per_study for f in group] + comparison


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:24px auto;
max-width:1400px;padding:0 16px;color:#222}
h1{font-size:1.6em;margin-bottom:0}h2{margin-top:2em;border-bottom:2px solid #ddd;padding-bottom:4px}
h3{font-size:1.05em;margin:1.6em 0 .2em;color:#444}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #ddd;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f5f5f5;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.meta{color:#666;font-size:.9em}.note{color:#8a5a00;background:#fff8e5;padding:6px 10px;
border-left:3px solid #e0a800;margin:.4em 0}nav a{margin-right:1em}code{background:#f3f3f3;padding:0 3px}
.figure{margin-bottom:1.5em}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return _fmt_num(v) if (abs(v) < 1e-3 and v != 0) else f"{v:.6g}"
    return str(v)


def _fmt_secs(s: float | None) -> str:
    if s is None:
        return "—"
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {sec:02d}s" if h else f"{m}m {sec:02d}s"


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt_value(v)}" for k, v in params.items()) or "—"


def _summary_html(d: StudyData) -> str:
    s = d.summary
    rows: list[tuple[str, str]] = [
        ("objective", f"{d.direction} {d.metric}"),
        ("trials", f"{s.n_trials} total: " + ", ".join(f"{v} {k.lower()}" for k, v in s.by_state.items() if v)
         if s.n_trials else "0 (no trials yet)"),
        ("best value", f"{_fmt_value(s.best_value)} (trial {s.best_trial})" if s.best_trial is not None else "—"),
        ("best params", _params_text(s.best_params)),
        ("wall time", _fmt_secs(s.total_wall_s)),
        ("per-trial time", f"mean {_fmt_secs(s.mean_trial_s)}, median {_fmt_secs(s.median_trial_s)}"
         if s.mean_trial_s is not None else "—"),
        ("epochs run", f"{s.epochs_run}" + (f" (max {s.epochs_max} per trial)" if s.epochs_max else "")),
    ]
    if s.epochs_max:
        full = s.epochs_run + s.epochs_saved
        pct = f" = {100 * s.epochs_saved / full:.0f}% of the epochs a full run would take" if full else ""
        detail = ", ".join(f"{v} by {k.replace('_', ' ')}" for k, v in s.epochs_saved_by_reason.items())
        rows.append(("epochs saved", f"{s.epochs_saved}" + (f" ({detail})" if detail else "") + pct))
    if s.stop_reasons:
        rows.append(("stop reasons", ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(s.stop_reasons.items()))))
    if s.workers or s.slots:
        rows.append(("workers", f"{len(s.workers)} worker processes, {len(s.slots)} slots"))
    if s.devices:
        rows.append(("devices", ", ".join(s.devices)))
    if d.output_dir:
        rows.append(("output dir", d.output_dir))
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    out = f'<table class="summary">{body}</table>'
    notes = [n for n in s.notes if s.n_trials]  # an empty study gets its own paragraph instead
    for note in notes + ([d.importance_note] if d.importance_note and d.importances else []):
        out += f'<p class="note">{_e(note)}</p>'
    return out


def _top_trials_html(d: StudyData, k: int = 10) -> str:
    done = [r for r in d.trials if r.state == "COMPLETE" and r.value is not None and math.isfinite(r.value)]
    if not done:
        return ""
    done.sort(key=lambda r: (-(r.value or 0.0) if d.direction == "maximize" else (r.value or 0.0), r.number))
    names = [p.name for p in d.params]
    head = "".join(f"<th>{_e(h)}</th>" for h in ["trial", d.metric, *names, "epochs", "stop", "duration", "worker"])
    body = []
    for r in done[:k]:
        cells = [f'<td class="num">{r.number}</td>', f'<td class="num">{_e(_fmt_value(r.value))}</td>']
        cells += [f'<td class="num">{_e(_fmt_value(r.params[n])) if n in r.params else "—"}</td>' for n in names]
        cells += [f'<td class="num">{_e(r.epochs_run if r.epochs_run is not None else "—")}</td>',
                  f"<td>{_e(r.stop_reason or '—')}</td>", f'<td class="num">{_e(_fmt_secs(r.duration_s))}</td>',
                  f"<td>{_e(r.worker or '—')}</td>"]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<h3>Top {min(k, len(done))} trials</h3><table class=\"trials\"><tr>{head}</tr>"
            + "".join(body) + "</table>")


def _comparison_note_html(studies: Sequence[StudyData]) -> str:
    """A note naming the groups when studies with different metrics are compared per metric."""
    groups = compare_groups(studies)
    if len(groups) < 2:
        return ""
    listing = "; ".join(f"{g.metric} ({g.direction}): " + ", ".join(d.name for d in g.studies) for g in groups)
    return (f'<p class="note">These studies do not all optimise the same metric, so each metric is '
            f"compared on its own axes: {_e(listing)}.</p>")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:80] or "figure"


def _version() -> str:
    from hpsearch import __version__

    return str(__version__)


def write_report(
    studies: Sequence[optuna.Study],
    out: str | Path,
    png_dir: str | Path | None = None,
) -> Path:
    """Write one self-contained HTML report of ``studies`` to ``out`` and return its path.

    The file inlines plotly.js once and makes no network request when opened. With ``png_dir``,
    each figure is also written as a PNG there (needs the ``kaleido`` package and a Chrome or
    Chromium on the machine); if that is not possible an :class:`HpsearchError` is raised after
    the HTML has been written.
    """
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    data = [collect_study(s) for s in studies]
    per_study, comparison = _figure_groups(data)
    figs = [f for group in per_study for f in group] + comparison
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    config = {"displaylogo": False, "responsive": True}
    counter = iter(range(len(figs)))

    def figure_div(name: str, fig: go.Figure, heading: str) -> str:
        idx = next(counter)
        div = pio.to_html(fig, full_html=False, include_plotlyjs=False, include_mathjax=False,
                          config=config, div_id=f"fig-{idx}",
                          default_height=f"{fig.layout.height or 440}px", validate=False)
        anchor = f"{_slug(name)}-{idx}"
        return f'<div class="figure" id="{anchor}"><h3>{_e(heading)}</h3>{div}</div>'

    title = "hpsearch report: " + ", ".join(d.name for d in data) if data else "hpsearch report"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{CSS}</style>",
        # plotly.js inlined exactly once; 'local' keeps it from ever looking for MathJax online
        "<script type=\"text/javascript\">window.PlotlyConfig = {MathJaxConfig: 'local'};</script>",
        f'<script type="text/javascript" id="plotlyjs">{get_plotlyjs()}</script>',
        "</head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">generated {_e(dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S"))} by hpsearch '
        f"{_e(_version())} with optuna {_e(optuna.__version__)}; {len(figs)} figures; works offline</p>",
    ]
    if not data:
        parts.append('<p class="note">No study given.</p>')
    if len(data) > 1:
        links = "".join(f'<a href="#study-{i}">{_e(d.name)}</a>' for i, d in enumerate(data))
        parts.append(f"<nav>{links}<a href=\"#comparison\">comparison</a></nav>")
    for idx, d in enumerate(data):
        parts.append(f'<section id="study-{idx}"><h2>Study {_e(d.name)}</h2>')
        parts.append(_summary_html(d))
        if d.summary.n_trials == 0:
            parts.append('<p class="note">This study has no trials yet: nothing to plot. '
                         "Run it (<code>hpsearch run STUDY.yaml</code>) and build the report again.</p>")
        parts.append(_top_trials_html(d))
        # the section already names the study
        parts.extend(figure_div(name, fig, name.split(": ", 1)[-1]) for name, fig in per_study[idx])
        parts.append("</section>")
    if comparison:
        parts.append('<section id="comparison"><h2>Comparison</h2>')
        parts.append(_comparison_note_html(data))
        parts.extend(figure_div(name, fig, name.removeprefix("Comparison: ")) for name, fig in comparison)
        parts.append("</section>")
    parts.append("</body></html>")
    out.write_text("\n".join(parts), encoding="utf-8")
    logger.info("wrote report %s (%d figures)", out, len(figs))

    if png_dir is not None:
        _write_pngs(figs, Path(png_dir), out)
    return out


def _write_pngs(figs: list[tuple[str, go.Figure]], png_dir: Path, html_path: Path) -> list[Path]:
    try:
        import kaleido  # noqa: F401
    except ImportError:
        raise HpsearchError(
            f"PNG export needs kaleido, which is not installed: pip install kaleido "
            f"(the HTML report was written to {html_path})"
        ) from None
    import plotly.io as pio

    png_dir.mkdir(parents=True, exist_ok=True)
    paths = [png_dir / f"{i:02d}-{_slug(name)}.png" for i, (name, _) in enumerate(figs)]
    if not figs:
        return paths
    # kaleido's browser driver logs its temp-dir housekeeping at INFO, some of it at interpreter
    # exit: keep those loggers at WARNING for the rest of the process
    for name in ("choreographer", "kaleido", "logistro"):
        lg = logging.getLogger(name)
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        # one kaleido session for all figures: starting Chrome per figure costs seconds each
        pio.write_images([f for _, f in figs], paths, width=1200,
                         height=[int(f.layout.height or 440) for _, f in figs])
    except Exception as e:  # kaleido surfaces Chrome problems as assorted exception types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HpsearchError(
            f"PNG export failed ({first}); kaleido needs Chrome or Chromium: apt-get install chromium "
            f"or set BROWSER_PATH (the HTML report was written to {html_path})"
        ) from e
    logger.info("wrote %d PNG figures to %s", len(paths), png_dir)
    return paths
