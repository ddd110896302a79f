"""Collecting a study into plain data: summary, rows, curves, best so far, importances, params, contour."""

from __future__ import annotations

import datetime as dt
import math
import re

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

import study_fixtures as sf
from hpsearch import records
from hpsearch.results import collect
from hpsearch.results.collect import collect_study
from hpsearch.results.figures import build_figures
from hpsearch.results.html import _summary_html
from hpsearch.results.studydata import StudyData, compare_groups
from report_studies import (  # noqa: F401 - fixtures
    data_fixture, db_fixture, loss_data_fixture, loss_study_fixture, study_fixture)


def test_summary_counts_and_best(study: optuna.Study, data: StudyData) -> None:
    trials = study.get_trials()
    s = data.summary
    assert s.n_trials == len(trials) == 31
    for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING"):
        assert s.by_state[state] == sum(t.state.name == state for t in trials)
    assert s.by_state["FAIL"] > 0 and s.by_state["PRUNED"] > 0 and s.by_state["RUNNING"] == 1
    assert s.best_value == study.best_value
    assert s.best_trial == study.best_trial.number
    assert s.best_params == study.best_trial.params
    assert data.metric == "val_accuracy" and data.direction == "maximize" and data.epochs == 6
    assert s.workers == ["node0:4200", "node1:4201"] and s.slots == [0, 1] and s.devices == ["cpu"]
    durations = [(t.datetime_complete - t.datetime_start).total_seconds()
                 for t in trials if t.datetime_complete is not None]
    assert s.mean_trial_s == pytest.approx(sum(durations) / len(durations))
    assert s.median_trial_s is not None and min(durations) <= s.median_trial_s <= max(durations)
    first = min(t.datetime_start for t in trials)
    last = max(t.datetime_complete for t in trials if t.datetime_complete is not None)
    assert len(s.sessions) == 1  # one run: trials back to back on two slots
    session = s.sessions[0]
    assert session.start == first and session.end == last and session.n_trials == 31
    assert session.wall_s == pytest.approx((last - first).total_seconds())
    assert session.workers == ["node0:4200", "node1:4201"]
    assert s.busy_s == session.busy_s and 0.95 * session.wall_s < session.busy_s <= session.wall_s


def test_summary_reports_each_run_session_and_the_busy_time(db: str) -> None:
    first = list(sf.synthetic_trials(6, seed=1))
    later = list(sf.synthetic_trials(4, seed=2, n_slots=3, t0=sf.T0 + dt.timedelta(hours=5)))
    for t in later:  # the second `hpsearch run` has worker processes of its own
        t.user_attrs[records.WORKER] = f"node9:{5000 + records.slot(t)}"  # type: ignore[operator]
    s = collect_study(sf.add_trials(sf.new_study(db, "two-runs"), first + later)).summary

    def span(ts: list[FrozenTrial]) -> float:
        return (max(t.datetime_complete for t in ts) - min(t.datetime_start for t in ts)).total_seconds()

    assert [(x.n_trials, len(x.workers)) for x in s.sessions] == [(6, 2), (4, 3)]
    assert [x.start for x in s.sessions] == [sf.T0, sf.T0 + dt.timedelta(hours=5)]
    assert [x.wall_s for x in s.sessions] == pytest.approx([span(first), span(later)])
    assert s.busy_s == pytest.approx(sum(x.busy_s for x in s.sessions))
    assert s.busy_s == pytest.approx(span(first) + span(later))  # the five idle hours between the runs are not


def test_rows_carry_the_trial_user_attrs(study: optuna.Study, data: StudyData) -> None:
    by_number = {r.number: r for r in data.trials}
    for t in study.get_trials():
        r = by_number[t.number]
        assert r.state == t.state.name and r.value == t.value and r.params == t.params
        assert r.worker == t.user_attrs["worker"] and r.slot == t.user_attrs["slot"]
        assert r.device == "cpu" and r.epochs_run == t.user_attrs["epochs_run"]
        assert r.stop_reason == t.user_attrs.get("stop_reason")
        if t.state == TrialState.RUNNING:
            assert r.end is None and r.duration_s is None
        else:
            assert r.duration_s == pytest.approx((t.datetime_complete - t.datetime_start).total_seconds())


def test_epochs_saved_counts_pruned_and_early_stopped(study: optuna.Study, data: StudyData) -> None:
    expected: dict[str, int] = {}
    for t in study.get_trials():
        reason = t.user_attrs.get("stop_reason")
        if reason in ("pruned", "early_stopped"):
            expected[reason] = expected.get(reason, 0) + 6 - t.user_attrs["epochs_run"]
    assert data.summary.epochs_saved_by_reason == expected
    assert data.summary.epochs_saved == sum(expected.values()) > 0
    assert data.summary.epochs_spent == sum(t.user_attrs["epochs_run"] for t in study.get_trials())  # none resumed


