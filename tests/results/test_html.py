"""The report page: self-contained HTML, the comparison note, PNG export."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import optuna
import pytest

import study_fixtures as sf
from hpsearch.errors import HpsearchError
from hpsearch.results.collect import collect_study
from hpsearch.results.figures import build_figures
from hpsearch.results.html import write_report
from report_studies import PER_STUDY
from report_studies import db_fixture, loss_study_fixture, study_fixture  # noqa: F401 - fixtures


def test_empty_study(db: str, tmp_path: Path) -> None:
    empty = sf.new_study(db, "empty")
    d = collect_study(empty)
    assert d.summary.n_trials == 0 and d.summary.best_value is None and d.best_so_far == []
    assert "this study has no trials yet" in d.summary.notes
    assert build_figures([d]) == []
    out = write_report([empty], tmp_path / "empty.html")
    text = out.read_text(encoding="utf-8")
    assert "This study has no trials yet" in text and 'class="plotly-graph-div' not in text


def _script_and_link_urls(html: str) -> list[str]:
    return re.findall(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*[\"']?([^\"' >]+)", html, re.I)


def test_html_is_self_contained(db: str, study: optuna.Study, tmp_path: Path) -> None:
    from plotly.offline import get_plotlyjs

    other = sf.make_study(db, "gamma<&>", 8, seed=11)
    out = write_report([study, other], tmp_path / "sub" / "report.html")
    assert out == tmp_path / "sub" / "report.html"
    html = out.read_text(encoding="utf-8")
    plotlyjs = get_plotlyjs()
    assert html.count(plotlyjs[:300]) == 1  # plotly.js inlined exactly once
    assert html.count(plotlyjs[-300:]) == 1
    assert _script_and_link_urls(html) == []  # no external script/link/img at all
    assert "cdn.plot.ly" not in html.replace(plotlyjs, "")
    assert "mathjax" not in html.replace(plotlyjs, "").lower().replace("mathjaxconfig: 'local'", "")
    n_figs = len(build_figures([collect_study(study), collect_study(other)]))
    assert html.count('class="plotly-graph-div"') == n_figs == 7 + 7 + 3
    assert "gamma&lt;&amp;&gt;" in html and "gamma<&>" not in html.replace(plotlyjs, "").split("<script", 1)[0]
    assert 'class="summary"' in html and "epochs saved" in html and "Top 10 trials" in html
    assert "Comparison: best so far vs wall-clock time" in html
    assert "do not all optimise the same metric" not in html


def test_html_compares_per_metric(study: optuna.Study, loss_study: optuna.Study, tmp_path: Path) -> None:
    html = write_report([study, loss_study], tmp_path / "mixed.html").read_text(encoding="utf-8")
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
        write_report([study], out, png_dir=tmp_path / "png")
    assert str(out) in str(e.value) and "\n" not in str(e.value)
    assert out.is_file() and out.stat().st_size > 1_000_000  # the HTML was written first
    assert not (tmp_path / "png").exists()


def test_png_dir_with_kaleido(db: str, tmp_path: Path) -> None:
    import shutil

    pytest.importorskip("kaleido", reason="kaleido not installed: pip install kaleido")
    if not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome", "chrome")):
        pytest.skip("kaleido needs Chrome/Chromium: apt-get install -y chromium")
    small = sf.make_study(db, "png", 6, seed=5)
    write_report([small], tmp_path / "r.html", png_dir=tmp_path / "png")
    pngs = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert pngs == [f"{i:02d}-png-{re.sub('[ _]', '-', k)}.png" for i, k in enumerate(PER_STUDY)]
    assert all((tmp_path / "png" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


@pytest.mark.parametrize("misses", [1, 2], ids=["retried", "lost"])
def test_a_png_kaleido_did_not_write_is_retried_then_named(monkeypatch: pytest.MonkeyPatch, study: optuna.Study,
                                                            tmp_path: Path, misses: int) -> None:
    """kaleido logs a figure it failed to render instead of raising: it is retried once, then named."""
    pytest.importorskip("kaleido", reason="kaleido not installed: pip install kaleido")
    import plotly.io as pio

    calls: list[int] = []

    def flaky(figs: list[object], paths: list[Path], **kwargs: object) -> None:
        calls.append(len(paths))
        skip = 1 if len(calls) <= misses else 0  # the first figure is "lost" `misses` times
        for path in paths[skip:]:
            Path(path).write_bytes(b"\x89PNG\r\n\x1a\n")

    monkeypatch.setattr(pio, "write_images", flaky)
    if misses == 1:
        write_report([study], tmp_path / "r.html", png_dir=tmp_path / "png")
        assert calls[1:] == [1] and len(list((tmp_path / "png").glob("00-*.png"))) == 1  # written by the retry
    else:
        with pytest.raises(HpsearchError, match=r"^PNG export failed \(kaleido wrote no 00-"):
            write_report([study], tmp_path / "r.html", png_dir=tmp_path / "png")


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
        write_report([study], out, png_dir=tmp_path / "png")
    assert "\n" not in str(e.value) and str(out) in str(e.value) and out.is_file()


def test_summary_numbers_and_run_sessions(db: str, tmp_path: Path) -> None:
    study = sf.new_study(db, "small-decay")
    trials = list(sf.synthetic_trials(4, prune_every=0, early_stop_every=0))
    for t in trials:
        t.params["weight_decay"] = 0.00038327  # issue 12.7: the report printed 4e-4
    sf.add_trials(study, trials)
    from plotly.offline import get_plotlyjs

    html = write_report([study], tmp_path / "r.html").read_text(encoding="utf-8").replace(get_plotlyjs(), "")
    assert "weight_decay=3.833e-4" in html and '<td class="num">3.833e-4</td>' in html and "4e-4" not in html
    assert '<table class="sessions"><tr><th>run session</th><th>started</th>' in html
    assert "<td>2025-01-06 09:00:00</td>" in html and "wall time</th><td>" not in html
