"""The search space as the complete trials cover it: params, parallel-coordinate axes, the lr x batch-size
contour and the slices (plain data, see :mod:`hpsearch.results.studydata`)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial

from hpsearch.results import records
from hpsearch.results.studydata import Axis, ContourData, ParallelData, ParamInfo, SliceData

__all__ = ["param_infos", "parallel", "slices", "contour", "format_number", "NA"]

NA = "n/a"
CONTOUR_PARAMS = ("lr", "batch_size")
CONTOUR_GRID = 48
CONTOUR_BANDWIDTH = 0.12  # of each axis's span


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


def format_number(x: float) -> str:
    """A short label: ``0``, ``1e-4``, ``0.0123``, ``2e5``."""
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
        return pos, [format_number(10**p) for p in pos]
    if hi <= lo:
        return [lo], [format_number(lo)]
    pos = [lo + (hi - lo) * k / 4 for k in range(5)]
    return pos, [format_number(p) for p in pos]


def _categorical_axis(info: ParamInfo, raw: list[Any], n_missing: int) -> Axis:
    labels = [str(c) for c in info.choices or []]
    index = {repr(c): i for i, c in enumerate(info.choices or [])}
    values = [float(index.get(repr(v), len(labels))) if v is not None else float(len(labels)) for v in raw]
    tickvals = [float(i) for i in range(len(labels))]
    if n_missing:
        tickvals.append(float(len(labels)))
        labels.append(NA)
    return Axis(info.name, values, tickvals, labels, n_missing)


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
    return Axis(info.name, values, tickvals, ticktext, n_missing)


def parallel(ordered: Sequence[FrozenTrial], infos: Sequence[ParamInfo]) -> ParallelData:
    """One line per complete trial (in number order), one axis per param."""
    return ParallelData(
        trials=[t.number for t in ordered],
        objective=[float(t.value) for t in ordered],  # type: ignore[arg-type]
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
            [float(t.value) for t in have],  # type: ignore[arg-type]
            [t.number for t in have],
            len(ordered) - len(have),
            [str(c) for c in p.choices] if p.choices is not None else None,
        ))
    return out


def _contour_points(infos: dict[str, ParamInfo], complete: Sequence[FrozenTrial]) -> list[FrozenTrial] | str:
    """The trials the contour is drawn from, or the reason there is no contour."""
    xp, yp = CONTOUR_PARAMS
    missing = [p for p in CONTOUR_PARAMS if p not in infos]
    if missing:
        return f"lr x batch_size contour skipped: the study has no {' or '.join(missing)} param"
    pts = [t for t in complete if xp in t.params and yp in t.params
           and records.as_float(t.params[xp]) is not None and records.as_float(t.params[yp]) is not None]
    if len(pts) < 3:
        return "lr x batch_size contour skipped: fewer than 3 complete trials with numeric lr and batch_size"
    if len({t.params[xp] for t in pts}) < 2 or len({t.params[yp] for t in pts}) < 2:
        return "lr x batch_size contour skipped: lr or batch_size did not vary"
    return pts


def _smooth(px: Any, py: Any, z: Any, gx: Any, gy: Any) -> Any:
    """Gaussian-kernel average of ``z`` on the grid ``gy x gx``, in axis-normalised coordinates.

    Smooth, and bounded by the data (inverse-distance weighting spikes at every point).
    """
    import numpy as np  # numpy ships with optuna

    sx = (px.max() - px.min()) or 1.0
    sy = (py.max() - py.min()) or 1.0
    wx = np.exp(-0.5 * ((gx[:, None] - px[None, :]) / sx / CONTOUR_BANDWIDTH) ** 2)  # (GX, N)
    wy = np.exp(-0.5 * ((gy[:, None] - py[None, :]) / sy / CONTOUR_BANDWIDTH) ** 2)  # (GY, N)
    w = wy[:, None, :] * wx[None, :, :]  # (GY, GX, N)
    num = (w * z[None, None, :]).sum(-1)
    den = w.sum(-1)
    return np.where(den > 1e-12, num / np.maximum(den, 1e-300), np.nan)


def contour(infos: Sequence[ParamInfo], complete: Sequence[FrozenTrial]) -> ContourData | str:
    """Smoothed objective over lr x batch_size of the ``complete`` trials (finite values), or why there is none."""
    import numpy as np  # numpy ships with optuna

    by_name = {p.name: p for p in infos}
    pts = _contour_points(by_name, complete)
    if isinstance(pts, str):
        return pts
    xp, yp = CONTOUR_PARAMS
    xs = [float(t.params[xp]) for t in pts]
    ys = [float(t.params[yp]) for t in pts]
    x_log = all(v > 0 for v in xs) and (by_name[xp].log or max(xs) / min(xs) >= 10)
    y_log = all(v > 0 for v in ys) and (by_name[yp].log or by_name[yp].kind == "categorical"
                                         or max(ys) / min(ys) >= 10)
    px = np.log10(np.asarray(xs)) if x_log else np.asarray(xs)
    py = np.log2(np.asarray(ys)) if y_log else np.asarray(ys)
    z = np.asarray([float(t.value) for t in pts])  # type: ignore[arg-type]
    gx = np.linspace(px.min(), px.max(), CONTOUR_GRID)
    if by_name[yp].kind == "categorical" or len(set(ys)) <= 12:
        gy = np.unique(py)
    else:
        gy = np.linspace(py.min(), py.max(), CONTOUR_GRID // 2)
    grid = _smooth(px, py, z, gx, gy)
    return ContourData(
        xp, yp, bool(x_log), bool(y_log),
        [float(v) for v in (10**gx if x_log else gx)], [float(v) for v in (2**gy if y_log else gy)],
        [[float(v) for v in row] for row in grid],
        xs, ys, [float(v) for v in z], [t.number for t in pts],
    )
