"""The report of a study of several objectives: Pareto fronts (infeasible greyed) and importances per objective."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest

import study_fixtures as sf
from hpsearch import records, trialsets
from hpsearch.results.collect import collect_study
from hpsearch.results.figures import build_figures
from hpsearch.results.html import write_report
from hpsearch.results.numbers import format_number
from hpsearch.results.pareto import INFEASIBLE_COLOR


def test_two_objectives_draw_one_front_with_infeasible_points_grey(tmp_path: Path) -> None:
    study = sf.make_tradeoff_study(f"sqlite:///{tmp_path / 'p.db'}", n=30)
    d = collect_study(study)
    assert d.pareto is not None and d.pareto.metrics == ["val_accuracy", "latency_ms"]
    front = {t.number for t in trialsets.pareto_front(study.trials, ["maximize", "minimize"])}
    assert {p.number for p in d.pareto.points if p.on_front} == front == {t.number for t in study.best_trials}
    infeasible = [p for p in d.pareto.points if not p.feasible]
    assert infeasible and not any(p.on_front for p in infeasible) and d.pareto.infeasible == len(infeasible)
    figs = dict(build_figures([d]))
    fig = figs["tradeoff: Pareto front val_accuracy x latency_ms"]
    traces = {t.name: t for t in fig.data if t.name}
    assert len(traces["Pareto set"].x) == len(front)
    assert traces["infeasible"].marker.color == INFEASIBLE_COLOR and len(traces["infeasible"].x) == len(infeasible)
    assert fig.layout.xaxis.title.text == "val_accuracy (maximize)"
    assert "tradeoff: param importances for latency_ms" in figs  # width drives both objectives
    assert "tradeoff: param importances" in figs  # the first objective's, as for one metric


def test_three_objectives_draw_every_pair(tmp_path: Path) -> None:
    study = sf.make_tradeoff_study(f"sqlite:///{tmp_path / 'p.db'}", n=20,
                                   metrics=("val_accuracy", "latency_ms", "params"))
    names = [name for name, _ in build_figures([collect_study(study)]) if "Pareto front" in name]
    assert names == ["tradeoff: Pareto front val_accuracy x latency_ms", "tradeoff: Pareto front val_accuracy x params",
                     "tradeoff: Pareto front latency_ms x params"]


def test_a_study_of_one_metric_draws_no_front(tmp_path: Path) -> None:
    d = collect_study(sf.make_study(f"sqlite:///{tmp_path / 'p.db'}", "one", 10))
    assert d.pareto is None and d.objective_importances == {}
    assert not [name for name, _ in build_figures([d]) if "Pareto" in name]


@pytest.mark.parametrize("n", [0, 1])
def test_few_trials_still_write_a_report(tmp_path: Path, n: int) -> None:
    study = sf.make_tradeoff_study(f"sqlite:///{tmp_path / 'p.db'}", n=n)
    assert write_report([study], tmp_path / "r.html").is_file()


def _summary_rows(page: str) -> dict[str, str]:
    """The report's summary table as {heading: cell} (one study)."""
    table = re.search(r'<table class="summary">(.*?)</table>', page, re.S)
    assert table is not None
    return dict(re.findall(r"<tr><th>(.*?)</th><td>(.*?)</td></tr>", table.group(1)))


def test_the_summary_names_each_objective_and_counts_the_infeasible_trials(tmp_path: Path) -> None:
    study = sf.make_tradeoff_study(f"sqlite:///{tmp_path / 'p.db'}", n=30)
    s = collect_study(study).summary
    broken = sum(1 for t in study.trials if t.constraints["latency_ms"] > 0)
    assert s.objectives == [("val_accuracy", "maximize"), ("latency_ms", "minimize")]
    assert s.constraints == {"latency_ms": {"min": None, "max": 1.5}} and s.infeasible == broken > 0
    rows = _summary_rows(write_report([study], tmp_path / "r.html").read_text(encoding="utf-8"))
    assert rows["objectives"] == "maximize val_accuracy, minimize latency_ms" and "objective" not in rows
    assert rows["infeasible trials"] == f"{broken} (constraints: latency_ms &lt;= 1.5)"


