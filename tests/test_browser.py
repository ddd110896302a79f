"""The report and the dashboard in a real headless Chromium (skipped, with the reason, without one).

Set HPSEARCH_SCREENSHOTS=DIR to keep the screenshots for a look.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

import study_fixtures as sf
from hpsearch.results import dashboard
from hpsearch.results.collect import collect_study
from hpsearch.results.figures import build_figures
from hpsearch.results.html import write_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM = next((p for p in map(shutil.which, BROWSERS) if p), None)
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed: apt-get install -y chromium"),
]
# No network for the report: any http(s) request goes to a dead proxy, any DNS lookup fails.
OFFLINE = ["--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
           "--host-resolver-rules=MAP * ~NOTFOUND"]


def chromium(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run",
           "--hide-scrollbars", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)  # type: ignore[arg-type]


def keep(png: Path) -> None:
    where = os.environ.get("HPSEARCH_SCREENSHOTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        shutil.copy(png, Path(where) / png.name)


def assert_real_image(png: Path, min_colors: int = 50) -> None:
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(png) as im:
        colors = im.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colors is not None and len(colors) >= min_colors  # not a blank page


@pytest.fixture
def report_file(tmp_path: Path) -> tuple[Path, int]:
    tmp = tmp_path
    url = f"sqlite:///{tmp / 'b.db'}"
    studies = [sf.make_study(url, "adamw-vs-sgd", 30, fail_every=9, running=1),
               sf.make_study(url, "wider", 20, seed=4, n_slots=3),
               sf.new_study(url, "not-started"),
               sf.make_study(url, "one-trial", 1, prune_every=0, early_stop_every=0)]
    n_figs = len(build_figures([collect_study(s) for s in studies]))
    return write_report(studies, tmp / "report.html"), n_figs


def test_report_renders_every_figure_offline(report_file: tuple[Path, int], tmp_path: Path) -> None:
    path, n_figs = report_file
    png = tmp_path / "report.png"
    # one browser run: the DOM after plotly drew, and a screenshot of the same page
    run = chromium(tmp_path, *OFFLINE, "--virtual-time-budget=10000", "--window-size=1400,4000",
                   f"--screenshot={png}", "--dump-dom", path.as_uri())
    dom = run.stdout
    assert n_figs == 2 * 7 + 5 + 3  # the one-trial study has no importances and no contour
    assert dom.count('class="plot-container plotly"') == n_figs  # plotly drew each one
    graph_divs = re.findall(r'<div id="fig-\d+" class="plotly-graph-div js-plotly-plot"', dom)
    assert len(graph_divs) == n_figs
    for chunk in dom.split('<div id="fig-')[1:]:
        assert 'class="main-svg"' in chunk.split('<div class="figure"')[0]
    assert "This study has no trials yet" in dom
    assert_real_image(png)
    keep(png)


# Run in the page once plotly drew: what each figure's axes became, and which parallel-coordinate labels
# overlap one another or the figure title, or fall outside the figure. The result lands in <pre id="probe">.
PROBE = """
function box(el) { const r = el.getBoundingClientRect(); return {l: r.left, t: r.top, r: r.right, b: r.bottom}; }
function overlap(a, b) { return a.l < b.r - 1 && b.l < a.r - 1 && a.t < b.b - 1 && b.t < a.b - 1; }
function probe() {
  const figures = [];
  for (const gd of document.querySelectorAll('.js-plotly-plot')) {
    const fl = gd._fullLayout, f = {title: fl.title.text || '', axes: {}, overlaps: [], outside: [], labels: 0};
    for (const k of Object.keys(fl)) if (/^[xy]axis[0-9]*$/.test(k)) f.axes[k] = {type: fl[k].type, range: fl[k].range};
    const svg = box(gd.querySelector('.main-svg')), title = gd.querySelector('.gtitle');
    const names = [...gd.querySelectorAll('.parcoords .axis-title')];
    const ticks = [...gd.querySelectorAll('.parcoords .tick text')];
    for (const n of names) {
      for (const t of ticks) if (overlap(box(n), box(t))) f.overlaps.push(n.textContent + ' / ' + t.textContent);
      if (title && overlap(box(n), box(title))) f.overlaps.push(n.textContent + ' / figure title');
    }
    for (const el of [...names, ...ticks]) {
      const r = box(el);
      if (r.l < svg.l || r.r > svg.r || r.t < svg.t || r.b > svg.b) f.outside.push(el.textContent);
    }
    for (const a of gd.querySelectorAll('.parcoords .axis'))
      if (title && box(a).t < box(title).b) f.outside.push('an axis above the title');
    f.labels = names.length + ticks.length;
    figures.push(f);
  }
  const pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify(figures);
  document.body.appendChild(pre);
}
window.addEventListener('load', () => setTimeout(probe, 500));
"""


def rendered_figures(path: Path, tmp_path: Path) -> list[dict]:
    """The report's figures as the browser drew them (see PROBE)."""
    probed = tmp_path / "probed.html"
    probed.write_text(path.read_text(encoding="utf-8").replace("</body>", f"<script>{PROBE}</script></body>"),
                      encoding="utf-8")
    dom = chromium(tmp_path, *OFFLINE, "--virtual-time-budget=10000", "--window-size=1400,1000", "--dump-dom",
                   probed.as_uri()).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, "the probe did not run"
    return json.loads(html.unescape(found.group(1)))


