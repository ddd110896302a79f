"""The figure list of one study and of compared studies (per metric and direction)."""

from __future__ import annotations

import json

import plotly.io as pio
import pytest

import study_fixtures as sf
from hpsearch.results.collect import collect_study
from hpsearch.results.figures import build_figures
from hpsearch.results.studydata import STATES, StudyData
from report_studies import PER_STUDY
from report_studies import (  # noqa: F401 - fixtures
    data_fixture, db_fixture, loss_data_fixture, loss_study_fixture, study_fixture)


def test_build_figures_single_study(data: StudyData) -> None:
    figs = build_figures([data])
    assert [n for n, _ in figs] == [f"alpha: {k}" for k in PER_STUDY]
    by_name = dict(figs)
    curves = by_name["alpha: learning curves"]
    names = [t.name for t in curves.data]
    assert any(n.startswith("pruned (") for n in names) and "pruned here" in names
    pruned_ends = next(t for t in curves.data if t.name == "pruned here")
    assert all(x < 6 for x in pruned_ends.x)  # pruned trials visibly end before the last epoch
    par = by_name["alpha: parallel coordinates"].data[0]
    assert [d.label for d in par.dimensions][-1] == "val_accuracy"
    timeline = by_name["alpha: timeline"]
    assert {t.name for t in timeline.data} == {"complete", "pruned", "fail", "running"}


def test_build_figures_compares_studies(db: str, data: StudyData) -> None:
    other = collect_study(sf.make_study(db, "beta", 15, seed=7, n_slots=3))
    names = [n for n, _ in build_figures([data, other])]
    assert names[:7] == [f"alpha: {k}" for k in PER_STUDY]
    assert names[7:14] == [f"beta: {k}" for k in PER_STUDY]
    assert names[14:] == ["Comparison: best so far vs trial number",
                          "Comparison: best so far vs wall-clock time",
                          "Comparison: final metric distribution"]
    figs = dict(build_figures([data, other]))
    assert [t.name for t in figs["Comparison: best so far vs trial number"].data] == ["alpha", "beta"]
    box = figs["Comparison: final metric distribution"].data
    assert [len(t.y) for t in box] == [data.summary.by_state["COMPLETE"], other.summary.by_state["COMPLETE"]]
    for name in names[14:]:
        assert figs[name].layout.yaxis.title.text == "val_accuracy"
        assert figs[name].layout.title.text.startswith("Comparison: ")


def test_build_figures_compares_per_metric(data: StudyData, loss_data: StudyData) -> None:
    figs = build_figures([data, loss_data])
    names = [n for n, _ in figs]
    assert names[:14] == [f"alpha: {k}" for k in PER_STUDY] + [f"lossy: {k}" for k in PER_STUDY]
    what = ["best so far vs trial number", "best so far vs wall-clock time", "final metric distribution"]
    assert names[14:] == ([f"Comparison (val_accuracy, maximize): {w}" for w in what]
                          + [f"Comparison (val_loss, minimize): {w}" for w in what])
    by_name = dict(figs)
    for d in (data, loss_data):
        group = [by_name[f"Comparison ({d.metric}, {d.direction}): {w}"] for w in what]
        for fig in group:
            assert fig.layout.yaxis.title.text == d.metric
            assert fig.layout.title.text.startswith(f"Comparison ({d.metric}, {d.direction}): ")
            assert [t.name for t in fig.data] == [d.name]  # only this group's study
        assert list(group[0].data[0].y) == [p.best for p in d.best_so_far]
        assert list(group[2].data[0].y) == [p.value for p in d.best_so_far]
    bests = [p.best for p in loss_data.best_so_far]
    assert bests == sorted(bests, reverse=True)  # minimised: the loss study's best never increases


def test_slices_y_range_stays_within_the_metric_bounds(db: str) -> None:
    one = collect_study(sf.make_study(db, "one-point", 1, prune_every=0, early_stop_every=0))
    fig = dict(build_figures([one]))["one-point: slices"]
    value = one.slices[0].y[0]
    lo, hi = fig.layout.yaxis.range
    assert 0.0 <= lo < value < hi <= 1.0 and hi - lo < 0.2  # a lone accuracy: not autoranged to 0..1.8
    assert all(fig.layout[k].range == fig.layout.yaxis.range for k in fig.layout if k.startswith("yaxis"))


def test_slices_rows_are_a_fixed_height_apart(data: StudyData) -> None:
    fig = dict(build_figures([data]))["alpha: slices"]  # 6 params: 2 rows of 3
    top, bottom = fig.layout.yaxis.domain, fig.layout.yaxis4.domain
    plot_px = fig.layout.height - fig.layout.margin.t - fig.layout.margin.b
    assert (top[0] - bottom[1]) * plot_px == pytest.approx(70)  # the gap between the rows, in pixels
    assert (top[1] - top[0]) * plot_px == pytest.approx(250)


def test_contour_draws_a_categorical_param_as_categories(data: StudyData) -> None:
    fig = dict(build_figures([data]))["alpha: lr x batch_size contour"]
    assert fig.layout.yaxis.type == "category" and list(fig.layout.yaxis.categoryarray) == ["64", "128", "256", "512"]
    assert fig.layout.xaxis.type == "log"
    assert fig.data[0].type == "heatmap"  # bands, not contour lines across the categories


def test_trace_columns_reach_the_page_as_plain_json_lists(data: StudyData) -> None:
    """Columns are numpy object arrays (plotly then skips its per-point checks); the page still holds plain lists,
    numbers as text and a gap between two learning curves as null, never plotly's base64 binary arrays."""
    figs = build_figures([data])
    for name, fig in figs:
        assert '"bdata"' not in pio.to_json(fig, validate=False), name
    curves = json.loads(pio.to_json(dict(figs)["alpha: learning curves"], validate=False))["data"][0]
    first_state = next(s for s in STATES if any(c.state == s for c in data.curves))
    drawn = [c for c in data.curves if c.state == first_state]
    assert curves["x"] == [x for c in drawn for x in [*c.epochs, None]]
    assert curves["y"] == [y for c in drawn for y in [*c.values, None]]
    assert curves["customdata"] == [n for c in drawn for n in [c.trial] * len(c.epochs) + [None]]
    timeline = json.loads(pio.to_json(dict(figs)["alpha: timeline"], validate=False))["data"][0]
    assert all(isinstance(row, list) and len(row) == 4 for row in timeline["customdata"])