def test_one_constrained_metric_counts_infeasible_trials_and_names_one_objective(tmp_path: Path) -> None:
    study = sf.make_tradeoff_study(f"sqlite:///{tmp_path / 'p.db'}", n=12, metrics=("val_accuracy",))
    s = collect_study(study).summary
    assert s.objectives == [] and s.infeasible == sum(1 for t in study.trials if t.constraints["latency_ms"] > 0)
    rows = _summary_rows(write_report([study], tmp_path / "r.html").read_text(encoding="utf-8"))
    assert "objectives" not in rows and rows["infeasible trials"].startswith(f"{s.infeasible} (constraints: ")


def test_one_unconstrained_metric_keeps_its_summary(tmp_path: Path) -> None:
    study = sf.make_study(f"sqlite:///{tmp_path / 'p.db'}", "one", 10)
    s = collect_study(study).summary
    assert s.objectives == [] and s.constraints == {} and s.infeasible is None
    rows = _summary_rows(write_report([study], tmp_path / "r.html").read_text(encoding="utf-8"))
    assert rows["objective"] == "maximize val_accuracy" and "objectives" not in rows and "infeasible trials" not in rows


def _table(page: str, heading: str) -> list[list[str]]:
    """The rows (header first) of the table that follows the heading ``<h3>heading...</h3>``, cells as text."""
    found = re.search(rf"<h3>{re.escape(heading)}[^<]*</h3><table[^>]*>(.*?)</table>", page, re.S)
    assert found is not None, f"no table under {heading!r}"
    return [re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row) for row in re.findall(r"<tr>(.*?)</tr>", found.group(1))]


def test_the_report_of_two_objectives_lists_the_pareto_set_not_one_best(tmp_path: Path) -> None:
    study = sf.make_tradeoff_study(f"sqlite:///{tmp_path / 'p.db'}", n=30)
    front = [t for t in trialsets.pareto_front(study.trials, ["maximize", "minimize"])]
    page = write_report([study], tmp_path / "r.html").read_text(encoding="utf-8")
    rows = _summary_rows(page)
    assert "best value" not in rows and "best params" not in rows  # one objective's best is no answer here
    assert rows["Pareto set"] == (f"{len(front)} feasible trial(s) no other one beats in every objective: "
                                  + ", ".join(str(t.number) for t in front))
    table = _table(page, "Pareto set")
    assert table[0][:3] == ["trial", "val_accuracy", "latency_ms"] and "params" in table[0]
    assert [int(r[0]) for r in table[1:]] == [t.number for t in front]
    first = front[0]
    assert table[1][1] == format_number(first.values[0]) and table[1][2] == format_number(first.values[1])
    assert table[1][table[0].index("params")] == format_number(records.costs(first)["params"])
    assert "Top 10 trials" not in page


def test_a_constrained_report_leaves_infeasible_trials_out_of_the_top_and_shows_costs(tmp_path: Path) -> None:
    study = sf.make_tradeoff_study(f"sqlite:///{tmp_path / 'p.db'}", n=12, metrics=("val_accuracy",))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    most_accurate = max(complete, key=lambda t: t.value)
    assert not records.is_feasible(most_accurate)  # the premise: the widest (slowest) models learn most
    page = write_report([study], tmp_path / "r.html").read_text(encoding="utf-8")
    feasible = [t for t in complete if records.is_feasible(t)]
    table = _table(page, "Top ")
    listed = [int(r[0]) for r in table[1:]]
    assert most_accurate.number not in listed and set(listed) <= {t.number for t in feasible}
    assert listed[0] == max(feasible, key=lambda t: t.value).number
    assert "params" in table[0] and "latency_ms" in table[0]
    assert f"{len(complete) - len(feasible)} infeasible" in re.search(r"<h3>Top [^<]*</h3>", page).group(0)
