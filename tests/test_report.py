"""Report: data collection on synthetic studies, figure list, self-contained HTML, PNG export."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from hpsearch import report
from hpsearch.errors import HpsearchError
import study_fixtures as sf
from conftest import python_env

ROOT = Path(__file__).resolve().parents[1]
PER_STUDY = ["optimization history", "learning curves", "parallel coordinates", "param importances",
             "lr x batch_size contour", "slices", "timeline"]


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('report') / 'studies.db'}"


@pytest.fixture(scope="module")
def study(db: str) -> optuna.Study:
    return sf.make_study(db, "alpha", 30, epochs=6, fail_every=7, running=1)


@pytest.fixture(scope="module")
def data(study: optuna.Study) -> report.StudyData:
    return report.collect_study(study)


@pytest.fixture(scope="module")
def loss_study(db: str) -> optuna.Study:
    """A study that minimises val_loss, to compare with ``study`` (maximises val_accuracy)."""
    return sf.make_study(db, "lossy", 12, seed=5, direction="minimize", metric="val_loss")


@pytest.fixture(scope="module")
def loss_data(loss_study: optuna.Study) -> report.StudyData:
    return report.collect_study(loss_study)


def test_summary_counts_and_best(study: optuna.Study, data: report.StudyData) -> None:
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
    assert s.total_wall_s == pytest.approx((last - first).total_seconds())


def test_rows_carry_the_trial_user_attrs(study: optuna.Study, data: report.StudyData) -> None:
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


def test_epochs_saved_counts_pruned_and_early_stopped(study: optuna.Study, data: report.StudyData) -> None:
    expected: dict[str, int] = {}
    for t in study.get_trials():
        reason = t.user_attrs.get("stop_reason")
        if reason in ("pruned", "early_stopped"):
            expected[reason] = expected.get(reason, 0) + 6 - t.user_attrs["epochs_run"]
    assert data.summary.epochs_saved_by_reason == expected
    assert data.summary.epochs_saved == sum(expected.values()) > 0
    assert data.summary.epochs_run == sum(t.user_attrs["epochs_run"] for t in study.get_trials())


def test_best_so_far_is_monotone_and_ends_at_best(data: report.StudyData) -> None:
    bests = [p.best for p in data.best_so_far]
    assert bests == sorted(bests)  # maximize: never decreases
    assert bests[-1] == data.summary.best_value
    assert all(p.best >= p.value for p in data.best_so_far)
    assert [p.trial for p in data.best_so_far] == sorted(p.trial for p in data.best_so_far)
    elapsed = [p.elapsed_s for p in data.best_so_far]
    assert all(e is not None and e > 0 for e in elapsed)


def test_minimize_best_so_far_never_increases(db: str) -> None:
    study = sf.make_study(db, "minimize-me", 12, direction="minimize", seed=3)
    d = report.collect_study(study)
    bests = [p.best for p in d.best_so_far]
    assert bests == sorted(bests, reverse=True)
    assert d.summary.best_value == study.best_value == min(p.value for p in d.best_so_far)


def test_learning_curves_stop_where_trials_stopped(study: optuna.Study, data: report.StudyData) -> None:
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
    d = report.collect_study(study)
    assert d.metric == "objective"  # no study user attrs: still works
    assert [(c.epochs, c.values) for c in d.curves] == [([1, 2, 3], [0.5, 0.7, 0.8])]
    assert d.summary.epochs_max is None and any("epochs saved unknown" in n for n in d.summary.notes)


def test_importances_cover_conditional_params(data: report.StudyData) -> None:
    assert set(data.importances) == {"lr", "batch_size", "dropout", "weight_decay", "optimizer", "momentum"}
    assert sum(data.importances.values()) == pytest.approx(1.0)
    assert all(v >= 0 for v in data.importances.values())


def test_conditional_param_shows_as_na(data: report.StudyData) -> None:
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
    assert all(len(a.values) == n_complete for a in data.parallel.dimensions)
    slices = {s.param: s for s in data.slices}
    assert slices["momentum"].n_missing == momentum.n_missing
    assert len(slices["momentum"].x) == n_complete - momentum.n_missing
    assert slices["batch_size"].choices == ["64", "128", "256", "512"]
    info = {p.name: p for p in data.params}
    assert info["momentum"].n_missing > 0 and info["lr"].log and info["optimizer"].kind == "categorical"


def test_contour_grid(data: report.StudyData) -> None:
    c = data.contour
    assert c is not None and (c.x_param, c.y_param) == ("lr", "batch_size")
    assert c.x_log and c.y_log
    assert c.y_grid == sorted({float(v) for v in c.y})  # categorical batch sizes -> one row each
    assert len(c.z) == len(c.y_grid) and all(len(row) == len(c.x_grid) for row in c.z)
    flat = [v for row in c.z for v in row]
    assert min(c.values) - 1e-9 <= min(flat) and max(flat) <= max(c.values) + 1e-9  # an average
    assert len(c.trials) == data.summary.by_state["COMPLETE"]


def test_importances_need_two_complete_trials(db: str) -> None:
    study = sf.make_study(db, "lonely", 1, prune_every=0, early_stop_every=0)
    d = report.collect_study(study)
    assert d.importances == {} and "at least 2 complete trials" in (d.importance_note or "")
    assert d.importance_note in d.summary.notes


def test_importances_skipped_when_nothing_varies(db: str) -> None:
    study = sf.new_study(db, "fixed")
    for v in (0.5, 0.6, 0.7):
        study.add_trial(optuna.trial.create_trial(
            params={"lr": 0.01}, distributions={"lr": FloatDistribution(1e-4, 1, log=True)}, value=v))
    d = report.collect_study(study)
    assert d.importances == {} and "no param varies" in (d.importance_note or "")
    assert d.contour is None and any("no batch_size param" in n for n in d.summary.notes)
    names = [n for n, _ in report.build_figures([d])]
    assert "fixed: param importances" not in names and "fixed: lr x batch_size contour" not in names


def test_build_figures_single_study(data: report.StudyData) -> None:
    figs = report.build_figures([data])
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


def test_build_figures_compares_studies(db: str, data: report.StudyData) -> None:
    other = report.collect_study(sf.make_study(db, "beta", 15, seed=7, n_slots=3))
    names = [n for n, _ in report.build_figures([data, other])]
    assert names[:7] == [f"alpha: {k}" for k in PER_STUDY]
    assert names[7:14] == [f"beta: {k}" for k in PER_STUDY]
    assert names[14:] == ["Comparison: best so far vs trial number",
                          "Comparison: best so far vs wall-clock time",
                          "Comparison: final metric distribution"]
    figs = dict(report.build_figures([data, other]))
    assert [t.name for t in figs["Comparison: best so far vs trial number"].data] == ["alpha", "beta"]
    box = figs["Comparison: final metric distribution"].data
    assert [len(t.y) for t in box] == [data.summary.by_state["COMPLETE"], other.summary.by_state["COMPLETE"]]
    for name in names[14:]:
        assert figs[name].layout.yaxis.title.text == "val_accuracy"
        assert figs[name].layout.title.text.startswith("Comparison: ")


def test_compare_groups_by_metric_and_direction(db: str, data: report.StudyData,
                                                loss_data: report.StudyData) -> None:
    acc_min = report.collect_study(sf.make_study(db, "acc-min", 5, seed=2, direction="minimize"))
    other = report.collect_study(sf.make_study(db, "beta2", 5, seed=8))
    groups = report.compare_groups([data, loss_data, acc_min, other])
    assert [(g.metric, g.direction) for g in groups] == [
        ("val_accuracy", "maximize"), ("val_loss", "minimize"), ("val_accuracy", "minimize")]
    assert [[d.name for d in g.studies] for g in groups] == [["alpha", "beta2"], ["lossy"], ["acc-min"]]
    assert [g.positions for g in groups] == [[0, 3], [1], [2]]
    assert [[d.name for d in g.studies] for g in report.compare_groups([data, other])] == [["alpha", "beta2"]]
    assert report.compare_groups([]) == []


def test_build_figures_compares_per_metric(data: report.StudyData, loss_data: report.StudyData) -> None:
    figs = report.build_figures([data, loss_data])
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


def test_empty_study(db: str, tmp_path: Path) -> None:
    empty = sf.new_study(db, "empty")
    d = report.collect_study(empty)
    assert d.summary.n_trials == 0 and d.summary.best_value is None and d.best_so_far == []
    assert "this study has no trials yet" in d.summary.notes
    assert report.build_figures([d]) == []
    out = report.write_report([empty], tmp_path / "empty.html")
    text = out.read_text(encoding="utf-8")
    assert "This study has no trials yet" in text and 'class="plotly-graph-div' not in text


def test_only_pruned_trials(db: str) -> None:
    study = sf.new_study(db, "all-pruned")
    sf.add_trials(study, sf.synthetic_trials(4, prune_every=1))
    d = report.collect_study(study)
    assert d.summary.by_state["PRUNED"] == 4 and d.summary.best_trial is None
    names = [n for n, _ in report.build_figures([d])]
    assert names == ["all-pruned: learning curves", "all-pruned: timeline"]


def _script_and_link_urls(html: str) -> list[str]:
    return re.findall(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*[\"']?([^\"' >]+)", html, re.I)


def test_html_is_self_contained(db: str, study: optuna.Study, tmp_path: Path) -> None:
    from plotly.offline import get_plotlyjs

    other = sf.make_study(db, "gamma<&>", 8, seed=11)
    out = report.write_report([study, other], tmp_path / "sub" / "report.html")
    assert out == tmp_path / "sub" / "report.html"
    html = out.read_text(encoding="utf-8")
    plotlyjs = get_plotlyjs()
    assert html.count(plotlyjs[:300]) == 1  # plotly.js inlined exactly once
    assert html.count(plotlyjs[-300:]) == 1
    assert _script_and_link_urls(html) == []  # no external script/link/img at all
    assert "cdn.plot.ly" not in html.replace(plotlyjs, "")
    assert "mathjax" not in html.replace(plotlyjs, "").lower().replace("mathjaxconfig: 'local'", "")
    n_figs = len(report.build_figures([report.collect_study(study), report.collect_study(other)]))
    assert html.count('class="plotly-graph-div"') == n_figs == 7 + 7 + 3
    assert "gamma&lt;&amp;&gt;" in html and "gamma<&>" not in html.replace(plotlyjs, "").split("<script", 1)[0]
    assert 'class="summary"' in html and "epochs saved" in html and "Top 10 trials" in html
    assert "Comparison: best so far vs wall-clock time" in html
    assert "do not all optimise the same metric" not in html


def test_html_compares_per_metric(study: optuna.Study, loss_study: optuna.Study, tmp_path: Path) -> None:
    html = report.write_report([study, loss_study], tmp_path / "mixed.html").read_text(encoding="utf-8")
    assert html.count('class="plotly-graph-div"') == 7 + 7 + 2 * 3
    assert ('<p class="note">These studies do not all optimise the same metric, so each metric is compared '
            "on its own axes: val_accuracy (maximize): alpha; val_loss (minimize): lossy.</p>") in html
    comparison = html.split('<section id="comparison">', 1)[1]
    for group in ("val_accuracy, maximize", "val_loss, minimize"):
        assert f"<h3>Comparison ({group}): best so far vs trial number</h3>" in comparison
    assert "metrics differ" not in html


def test_png_dir_without_kaleido(monkeypatch: pytest.MonkeyPatch, study: optuna.Study, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "kaleido", None)  # import kaleido -> ImportError
    out = tmp_path / "r.html"
    with pytest.raises(HpsearchError, match=r"kaleido, which is not installed: pip install kaleido") as e:
        report.write_report([study], out, png_dir=tmp_path / "png")
    assert str(out) in str(e.value) and "\n" not in str(e.value)
    assert out.is_file() and out.stat().st_size > 1_000_000  # the HTML was written first
    assert not (tmp_path / "png").exists()


def test_png_dir_with_kaleido(db: str, tmp_path: Path) -> None:
    import shutil

    pytest.importorskip("kaleido", reason="kaleido not installed: pip install kaleido")
    if not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome", "chrome")):
        pytest.skip("kaleido needs Chrome/Chromium: apt-get install -y chromium")
    small = sf.make_study(db, "png", 6, seed=5)
    report.write_report([small], tmp_path / "r.html", png_dir=tmp_path / "png")
    pngs = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert pngs == [f"{i:02d}-png-{re.sub('[ _]', '-', k)}.png" for i, k in enumerate(PER_STUDY)]
    assert all((tmp_path / "png" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_export_and_dashboard_do_not_import_torch() -> None:
    code = ("import sys, hpsearch.export, hpsearch.dashboard; "
            "bad = [m for m in ('torch', 'torchvision') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                   env=python_env())


def test_importances_subsample_large_studies(monkeypatch: pytest.MonkeyPatch, study: optuna.Study) -> None:
    monkeypatch.setattr(report, "MAX_IMPORTANCE_TRIALS", 12)
    d = report.collect_study(study)
    assert d.importances and sum(d.importances.values()) == pytest.approx(1.0)
    n = d.summary.by_state["COMPLETE"]
    assert d.importance_note is not None and f"random sample of 12 of {n} complete trials" in d.importance_note


def test_png_export_without_a_browser(monkeypatch: pytest.MonkeyPatch, study: optuna.Study, tmp_path: Path) -> None:
    pytest.importorskip("kaleido", reason="kaleido not installed: pip install kaleido")
    import plotly.io as pio

    def no_chrome(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Kaleido v1 and later requires Chrome to be installed.\nmore text")

    monkeypatch.setattr(pio, "write_images", no_chrome)
    out = tmp_path / "r.html"
    with pytest.raises(HpsearchError, match=r"^PNG export failed \(Kaleido v1 and later requires Chrome to be "
                                            r"installed\.\); kaleido needs Chrome or Chromium: apt-get install "
                                            r"chromium or set BROWSER_PATH") as e:
        report.write_report([study], out, png_dir=tmp_path / "png")
    assert "\n" not in str(e.value) and str(out) in str(e.value) and out.is_file()