def test_best_so_far_is_monotone_and_ends_at_best(data: StudyData) -> None:
    bests = [p.best for p in data.best_so_far]
    assert bests == sorted(bests)  # maximize: never decreases
    assert bests[-1] == data.summary.best_value
    assert all(p.best >= p.value for p in data.best_so_far)
    assert [p.trial for p in data.best_so_far] == sorted(p.trial for p in data.best_so_far)
    elapsed = [p.elapsed_s for p in data.best_so_far]
    assert all(e is not None and e > 0 for e in elapsed)


def test_minimize_best_so_far_never_increases(db: str) -> None:
    study = sf.make_study(db, "minimize-me", 12, direction="minimize", seed=3)
    d = collect_study(study)
    bests = [p.best for p in d.best_so_far]
    assert bests == sorted(bests, reverse=True)
    assert d.summary.best_value == study.best_value == min(p.value for p in d.best_so_far)


def test_learning_curves_stop_where_trials_stopped(study: optuna.Study, data: StudyData) -> None:
    curves = {c.trial: c for c in data.curves}
    trials = study.get_trials()
    assert set(curves) == {t.number for t in trials}
    for t in trials:
        c = curves[t.number]
        assert c.epochs == list(range(1, t.user_attrs["epochs_run"] + 1))
        assert c.values == [h["val_accuracy"] for h in t.user_attrs["history"]]
        if t.state == TrialState.PRUNED:
            assert c.stop_reason == "pruned" and c.epochs[-1] < 6


def test_curves_fall_back_to_intermediate_values(db: str) -> None:
    study = optuna.create_study(storage=db, study_name="no-history", direction="maximize")
    study.add_trial(optuna.trial.create_trial(
        params={"lr": 0.01}, distributions={"lr": FloatDistribution(1e-4, 1, log=True)},
        value=0.8, intermediate_values={1: 0.5, 2: 0.7, 3: 0.8}))
    d = collect_study(study)
    assert d.metric == "objective"  # no study user attrs: still works
    assert [(c.epochs, c.values) for c in d.curves] == [([1, 2, 3], [0.5, 0.7, 0.8])]
    assert d.summary.epochs_max is None and any("epochs saved unknown" in n for n in d.summary.notes)


def test_importances_cover_conditional_params(data: StudyData) -> None:
    assert set(data.importances) == {"lr", "batch_size", "dropout", "weight_decay", "optimizer", "momentum"}
    assert sum(data.importances.values()) == pytest.approx(1.0)
    assert all(v >= 0 for v in data.importances.values())


def test_conditional_param_shows_as_na(data: StudyData) -> None:
    assert data.parallel is not None
    n_complete = data.summary.by_state["COMPLETE"]
    assert len(data.parallel.trials) == len(data.parallel.objective) == n_complete
    axes = {a.name: a for a in data.parallel.dimensions}
    momentum = axes["momentum"]
    assert momentum.n_missing > 0 and "n/a" in (momentum.ticktext or [])
    na = momentum.tickvals[momentum.ticktext.index("n/a")]  # type: ignore[index,union-attr]
    assert sum(v == na for v in momentum.values) == momentum.n_missing
    assert axes["optimizer"].ticktext == ["sgd", "adamw"] and axes["optimizer"].n_missing == 0
    assert axes["lr"].ticktext and axes["lr"].ticktext[0] == "1e-4"  # log axis ticks in param units
    for a in data.parallel.dimensions:  # every tick (the lowest lr one included) strictly inside the axis
        assert a.tickvals and a.range[0] < min(a.tickvals + a.values) <= max(a.tickvals + a.values) < a.range[1]
    assert all(len(a.values) == n_complete for a in data.parallel.dimensions)
    slices = {s.param: s for s in data.slices}
    assert slices["momentum"].n_missing == momentum.n_missing
    assert len(slices["momentum"].x) == n_complete - momentum.n_missing
    assert slices["batch_size"].choices == ["64", "128", "256", "512"]
    info = {p.name: p for p in data.params}
    assert info["momentum"].n_missing > 0 and info["lr"].log and info["optimizer"].kind == "categorical"


def test_contour_grid(data: StudyData) -> None:
    c = data.contour
    assert c is not None and (c.x_param, c.y_param) == ("lr", "batch_size")
    assert c.x_log and not c.y_log and c.x_categories is None
    # batch_size is a categorical param: a row per choice the trials took, labels in the declared order
    assert c.y_categories == c.y_grid == ["64", "128", "256", "512"] and set(c.y) == set(c.y_grid)
    assert len(c.z) == len(c.y_grid) and all(len(row) == len(c.x_grid) for row in c.z)
    for label, row in zip(c.y_grid, c.z):  # each row averages its own category's trials only
        own = [v for y, v in zip(c.y, c.values) if y == label]
        drawn = [v for v in row if not math.isnan(v)]  # far from the category's trials: blank
        assert drawn and min(own) - 1e-9 <= min(drawn) and max(drawn) <= max(own) + 1e-9
    assert len(c.trials) == data.summary.by_state["COMPLETE"]


