"""The report page: one self-contained HTML file (plotly.js inlined once, no network access needed to view
it) of collected studies and their figures, and optionally one PNG per figure."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import optuna

from hpsearch.errors import HpsearchError
from hpsearch.results.collect import collect_study
from hpsearch.results.figures import FigureSections, NamedFigure, figure_sections
from hpsearch.results.studydata import StudyData, Summary, compare_groups
from hpsearch.results.tables import MAX_LISTED, top_trials_html
from hpsearch.results.tables import escape as _e, fmt_secs as _fmt_secs, fmt_value as _fmt_value
from hpsearch.results.tables import params_text as _params_text

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["write_report"]

logger = logging.getLogger(__name__)

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


def _summary_html(d: StudyData) -> str:
    s = d.summary
    rows: list[tuple[str, str]] = [
        _objective_row(d),
        ("trials", f"{s.n_trials} total: " + ", ".join(f"{v} {k.lower()}" for k, v in s.by_state.items() if v)
         if s.n_trials else "0 (no trials yet)"),
        *_best_rows(d),
        ("busy time", _busy_text(s)),
        ("per-trial time", f"mean {_fmt_secs(s.mean_trial_s)}, median {_fmt_secs(s.median_trial_s)}"
         if s.mean_trial_s is not None else "—"),
        ("epochs spent", f"{s.epochs_spent}" + (f" of budget {s.budget_epochs}" if s.budget_epochs is not None else "")
         + (f" (max {s.epochs_max} per trial)" if s.epochs_max else "")),
    ]
    if s.infeasible is not None:
        rows.insert(2, ("infeasible trials", f"{s.infeasible} (constraints: {_constraints_text(s)})"))
    if s.epochs_max:
        full = s.epochs_spent + s.epochs_saved
        pct = f" = {100 * s.epochs_saved / full:.0f}% of the epochs a full run would take" if full else ""
        detail = ", ".join(f"{v} by {k.replace('_', ' ')}" for k, v in s.epochs_saved_by_reason.items())
        rows.append(("epochs saved", f"{s.epochs_saved}" + (f" ({detail})" if detail else "") + pct))
    if s.stop_reasons:
        rows.append(("stop reasons", ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(s.stop_reasons.items()))))
    if s.slots:
        rows.append(("worker slots", f"{len(s.slots)}"))
    if s.devices:
        rows.append(("devices", ", ".join(s.devices)))
    if d.output_dir:
        rows.append(("output dir", d.output_dir))
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    out = f'<table class="summary">{body}</table>' + _sessions_html(d)
    notes = [n for n in s.notes if s.n_trials]  # an empty study gets its own paragraph instead
    for note in notes + ([d.importance_note] if d.importance_note and d.importances else []):
        out += f'<p class="note">{_e(note)}</p>'
    return out


def _best_rows(d: StudyData) -> list[tuple[str, str]]:
    """The best trial's value and params; with several objectives the Pareto set instead (no one trial is best)."""
    s = d.summary
    if d.pareto is None:
        best = f"{_fmt_value(s.best_value)} (trial {s.best_trial})" if s.best_trial is not None else "—"
        return [("best value", best), ("best params", _params_text(s.best_params))]
    front = sorted(q.number for q in d.pareto.points if q.on_front)
    if not front:
        return [("Pareto set", "— (no complete feasible trial yet)")]
    shown = ", ".join(str(n) for n in front[:MAX_LISTED]) + (f" and {len(front) - MAX_LISTED} more"
                                                             if len(front) > MAX_LISTED else "")
    return [("Pareto set", f"{len(front)} feasible trial(s) no other one beats in every objective: {shown}")]


def _objective_row(d: StudyData) -> tuple[str, str]:
    """The metric and direction optimised, or each objective's with several."""
    if d.summary.objectives:
        return "objectives", ", ".join(f"{direction} {metric}" for metric, direction in d.summary.objectives)
    return "objective", f"{d.direction} {d.metric}"


def _constraints_text(s: Summary) -> str:
    """Each constraint as its bounds: ``latency_ms <= 1.5``, ``1000 <= params <= 5e4``."""
    parts = []
    for name, bound in s.constraints.items():
        low, high = bound.get("min"), bound.get("max")
        parts.append((f"{_fmt_value(low)} <= " if low is not None else "") + name
                     + (f" <= {_fmt_value(high)}" if high is not None else ""))
    return ", ".join(parts)


def _busy_text(s: Summary) -> str:
    if s.busy_s is None:
        return "—"
    runs = len(s.sessions)
    return f"{_fmt_secs(s.busy_s)} with a trial running" + (f", over {runs} run sessions" if runs > 1 else "")


