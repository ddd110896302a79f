"""The plain data a report is made of: dataclasses, lists and dicts read once from a study (no plotly).

:mod:`hpsearch.results.collect` fills them; :mod:`hpsearch.results.figures` and
:mod:`hpsearch.results.html` draw them; tests check them directly.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["STATES", "StudyData", "Summary", "TrialRow", "Curve", "BestPoint", "Session", "ParamInfo", "Axis", "ParallelData",
           "ContourData", "SliceData", "CompareGroup", "compare_groups"]

# Trial states in the order tables and figures list them.
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


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
    values: list[float] = field(default_factory=list)  # one per objective (empty while it has none)
    feasible: bool = True  # no constraint broken
    costs: dict[str, float] = field(default_factory=dict)  # what the model cost (records.costs)


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
class Session:
    """One run session: the trials one `hpsearch run` started (trialsets.run_sessions)."""

    start: dt.datetime
    end: dt.datetime
    wall_s: float  # first start to last end of the session
    busy_s: float  # time at least one trial ran
    n_trials: int
    workers: list[str]  # the "host:pid" of its worker processes


@dataclass
class Summary:
    """Headline numbers of one study."""

    n_trials: int
    by_state: dict[str, int]
    best_value: float | None
    best_trial: int | None
    best_params: dict[str, Any]
    busy_s: float | None  # time at least one trial ran, summed over sessions (idle gaps left out)
    sessions: list[Session]
    mean_trial_s: float | None
    median_trial_s: float | None
    epochs_max: int | None
    epochs_spent: int  # study-wide, as the epoch budget counts them (hpsearch.budget.spent)
    budget_epochs: int | None  # the study-wide epoch budget the last run set
    epochs_saved: int
    epochs_saved_by_reason: dict[str, int]
    stop_reasons: dict[str, int]
    workers: list[str]
    slots: list[int]
    devices: list[str]
    notes: list[str] = field(default_factory=list)
    objectives: list[tuple[str, str]] = field(default_factory=list)  # (metric, direction) each; empty for one
    constraints: dict[str, dict[str, float | None]] = field(default_factory=dict)  # {name: {min, max}}
    infeasible: int | None = None  # finished trials that broke a constraint; None for a study without any


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
    range: tuple[float, float]  # plot units, padded so the end ticks sit inside the axis


@dataclass
class ParallelData:
    """Parallel coordinates: one line per complete trial, one axis per param, objective last."""

    trials: list[int]
    objective: list[float]
    dimensions: list[Axis]


@dataclass
class ContourData:
    """Objective over lr x batch size, smoothed onto a grid, plus the trials as points.

    A categorical param is an axis of its categories (labels, in the declared order of the choices the
    trials took), and each category is smoothed on its own: values never blend across categories.
    """

    x_param: str
    y_param: str
    x_log: bool
    y_log: bool
    x_grid: list[Any]  # param units, or the category labels
    y_grid: list[Any]
    z: list[list[float]]  # z[j][i] at (x_grid[i], y_grid[j])
    x: list[Any]
    y: list[Any]
    values: list[float]
    trials: list[int]
    x_categories: list[str] | None = None
    y_categories: list[str] | None = None


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
    low: float | None = None  # numeric: the search space's bounds, the x axis's extent
    high: float | None = None


@dataclass
class ParetoPoint:
    """One complete trial in objective space."""

    number: int
    values: list[float]
    feasible: bool
    on_front: bool


@dataclass
class ParetoData:
    """The complete trials of a study of several objectives, with the Pareto set marked (infeasible trials apart)."""

    metrics: list[str]
    directions: list[str]
    points: list[ParetoPoint]
    infeasible: int  # finished trials that broke a constraint, drawn or not (refused ones have no values)


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
    # several objectives and constraints (results/pareto.py); a study of one metric leaves them empty
    pareto: ParetoData | None = None
    objective_importances: dict[str, dict[str, float]] = field(default_factory=dict)  # per objective after the first


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