def test_importances_need_two_complete_trials(db: str) -> None:
    study = sf.make_study(db, "lonely", 1, prune_every=0, early_stop_every=0)
    d = collect_study(study)
    assert d.importances == {} and "at least 2 complete trials" in (d.importance_note or "")
    assert d.importance_note in d.summary.notes


def test_importances_skipped_when_nothing_varies(db: str) -> None:
    study = sf.new_study(db, "fixed")
    for v in (0.5, 0.6, 0.7):
        study.add_trial(optuna.trial.create_trial(
            params={"lr": 0.01}, distributions={"lr": FloatDistribution(1e-4, 1, log=True)}, value=v))
    d = collect_study(study)
    assert d.importances == {} and "no param varies" in (d.importance_note or "")
    assert d.contour is None and any("no batch_size param" in n for n in d.summary.notes)
    names = [n for n, _ in build_figures([d])]
    assert "fixed: param importances" not in names and "fixed: lr x batch_size contour" not in names


def test_compare_groups_by_metric_and_direction(db: str, data: StudyData,
                                                loss_data: StudyData) -> None:
    acc_min = collect_study(sf.make_study(db, "acc-min", 5, seed=2, direction="minimize"))
    other = collect_study(sf.make_study(db, "beta2", 5, seed=8))
    groups = compare_groups([data, loss_data, acc_min, other])
    assert [(g.metric, g.direction) for g in groups] == [
        ("val_accuracy", "maximize"), ("val_loss", "minimize"), ("val_accuracy", "minimize")]
    assert [[d.name for d in g.studies] for g in groups] == [["alpha", "beta2"], ["lossy"], ["acc-min"]]
    assert [g.positions for g in groups] == [[0, 3], [1], [2]]
    assert [[d.name for d in g.studies] for g in compare_groups([data, other])] == [["alpha", "beta2"]]
    assert compare_groups([]) == []


def test_only_pruned_trials(db: str) -> None:
    study = sf.new_study(db, "all-pruned")
    sf.add_trials(study, sf.synthetic_trials(4, prune_every=1))
    d = collect_study(study)
    assert d.summary.by_state["PRUNED"] == 4 and d.summary.best_trial is None
    names = [n for n, _ in build_figures([d])]
    assert names == ["all-pruned: learning curves", "all-pruned: timeline"]


def test_importances_subsample_large_studies(monkeypatch: pytest.MonkeyPatch, study: optuna.Study) -> None:
    monkeypatch.setattr(collect, "MAX_IMPORTANCE_TRIALS", 12)
    d = collect_study(study)
    assert d.importances and sum(d.importances.values()) == pytest.approx(1.0)
    n = d.summary.by_state["COMPLETE"]
    assert d.importance_note is not None and f"random sample of 12 of {n} complete trials" in d.importance_note


def test_epochs_spent_and_saved_of_a_known_history() -> None:
    study = sf.known_epochs_study(optuna.storages.InMemoryStorage())
    s = collect_study(study).summary
    assert s.epochs_spent == sf.KNOWN_EPOCHS["spent"] == 19  # the resumed trial's first 3 epochs count once
    assert s.budget_epochs == 30
    assert s.epochs_saved_by_reason == {"pruned": 4, "early_stopped": 2} and s.epochs_saved == 6
    rows = dict(re.findall(r"<tr><th>([^<]*)</th><td>([^<]*)</td></tr>", _summary_html(collect_study(study))))
    assert rows["epochs spent"] == "19 of budget 30 (max 6 per trial)"
    assert rows["epochs saved"] == ("6 (4 by pruned, 2 by early stopped) = 24% of the epochs a full run would take")


def _gate_study(db: str, name: str, direction: str) -> optuna.Study:
    """`gate` decides which trials are best (the top 10% in the study's direction) and nothing else; `noise`
    only orders the rest: an evaluator that read the wrong end of the values would rank `noise` first."""
    study = sf.new_study(db, name, direction=direction)
    sign = 1.0 if direction == "maximize" else -1.0
    dists = {"gate": FloatDistribution(0, 1), "noise": FloatDistribution(0, 1)}
    for i in range(200):
        gate, noise = ((i * 37) % 200) / 200, ((i * 91 + 13) % 200) / 200
        value = sign * ((1.0 if gate >= 0.9 else 0.0) + 0.01 * noise)
        study.add_trial(optuna.trial.create_trial(params={"gate": gate, "noise": noise},
                                                  distributions=dists, value=value))
    return study


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_importances_explain_the_best_trials_in_the_study_direction(db: str, direction: str) -> None:
    d = collect_study(_gate_study(db, f"gate-{direction}", direction))
    assert d.importances["gate"] > 0.9 > d.importances["noise"]
    assert "low `target` values" not in (d.importance_note or "")  # Optuna's warning is ours to honour, not show
