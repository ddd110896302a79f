"""Several objectives in the report: the Pareto front (2-D, or each pair of three; infeasible trials greyed) and
the param importances of every objective. Collection (plain data) and figures; plotly is imported lazily."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial

from hpsearch import records, trialsets
from hpsearch.results.importances import param_importances
from hpsearch.results.numbers import HOVER
from hpsearch.results.studydata import ParetoData, ParetoPoint, StudyData
from hpsearch.results.traces import column

if TYPE_CHECKING:
    import plotly.graph_objects as go

FRONT_COLOR, DOMINATED_COLOR, INFEASIBLE_COLOR = "#d62728", "#1f77b4", "#bbbbbb"


def collect_pareto(study: optuna.Study, trials: Sequence[FrozenTrial]) -> ParetoData | None:
    """The complete trials in objective space, the Pareto set marked; None for a study of one objective."""
    goals = records.goals_of(study)
    if len(goals) < 2:
        return None
    directions = [d for _, d in goals]
    front = {t.number for t in trialsets.pareto_front(trials, directions)}
    points = [ParetoPoint(t.number, list(t.values), records.is_feasible(t), t.number in front)
              for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.values
              and len(t.values) == len(goals)]
    return ParetoData([m for m, _ in goals], directions, points, trialsets.infeasible_count(trials))


def objective_importances(study: optuna.Study, target: optuna.Study | None,
                          varying: list[str]) -> dict[str, dict[str, float]]:
    """Param importances for each objective after the first (the report's usual importances are the first's), over
    the complete feasible trials in `target` (collect.importance_study; None with fewer than 2)."""
    goals = records.goals_of(study)
    if len(goals) < 2 or target is None or not varying:
        return {}
    found: dict[str, dict[str, float]] = {}
    for i, (metric, _) in enumerate(goals[1:], start=1):
        try:
            found[metric], _ = param_importances(target, varying, i)
        except (ValueError, RuntimeError, ZeroDivisionError):
            continue  # e.g. a constant objective: no importance to show
    return found


def _pair_figure(d: StudyData, p: ParetoData, i: int, j: int) -> go.Figure:
    import plotly.graph_objects as go

    fig = go.Figure()
    groups = [("Pareto set", FRONT_COLOR, lambda q: q.on_front),
              ("dominated", DOMINATED_COLOR, lambda q: q.feasible and not q.on_front),
              ("infeasible", INFEASIBLE_COLOR, lambda q: not q.feasible)]
    for name, color, keep in groups:
        pts = [q for q in p.points if keep(q)]
        if not pts:
            continue
        fig.add_trace(go.Scatter(
            x=column([q.values[i] for q in pts]), y=column([q.values[j] for q in pts]), mode="markers", name=name,
            marker={"color": color, "size": 10 if name == "Pareto set" else 7},
            customdata=column([q.number for q in pts]),
            hovertemplate=(f"trial %{{customdata}}<br>{p.metrics[i]} %{{x:{HOVER}}}<br>{p.metrics[j]} "
                           f"%{{y:{HOVER}}}<extra>{name}</extra>")))
    front = sorted((q for q in p.points if q.on_front), key=lambda q: q.values[i])
    if len(front) > 1:  # the front as a step line, to read the trade-off along it
        fig.add_trace(go.Scatter(x=column([q.values[i] for q in front]), y=column([q.values[j] for q in front]),
                                 mode="lines",
                                 line={"color": FRONT_COLOR, "width": 1, "shape": "hv"}, showlegend=False,
                                 hoverinfo="skip"))
    fig.update_xaxes(title_text=f"{p.metrics[i]} ({p.directions[i]})")
    fig.update_yaxes(title_text=f"{p.metrics[j]} ({p.directions[j]})")
    grey = f"; {p.infeasible} infeasible (grey where drawn)" if p.infeasible else ""
    fig.update_layout(title={"text": f"{d.name}: Pareto front, {p.metrics[i]} x {p.metrics[j]} "
                                     f"({sum(q.on_front for q in p.points)} on the front{grey})", "x": 0.01},
                      template="plotly_white", height=460, margin={"l": 60, "r": 30, "t": 60, "b": 50})
    return fig


def _importance_figure(d: StudyData, metric: str, importances: dict[str, float]) -> go.Figure:
    import plotly.graph_objects as go

    items = sorted(importances.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[v for _, v in items], y=[k for k, _ in items], orientation="h",
                           marker={"color": DOMINATED_COLOR},
                           hovertemplate="%{y}: %{x:" + HOVER + "}<extra></extra>"))
    fig.update_xaxes(title_text="importance (normalised)", range=[0, max([v for _, v in items] + [0.0]) * 1.15 or 1])
    fig.update_layout(title={"text": f"{d.name}: hyperparameter importances for {metric}", "x": 0.01},
                      template="plotly_white", height=max(260, 60 + 40 * len(items)))
    return fig


def pareto_figures(d: StudyData) -> list[tuple[str, go.Figure]]:
    """The Pareto front of each pair of objectives, then the importances of the objectives after the first."""
    figs: list[tuple[str, go.Figure]] = []
    p = d.pareto
    if p is not None and p.points:
        for i, j in itertools.combinations(range(len(p.metrics)), 2):
            figs.append((f"{d.name}: Pareto front {p.metrics[i]} x {p.metrics[j]}", _pair_figure(d, p, i, j)))
    for metric, importances in d.objective_importances.items():
        figs.append((f"{d.name}: param importances for {metric}", _importance_figure(d, metric, importances)))
    return figs