def test_report_axes_read_right(report_file: tuple[Path, int], tmp_path: Path) -> None:
    path, n_figs = report_file
    figures = rendered_figures(path, tmp_path)
    assert len(figures) == n_figs
    slices = [f for f in figures if ": slices (" in f["title"]]
    contours = [f for f in figures if " over lr x batch_size " in f["title"]]
    parallel = [f for f in figures if ": parallel coordinates " in f["title"]]
    assert len(slices) == len(parallel) == 3 and len(contours) == 2
    for f in slices:  # val_accuracy: every y range inside [0, 1] (a lone point was autoranged to 0..1.8)
        ys = [a["range"] for k, a in f["axes"].items() if k.startswith("yaxis")]
        assert ys and all(0.0 <= lo < hi <= 1.0 for lo, hi in ys)
        assert {a["type"] for k, a in f["axes"].items() if k in ("xaxis2", "xaxis5")} == {"category"}
    for f in contours:  # lr is numeric (log), batch_size a categorical param
        assert f["axes"]["xaxis"]["type"] == "log" and f["axes"]["yaxis"]["type"] == "category"
    for f in parallel:
        assert f["labels"] > 20  # the probe saw the axis titles and tick labels
        assert f["overlaps"] == [] and f["outside"] == []


@pytest.fixture
def dashboard_url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'd.db'}"
    sf.make_study(url, "dash-demo", 40, fail_every=9)
    server, base = dashboard.make_dashboard_server(url, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        study_id = optuna.storages.RDBStorage(url).get_study_id_from_name("dash-demo")
        yield f"{base}studies/{study_id}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_dashboard_shows_the_study(dashboard_url: str, tmp_path: Path) -> None:
    png = tmp_path / "dashboard.png"
    dom = chromium(tmp_path, "--virtual-time-budget=15000", "--window-size=1400,1000", f"--screenshot={png}",
                   "--dump-dom", dashboard_url).stdout
    assert "dash-demo" in dom and 'class="plot-container plotly"' in dom
    assert_real_image(png)
    keep(png)


def test_report_draws_the_pareto_front(tmp_path: Path) -> None:
    study = sf.make_tradeoff_study(f"sqlite:///{tmp_path / 'p.db'}", "tradeoff", 24)
    path = write_report([study], tmp_path / "pareto.html")
    figures = rendered_figures(path, tmp_path)
    fronts = [f for f in figures if ": Pareto front, val_accuracy x latency_ms (" in f["title"]]
    assert len(fronts) == 1 and "infeasible (grey" in fronts[0]["title"]
    assert {"xaxis", "yaxis"} <= set(fronts[0]["axes"])
    assert any("importances for latency_ms" in f["title"] for f in figures)
