"""Dashboard: optuna-dashboard on a SQLite study that a worker is writing to, polled over HTTP."""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import optuna
import pytest

import study_fixtures as sf
from hpsearch import records
from hpsearch.results import dashboard
from hpsearch.cli import main
from hpsearch.errors import HpsearchError, StorageError
from conftest import python_env

ROOT = Path(__file__).resolve().parents[2]
N_TRIALS = 100
STEPS = 4

# A worker as hpsearch runs one: its own process, the plain storage URL (no special SQLite
# settings), trials that report per-epoch values and set user attrs. Any storage error escapes
# optimize() and fails the process.
WRITER = textwrap.dedent(f"""
    import json, sys
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url, name = sys.argv[1], sys.argv[2]
    study = optuna.load_study(study_name=name, storage=url, sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial):
        lr = trial.suggest_float("lr", 1e-4, 0.3, log=True)
        optimizer = trial.suggest_categorical("optimizer", ["sgd", "adamw"])
        if optimizer == "sgd":
            trial.suggest_float("momentum", 0.8, 0.99)
        history = []
        for epoch in range(1, {STEPS} + 1):
            acc = 1.0 - abs(lr - 0.01) - 0.1 / epoch
            trial.report(acc, epoch)
            history.append({{"epoch": epoch, "val_accuracy": acc, "train_loss": 1.0 / epoch}})
        trial.set_user_attr("history", history)
        trial.set_user_attr("worker", "writer:1")
        trial.set_user_attr("slot", 0)
        trial.set_user_attr("stop_reason", "completed")
        return acc

    study.optimize(objective, n_trials={N_TRIALS})
    states = [t.state.name for t in study.get_trials()]
    print(json.dumps({{"complete": states.count("COMPLETE"), "fail": states.count("FAIL")}}))
""")


def _get(url: str, timeout: float = 30) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        body = r.read()
    return json.loads(body) if r.headers.get_content_type() == "application/json" else body.decode()


@contextlib.contextmanager
def _dashboard_process(url: str, log: Path, command: list[str] | None = None, cwd: Path = ROOT) -> Iterator[str]:
    """Run ``serve_dashboard`` (or `command`) in its own process, as the CLI does; yield its base URL; Ctrl-C it."""
    code = f"from hpsearch.results.dashboard import serve_dashboard; serve_dashboard({url!r}, '127.0.0.1', 0)"
    with log.open("w") as err, subprocess.Popen(
            command or [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=err, text=True, cwd=cwd,
            env=python_env()) as proc:
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)  # type: ignore[union-attr]
        reader.start()
        try:
            try:
                first = lines.get(timeout=60)
            except queue.Empty:
                pytest.fail(f"dashboard did not start: {log.read_text()}")
            assert first.startswith("optuna-dashboard: http://127.0.0.1:") and "(Ctrl-C to stop)" in first, first
            yield first.split()[1].removesuffix("/dashboard/")
        finally:
            proc.send_signal(signal.SIGINT)  # Ctrl-C
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                pytest.fail("dashboard did not stop on Ctrl-C")
            reader.join(timeout=5)


def test_not_installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)
    with pytest.raises(HpsearchError, match=r"^optuna-dashboard is not installed; pip install 'hpsearch\[dashboard\]'$"):
        dashboard.serve_dashboard(f"sqlite:///{tmp_path / 'x.db'}")


def test_missing_sqlite_file(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=r"no study database at .*nope\.db"):
        dashboard.make_dashboard_server(f"sqlite:///{tmp_path / 'nope.db'}", port=0)
    assert not (tmp_path / "nope.db").exists()  # not created as a side effect
    with pytest.raises(StorageError, match="not a SQLite file"):
        dashboard.dashboard_storage("sqlite:///:memory:")


