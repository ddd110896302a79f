"""The report's tables of trials: the top trials of one metric (feasible ones, with their costs) and the Pareto set
of several objectives; and the cell formatting the report's tables share."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

from hpsearch import names
from hpsearch.results.numbers import format_number
from hpsearch.results.studydata import StudyData, TrialRow

MAX_LISTED = 50  # Pareto-set trials the summary names and the table lists (three objectives can keep many)


def escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return format_number(v)
    return str(v)


def fmt_secs(s: float | None) -> str:
    if s is None:
        return "—"
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {sec:02d}s" if h else f"{m}m {sec:02d}s"


def params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={fmt_value(v)}" for k, v in params.items()) or "—"


def _cost_names(d: StudyData, rows: Sequence[TrialRow]) -> list[str]:
    """The measured costs any of ``rows`` has, in names.COSTS order, less those that are objectives (a column
    already)."""
    objectives = {metric for metric, _ in d.summary.objectives} | {d.metric}
    return [c for c in names.COSTS if c not in objectives and any(c in r.costs for r in rows)]


def _trials_table(d: StudyData, heading: str, rows: Sequence[TrialRow], metrics: list[str]) -> str:
    """One row per trial: its number, each objective's value, params, costs, epochs, stop reason, time, worker."""
    params = [p.name for p in d.params]
    costs = _cost_names(d, rows)
    head = "".join(f"<th>{escape(h)}</th>" for h in ["trial", *metrics, *params, *costs, "epochs", "stop", "duration",
                                                   "worker"])
    body = []
    for r in rows:
        values = r.values or [r.value]
        cells = [f'<td class="num">{r.number}</td>']
        cells += [f'<td class="num">{escape(fmt_value(v)) if v is not None else "—"}</td>'
                  for v in values[:len(metrics)]]
        cells += [f'<td class="num">{escape(fmt_value(r.params[n])) if n in r.params else "—"}</td>' for n in params]
        cells += [f'<td class="num">{escape(fmt_value(r.costs[c])) if c in r.costs else "—"}</td>' for c in costs]
        cells += [f'<td class="num">{escape(r.epochs_run if r.epochs_run is not None else "—")}</td>',
                  f"<td>{escape(r.stop_reason or '—')}</td>", f'<td class="num">{escape(fmt_secs(r.duration_s))}</td>',
                  f"<td>{escape(r.worker or '—')}</td>"]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<h3>{escape(heading)}</h3><table class=\"trials\"><tr>{head}</tr>" + "".join(body) + "</table>"


def top_trials_html(d: StudyData, k: int = 10) -> str:
    """The best k complete feasible trials; with several objectives the Pareto set instead."""
    if d.pareto is not None:
        return _pareto_table_html(d)
    complete = [r for r in d.trials if r.state == "COMPLETE" and r.value is not None and math.isfinite(r.value)]
    done = [r for r in complete if r.feasible]
    if not done:
        return ""
    done.sort(key=lambda r: (-(r.value or 0.0) if d.direction == "maximize" else (r.value or 0.0), r.number))
    heading = f"Top {min(k, len(done))} trials"
    if d.summary.infeasible is not None:  # a constrained study: the table holds the trials within the bounds
        left_out = len(complete) - len(done)
        heading = f"Top {min(k, len(done))} feasible trials" + (f" ({left_out} infeasible left out)" if left_out else "")
    return _trials_table(d, heading, done[:k], [d.metric])


def _pareto_table_html(d: StudyData) -> str:
    """The trials of the Pareto set, by number: each objective's value, params and costs."""
    if d.pareto is None:
        return ""
    front = {q.number for q in d.pareto.points if q.on_front}
    rows = sorted((r for r in d.trials if r.number in front), key=lambda r: r.number)
    if not rows:
        return ""
    heading = f"Pareto set ({len(rows)} trial{'' if len(rows) == 1 else 's'}" + (
        f", the first {MAX_LISTED} listed)" if len(rows) > MAX_LISTED else ")")
    return _trials_table(d, heading, rows[:MAX_LISTED], d.pareto.metrics)
