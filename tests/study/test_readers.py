"""The read-only verbs (status, best, report, export, dashboard) never create anything, and read read-only media."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

from hpsearch import study as study_module
from hpsearch.cli import main
from mounts import tmpfs

READ_VERBS = [["status"], ["best"], ["best", "--export", "exported"], ["report", "--out", "r.html"],
              ["export", "--out", "t.csv"], ["dashboard", "--port", "1"]]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("verb", READ_VERBS, ids=lambda v: " ".join(v))
def test_a_missing_study_exits_2_and_leaves_no_file_or_folder(verb: list[str], write_study: Callable[..., Path],
                                                             workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study()
    before = _tree(workdir)
    assert main([verb[0], str(path), *verb[1:]]) == 2
    assert "no study" in capsys.readouterr().err
    assert _tree(workdir) == before  # no runs/, no study.db, no export folder


@pytest.mark.parametrize("verb", READ_VERBS[:2], ids=lambda v: " ".join(v))
def test_a_missing_study_in_another_study_database_writes_nothing_there(
        verb: list[str], write_study: Callable[..., Path], workdir: Path) -> None:
    assert main(["run", str(write_study(n_trials=1))]) == 0
    other = write_study("other.yaml", name="other", storage="sqlite:///runs/tiny/study.db")
    db = workdir / "runs/tiny/study.db"
    before = {p.name: p.read_bytes() for p in db.parent.glob("study.db*")}
    assert main([verb[0], str(other), *verb[1:]]) == 2
    assert {p.name: p.read_bytes() for p in db.parent.glob("study.db*")} == before


@pytest.mark.postgres
def test_a_missing_study_on_postgresql_creates_no_tables(write_study: Callable[..., Path], empty_pg_url: str) -> None:
    path = write_study()
    for verb in READ_VERBS:
        assert main([verb[0], str(path), "--storage", empty_pg_url, *verb[1:]]) == 2
    assert not study_module.storage._has_optuna_tables(empty_pg_url)
    study_module.dispose_storages()


@pytest.fixture
def read_only_mount(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs folder remounted read-only: real read-only media (root may write anywhere else)."""
    with tmpfs(tmp_path / "media", "size=64m") as mount:
        yield mount


def _remount_read_only(mount: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)


def test_every_read_verb_reads_a_study_on_read_only_media(write_study: Callable[..., Path], workdir: Path,
                                                          read_only_mount: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(n_trials=2)
    assert main(["run", str(path)]) == 0
    study_module.dispose_storages()
    shutil.copytree(workdir / "runs", read_only_mount / "runs")
    shutil.copy(path, read_only_mount / "study.yaml")
    _remount_read_only(read_only_mount)
    before = _tree(read_only_mount)
    os.chdir(read_only_mount)
    capsys.readouterr()
    assert main(["status", "study.yaml"]) == 0
    assert "finished 2 of 2 trials" in capsys.readouterr().out
    assert main(["best", "study.yaml", "--export", str(workdir / "exported")]) == 0
    assert (workdir / "exported/weights.pt").is_file()
    assert main(["report", "study.yaml", "--out", str(workdir / "r.html")]) == 0
    assert main(["export", "study.yaml", "--out", str(workdir / "t.csv")]) == 0
    assert (workdir / "r.html").is_file() and (workdir / "t.csv").is_file()
    assert _tree(read_only_mount) == before
    study_module.dispose_storages()
    os.chdir(workdir)  # let the fixture unmount


@pytest.mark.postgres
def test_a_report_of_several_studies_on_postgresql_holds_one_connection(
        write_study: Callable[..., Path], workdir: Path, empty_pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import pg
    import study_fixtures as sf
    from hpsearch.results import html

    import optuna

    names = [f"s{i}" for i in range(4)]
    storage = optuna.storages.RDBStorage(empty_pg_url)
    try:
        for name in names:
            sf.make_tradeoff_study(storage, name, 3)
    finally:
        storage.engine.dispose()  # psycopg warns about connections left to the GC
    two = [{"metric": "val_accuracy"}, {"metric": "latency_ms"}]
    paths = [str(write_study(f"{name}.yaml", name=name, storage=empty_pg_url, objectives=two)) for name in names]
    held: list[int] = []
    write_report = html.write_report

    def counting(studies: list[object], out: str, png_dir: str | None = None) -> Path:
        conn, _ = pg.admin_connection()  # every study is open now, about to be read
        with conn:
            held.append(conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                     (f"hpsearch:{os.getpid()}",)).fetchone()[0])
        return write_report(studies, out, png_dir=png_dir)

    monkeypatch.setattr(html, "write_report", counting)
    assert main(["report", *paths, "--out", str(workdir / "r.html")]) == 0
    assert held == [1]  # one per storage, not one per study: a report of 100 studies must not exhaust the server