def test_dashboard_verb_creates_nothing_for_a_study_never_run(write_study: Callable[..., Path], workdir: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study()
    assert main(["dashboard", str(path)]) == 2
    assert capsys.readouterr().err.strip() == (f"hpsearch: error: {path}: storage: no study database at "
                                               f"runs/tiny/study.db; run the study first or check storage:")
    assert not (workdir / "runs").exists()


def test_dashboard_verb_refuses_a_storage_without_the_study(write_study: Callable[..., Path], workdir: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "runs" / "tiny").mkdir(parents=True)
    sf.new_study("sqlite:///runs/tiny/study.db", "another")
    path = write_study()
    assert main(["dashboard", str(path)]) == 2
    assert f"{path}: name: no study 'tiny' in sqlite:///runs/tiny/study.db" in capsys.readouterr().err


def test_a_database_without_tables_stays_without_tables(tmp_path: Path) -> None:
    db = tmp_path / "empty.db"
    sqlite3.connect(db).close()
    with pytest.raises(StorageError, match=r"x\.yaml: storage: sqlite:///.*empty\.db holds no study yet"):
        dashboard.dashboard_storage(f"sqlite:///{db}", source="x.yaml")
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0


def test_the_log_line_and_errors_show_no_password(monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    url = "postgresql+psycopg://user:pw-s3cret@127.0.0.1:1/hp?password=pw-s3cret"

    class Server:
        def serve_forever(self) -> None:
            pass

        def server_close(self) -> None:
            pass

    with pytest.raises(StorageError) as info:  # nothing listens on port 1
        dashboard.dashboard_storage(url)
    assert "pw-s3cret" not in str(info.value) and "user:***@127.0.0.1:1/hp?password=***" in str(info.value)
    monkeypatch.setattr(dashboard, "make_dashboard_server", lambda *args: (Server(), "http://127.0.0.1:9/dashboard/"))
    with caplog.at_level(logging.INFO, logger="hpsearch.results.dashboard"):
        dashboard.serve_dashboard(url)
    assert "optuna-dashboard for postgresql+psycopg://user:***@127.0.0.1:1/hp?password=*** at" in caplog.text
    assert "pw-s3cret" not in caplog.text


def test_storage_uses_wal_and_a_long_busy_timeout(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    sf.make_study(f"sqlite:///{db}", "s", 3)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # Optuna's default
    conn.close()
    storage = dashboard.dashboard_storage(f"sqlite:///{db}")
    try:
        with storage.engine.connect() as c:
            assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() == 60_000
        assert len(storage.get_all_trials(storage.get_study_id_from_name("s"))) == 3
    finally:
        storage.engine.dispose()


def test_port_in_use(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    sf.new_study(f"sqlite:///{db}", "s")
    server, url = dashboard.make_dashboard_server(f"sqlite:///{db}", "127.0.0.1", 0)
    try:
        port = server.server_address[1]
        assert url == f"http://127.0.0.1:{port}/dashboard/"
        with pytest.raises(HpsearchError, match=rf"cannot listen on 127.0.0.1:{port}: .*choose another --port"):
            dashboard.make_dashboard_server(f"sqlite:///{db}", "127.0.0.1", port)
    finally:
        server.server_close()


def test_dashboard_does_not_disturb_a_writing_worker(tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    url = f"sqlite:///{db}"
    sf.new_study(url, "live", epochs=STEPS)
    with _dashboard_process(url, tmp_path / "dashboard.log") as base:
        studies = _get(f"{base}/api/studies")["study_summaries"]
        assert [s["study_name"] for s in studies] == ["live"]
        study_id = studies[0]["study_id"]
        assert "<html" in _get(f"{base}/dashboard").lower()

        script = tmp_path / "writer.py"
        script.write_text(WRITER)
        writer = subprocess.Popen([sys.executable, str(script), url, "live"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        polls, errors, seen = 0, [], 0
        while writer.poll() is None:  # poll the JSON API as fast as it answers while trials land
            try:
                detail = _get(f"{base}/api/studies/{study_id}")
                seen = max(seen, len(detail["trials"]))
                if polls % 5 == 0:
                    _get(f"{base}/api/studies")
                polls += 1
            except (urllib.error.URLError, OSError) as e:
                errors.append(repr(e))
        out, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err
        assert "locked" not in err.lower() and "OperationalError" not in err
        assert json.loads(out.strip().splitlines()[-1]) == {"complete": N_TRIALS, "fail": 0}
        print(f"{polls} API polls during the writer, {seen} trials seen mid-run")
        assert errors == [] and polls >= 5 and seen > 0

        deadline = time.monotonic() + 120  # a safety net: the dashboard caches trial lists for a few seconds
        while True:
            detail = _get(f"{base}/api/studies/{study_id}")
            settled = {t["state"] for t in detail["trials"]} == {"Complete"}  # the cache may lag a state too
            if (len(detail["trials"]) == N_TRIALS and settled) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        trials = detail["trials"]
        assert len(trials) == N_TRIALS and {t["state"] for t in trials} == {"Complete"}
        for t in trials:
            attrs = {a["key"]: a["value"] for a in t["user_attrs"]}
            assert attrs["worker"] == "writer:1" and attrs["slot"] == "0" and attrs["stop_reason"] == "completed"
            assert json.loads(attrs["history"])[-1]["epoch"] == STEPS
            assert [v["step"] for v in t["intermediate_values"]] == list(range(1, STEPS + 1))
        assert {p["name"] for p in detail["union_search_space"]} == {"lr", "optimizer", "momentum"}
        assert detail["has_intermediate_values"] is True
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()
        assert optuna.load_study(study_name="live", storage=url).best_value is not None
    log = (tmp_path / "dashboard.log").read_text()
    assert "locked" not in log.lower() and "Exception" not in log.replace("KeyboardInterrupt", "")


def _get_bytes(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


def test_dashboard_verb_lists_and_downloads_every_epoch(write_study: Callable[..., Path], workdir: Path) -> None:
    epochs = 12  # the dashboard cuts the `history` user attr at 1,024 characters: about six epochs
    path = write_study(n_trials=1, train={"epochs": epochs, "batch_size": 64})
    assert main(["run", str(path)]) == 0
    trial = optuna.load_study(study_name="tiny", storage="sqlite:///runs/tiny/study.db").trials[0]
    command = [sys.executable, "-m", "hpsearch", "dashboard", str(path), "--port", "0"]
    with _dashboard_process("", workdir / "dashboard.log", command, cwd=workdir) as base:
        study_id = _get(f"{base}/api/studies")["study_summaries"][0]["study_id"]
        shown = _get(f"{base}/api/studies/{study_id}")["trials"][0]
        assert [v["step"] for v in shown["intermediate_values"]] == list(range(1, epochs + 1))  # the learning curve
        artifacts = {a["filename"]: a["artifact_id"] for a in shown["artifacts"]}
        assert set(artifacts) == {records.HISTORY_ARTIFACT, Path(records.checkpoint(trial)).name}
        where = f"{base}/artifacts/{study_id}/{shown['trial_id']}"
        history = _get(f"{where}/{artifacts[records.HISTORY_ARTIFACT]}")
        assert [h["epoch"] for h in history] == list(range(1, epochs + 1))
        assert history == records.history(trial)  # every field of every epoch
        weights = _get_bytes(f"{where}/{artifacts[Path(records.checkpoint(trial)).name]}")
        assert weights == Path(records.checkpoint(trial)).read_bytes()


def test_a_study_in_its_own_folder_serves_its_artifacts_from_there(write_study: Callable[..., Path],
                                                                    workdir: Path) -> None:
    path = write_study(n_trials=1)
    assert main(["run", str(path), "--storage", "sqlite:///other.db", "--output-dir", "runs/tiny-other"]) == 0
    trial = optuna.load_study(study_name="tiny", storage="sqlite:///other.db").trials[0]
    # as the verb passes it: the folder the file names, which holds nothing of this study
    server, url = dashboard.make_dashboard_server("sqlite:///other.db", port=0, source=str(path), study_name="tiny",
                                                  out_dir="runs/tiny")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = url.removesuffix("/dashboard/")
        study_id = _get(f"{base}/api/studies")["study_summaries"][0]["study_id"]
        shown = _get(f"{base}/api/studies/{study_id}")["trials"][0]
        artifacts = {a["filename"]: a["artifact_id"] for a in shown["artifacts"]}
        history = _get(f"{base}/artifacts/{study_id}/{shown['trial_id']}/{artifacts[records.HISTORY_ARTIFACT]}")
        assert history == records.history(trial)
    finally:
        server.shutdown()
        server.server_close()


def test_a_real_dashboard_serves_both_objectives_by_name(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'two.db'}"
    sf.make_tradeoff_study(url, "two", 12)
    with _dashboard_process(url, tmp_path / "dashboard.log") as base:
        summary = _get(f"{base}/api/studies")["study_summaries"][0]
        assert summary["directions"] == ["maximize", "minimize"]
        detail = _get(f"{base}/api/studies/{summary['study_id']}")
        assert detail["objective_names"] == ["val_accuracy", "latency_ms"]  # the Pareto front's axis names
        assert len(detail["trials"]) == 12 and all(len(t["values"]) == 2 for t in detail["trials"])