def _sessions_html(d: StudyData) -> str:
    """One row per run session: when it started, its wall time, busy time, trials and worker processes."""
    if not d.summary.sessions:
        return ""
    head = "".join(f"<th>{h}</th>" for h in ("run session", "started", "wall time", "busy time", "trials",
                                             "worker processes"))
    body = "".join(
        f'<tr><td class="num">{i}</td><td>{_e(x.start.strftime("%Y-%m-%d %H:%M:%S"))}</td>'
        f'<td class="num">{_e(_fmt_secs(x.wall_s))}</td><td class="num">{_e(_fmt_secs(x.busy_s))}</td>'
        f'<td class="num">{x.n_trials}</td><td class="num">{len(x.workers)}</td></tr>'
        for i, x in enumerate(d.summary.sessions, start=1))
    return f'<table class="sessions"><tr>{head}</tr>{body}</table>'


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


PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}


class _FigureDivs:
    """Turns a page's figures into divs, numbered in page order (ids ``fig-0``, ``fig-1``...)."""

    def __init__(self) -> None:
        self.count = 0

    def div(self, name: str, fig: go.Figure, heading: str) -> str:
        import plotly.io as pio

        idx = self.count
        self.count += 1
        div = pio.to_html(fig, full_html=False, include_plotlyjs=False, include_mathjax=False,
                          config=PLOTLY_CONFIG, div_id=f"fig-{idx}",
                          default_height=f"{fig.layout.height or 440}px", validate=False)
        anchor = f"{_slug(name)}-{idx}"
        return f'<div class="figure" id="{anchor}"><h3>{_e(heading)}</h3>{div}</div>'


def _head(title: str, n_figs: int) -> list[str]:
    from plotly.offline import get_plotlyjs

    return [
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
        f"{_e(_version())} with optuna {_e(optuna.__version__)}; {n_figs} figures; works offline</p>",
    ]


def _study_section(idx: int, d: StudyData, figs: list[NamedFigure], divs: _FigureDivs) -> list[str]:
    parts = [f'<section id="study-{idx}"><h2>Study {_e(d.name)}</h2>', _summary_html(d)]
    if d.summary.n_trials == 0:
        parts.append('<p class="note">This study has no trials yet: nothing to plot. '
                     "Run it (<code>hpsearch run STUDY.yaml</code>) and build the report again.</p>")
    parts.append(top_trials_html(d))
    # the section already names the study
    parts.extend(divs.div(name, fig, name.split(": ", 1)[-1]) for name, fig in figs)
    parts.append("</section>")
    return parts


def _comparison_section(data: Sequence[StudyData], figs: list[NamedFigure], divs: _FigureDivs) -> list[str]:
    parts = ['<section id="comparison"><h2>Comparison</h2>', _comparison_note_html(data)]
    parts.extend(divs.div(name, fig, name.removeprefix("Comparison: ")) for name, fig in figs)
    parts.append("</section>")
    return parts


def _page(data: Sequence[StudyData], sections: FigureSections) -> str:
    title = "hpsearch report: " + ", ".join(d.name for d in data) if data else "hpsearch report"
    divs = _FigureDivs()
    parts = _head(title, len(sections.all()))
    if not data:
        parts.append('<p class="note">No study given.</p>')
    if len(data) > 1:
        links = "".join(f'<a href="#study-{i}">{_e(d.name)}</a>' for i, d in enumerate(data))
        parts.append(f"<nav>{links}<a href=\"#comparison\">comparison</a></nav>")
    for idx, (d, figs) in enumerate(zip(data, sections.per_study)):
        parts.extend(_study_section(idx, d, figs, divs))
    if sections.comparison:
        parts.extend(_comparison_section(data, sections.comparison, divs))
    parts.append("</body></html>")
    return "\n".join(parts)


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
    data = [collect_study(s) for s in studies]
    sections = figure_sections(data)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_page(data, sections), encoding="utf-8")
    figs = sections.all()
    logger.debug("wrote report %s (%d figures)", out, len(figs))
    if png_dir is not None:
        _write_pngs(figs, Path(png_dir), out)
    return out


def _write_pngs(figs: list[NamedFigure], png_dir: Path, html_path: Path) -> list[Path]:
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
        # kaleido logs a figure it failed to render (a slow Chrome) instead of raising: retry those once
        missing = [i for i, path in enumerate(paths) if not path.is_file()]
        if missing:
            pio.write_images([figs[i][1] for i in missing], [paths[i] for i in missing], width=1200,
                             height=[int(figs[i][1].layout.height or 440) for i in missing])
        lost = [paths[i].name for i in missing if not paths[i].is_file()]
        if lost:
            raise RuntimeError(f"kaleido wrote no {', '.join(lost)}")
    except Exception as e:  # kaleido surfaces Chrome problems as assorted exception types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HpsearchError(
            f"PNG export failed ({first}); kaleido needs Chrome or Chromium: apt-get install chromium "
            f"or set BROWSER_PATH (the HTML report was written to {html_path})"
        ) from e
    logger.info("wrote %d PNG figures to %s", len(paths), png_dir)
    return paths
