"""The search space as the complete trials cover it: params, parallel-coordinate axes, the lr x batch-size
contour and the slices (plain data, see :mod:`hpsearch.results.studydata`)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial

from hpsearch import records
from hpsearch.results.numbers import format_number
from hpsearch.results.studydata import Axis, ContourData, ParallelData, ParamInfo, SliceData

__all__ = ["param_infos", "parallel", "slices", "contour", "NA"]

NA = "n/a"
CONTOUR_PARAMS = ("lr", "batch_size")
CONTOUR_GRID = 48
CONTOUR_BANDWIDTH = 0.12  # of each axis's span
CONTOUR_REACH = math.exp(-0.5 * 2.5**2)  # kernel weight 2.5 bandwidths away
AXIS_PAD = 0.05  # of a parallel-coordinates axis's span, beyond its end ticks


def param_infos(trials: Sequence[FrozenTrial], complete: Sequence[FrozenTrial]) -> list[ParamInfo]:
    """Every param any trial has, with its distribution and how many trials lack it."""
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


def _nice_ticks(lo: float, hi: float, log: bool) -> tuple[list[float], list[str]]:
    """Tick positions (plot units) and labels (param units) for a numeric axis."""
    if log:
        a, b = math.floor(lo + 1e-9), math.ceil(hi - 1e-9)
        pos = [float(k) for k in range(a, b + 1) if lo - 1e-9 <= k <= hi + 1e-9]
        if len(pos) < 2:
            pos = sorted({lo, hi})
        return pos, [format_number(10**p) for p in pos]
    if hi <= lo:
        return [lo], [format_number(lo)]
    pos = [lo + (hi - lo) * k / 4 for k in range(5)]
    return pos, [format_number(p) for p in pos]


def _padded(lo: float, hi: float) -> tuple[float, float]:
    """An axis range a little wider than its ticks: a tick label at the very end of a parallel-coordinates
    axis is clipped or runs into the axis title."""
    pad = AXIS_PAD * ((hi - lo) or 1.0)
    return lo - pad, hi + pad


def _categorical_axis(info: ParamInfo, raw: list[Any], n_missing: int) -> Axis:
    labels = [str(c) for c in info.choices or []]
    index = {repr(c): i for i, c in enumerate(info.choices or [])}
    values = [float(index.get(repr(v), len(labels))) if v is not None else float(len(labels)) for v in raw]
    tickvals = [float(i) for i in range(len(labels))]
    if n_missing:
        tickvals.append(float(len(labels)))
        labels.append(NA)
    return Axis(info.name, values, tickvals, labels, n_missing, _padded(0.0, tickvals[-1] if tickvals else 0.0))


def _axis(info: ParamInfo, complete: Sequence[FrozenTrial]) -> Axis:
    """Plot positions of one param over the complete trials; a trial without it sits at the ``n/a`` tick."""
    raw = [t.params.get(info.name) for t in complete]
    n_missing = sum(v is None for v in raw)
    if info.kind == "categorical":
        return _categorical_axis(info, raw, n_missing)
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
    ends = tickvals + values
    return Axis(info.name, values, tickvals, ticktext, n_missing, _padded(min(ends), max(ends)))


def parallel(ordered: Sequence[FrozenTrial], infos: Sequence[ParamInfo]) -> ParallelData:
    """One line per complete trial (in number order), one axis per param."""
    return ParallelData(
        trials=[t.number for t in ordered],
        objective=[float(records.first_value(t)) for t in ordered],  # type: ignore[arg-type]
        dimensions=[_axis(p, ordered) for p in infos],
    )


def slices(ordered: Sequence[FrozenTrial], infos: Sequence[ParamInfo]) -> list[SliceData]:
    """The objective against each param, over the complete trials that have it."""
    out = []
    for p in infos:
        have = [t for t in ordered if p.name in t.params]
        out.append(SliceData(
            p.name, p.kind, p.log,
            [t.params[p.name] if p.kind != "categorical" else str(t.params[p.name]) for t in have],
            [float(records.first_value(t)) for t in have],  # type: ignore[arg-type]
            [t.number for t in have],
            len(ordered) - len(have),
            [str(c) for c in p.choices] if p.choices is not None else None,
            p.low, p.high,
        ))
    return out


def _contour_points(infos: dict[str, ParamInfo], complete: Sequence[FrozenTrial]) -> list[FrozenTrial] | str:
    """The trials the contour is drawn from, or the reason there is no contour."""
    xp, yp = CONTOUR_PARAMS
    missing = [p for p in CONTOUR_PARAMS if p not in infos]
    if missing:
        return f"lr x batch_size contour skipped: the study has no {' or '.join(missing)} param"

    def usable(t: FrozenTrial, name: str) -> bool:
        return name in t.params and (infos[name].kind == "categorical" or records.as_float(t.params[name]) is not None)

    pts = [t for t in complete if usable(t, xp) and usable(t, yp)]
    if len(pts) < 3:
        return "lr x batch_size contour skipped: fewer than 3 complete trials with lr and batch_size"
    if len({repr(t.params[xp]) for t in pts}) < 2 or len({repr(t.params[yp]) for t in pts}) < 2:
        return "lr x batch_size contour skipped: lr or batch_size did not vary"
    return pts


def _positions(info: ParamInfo, raw: list[Any], size: int) -> tuple[Any, Any, list[Any], bool, list[str] | None]:
    """One contour axis: the points' positions, the grid's positions and its values in param units, whether
    it is log-scaled, and its categories (a categorical param: positions are indices into them)."""
    import numpy as np  # numpy ships with optuna

    if info.kind == "categorical":
        taken = {repr(v) for v in raw}
        cats = [c for c in info.choices or [] if repr(c) in taken]
        index = {repr(c): i for i, c in enumerate(cats)}
        labels = [str(c) for c in cats]
        pos = np.asarray([float(index[repr(v)]) for v in raw])
        return pos, np.arange(len(cats), dtype=float), labels, False, labels
    vals = np.asarray([float(v) for v in raw])
    log = bool((vals > 0).all() and (info.log or vals.max() / vals.min() >= 10))
    pos = np.log10(vals) if log else vals
    grid = np.linspace(pos.min(), pos.max(), size)
    return pos, grid, [float(v) for v in (10**grid if log else grid)], log, None


def _kernel(grid: Any, pos: Any, categorical: bool) -> Any:
    """Weights (grid x points) along one axis: Gaussian in axis-normalised units; a category weighs only
    its own points, so the smoothing never blends categories."""
    import numpy as np  # numpy ships with optuna

    if categorical:
        return (grid[:, None] == pos[None, :]).astype(float)
    span = (pos.max() - pos.min()) or 1.0
    return np.exp(-0.5 * ((grid[:, None] - pos[None, :]) / span / CONTOUR_BANDWIDTH) ** 2)


def _smooth(wx: Any, wy: Any, z: Any) -> Any:
    """Kernel average of ``z`` on the grid (GY x GX) from per-axis weights: smooth, and bounded by the
    data (inverse-distance weighting spikes at every point)."""
    import numpy as np  # numpy ships with optuna

    w = wy[:, None, :] * wx[None, :, :]  # (GY, GX, N)
    num = (w * z[None, None, :]).sum(-1)
    den = w.sum(-1)
    # a cell with no trial within 2.5 bandwidths stays blank: the average would paint far from the data
    near = w.max(-1) >= CONTOUR_REACH
    return np.where(near & (den > 1e-12), num / np.maximum(den, 1e-300), np.nan)


def contour(infos: Sequence[ParamInfo], complete: Sequence[FrozenTrial]) -> ContourData | str:
    """Smoothed objective over lr x batch_size of the ``complete`` trials (finite values), or why there is none."""
    import numpy as np  # numpy ships with optuna

    by_name = {p.name: p for p in infos}
    pts = _contour_points(by_name, complete)
    if isinstance(pts, str):
        return pts
    xp, yp = CONTOUR_PARAMS
    xs, ys = [t.params[xp] for t in pts], [t.params[yp] for t in pts]
    px, gx, x_grid, x_log, x_cats = _positions(by_name[xp], xs, CONTOUR_GRID)
    py, gy, y_grid, y_log, y_cats = _positions(by_name[yp], ys, CONTOUR_GRID // 2)
    z = np.asarray([float(records.first_value(t)) for t in pts])  # type: ignore[arg-type]
    grid = _smooth(_kernel(gx, px, x_cats is not None), _kernel(gy, py, y_cats is not None), z)
    return ContourData(
        xp, yp, x_log, y_log, x_grid, y_grid,
        [[float(v) for v in row] for row in grid],
        [str(v) for v in xs] if x_cats else [float(v) for v in xs],
        [str(v) for v in ys] if y_cats else [float(v) for v in ys],
        [float(v) for v in z], [t.number for t in pts], x_cats, y_cats,
    )
