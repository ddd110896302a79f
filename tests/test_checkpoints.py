"""Checkpoint files: atomic writes, one-line read errors, and the background writer's guarantees."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path
from typing import Iterator

import optuna
import pytest
import torch
import yaml

from conftest import TINY_STUDY, start_hpsearch
from hpsearch import checkpoints, records
from hpsearch.checkpoints import CheckpointWriter, host_copy, load_checkpoint, save_checkpoint
from hpsearch.errors import CheckpointError, HpsearchError
from mounts import tmpfs


def test_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(HpsearchError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(HpsearchError, match="cannot be read"):
        load_checkpoint(tmp_path / "bad.pt")
    save_checkpoint(tmp_path / "ok.pt", {"x": torch.ones(2)})
    save_checkpoint(tmp_path / "ok.pt", {"x": torch.zeros(2)})  # replaces atomically
    assert torch.equal(load_checkpoint(tmp_path / "ok.pt")["x"], torch.zeros(2))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "ok.pt").stat().st_mode & 0o777 == 0o666 & ~umask  # readable like any other file


def test_host_copy_is_deep_and_detached() -> None:
    weights = torch.ones(3, requires_grad=True)
    history = [{"epoch": 1, "loss": 0.5}]
    payload = {"model": {"w": weights}, "rng": (torch.arange(2),), "history": history, "epoch": 1}
    copied = host_copy(payload)
    with torch.no_grad():
        weights.add_(1.0)
    history.append({"epoch": 2, "loss": 0.4})
    assert torch.equal(copied["model"]["w"], torch.ones(3)) and not copied["model"]["w"].requires_grad
    assert copied["history"] == [{"epoch": 1, "loss": 0.5}] and isinstance(copied["rng"], tuple)
    memo: dict = {}
    first, second = host_copy({"w": weights}, memo), host_copy({"w": weights.detach(), "half": weights[:2]}, memo)
    assert first["w"] is second["w"] and second["half"] is not first["w"]  # the same view is copied once
    assert torch.equal(second["half"], torch.full((2,), 2.0))


def test_writer_saves_the_snapshot_taken_at_submit(tmp_path: Path) -> None:
    writer = CheckpointWriter()
    weights = torch.zeros(1000)
    for epoch in range(1, 4):
        weights.fill_(epoch)
        writer.submit({tmp_path / "state.pt": {"w": weights, "epoch": epoch}})
        weights.fill_(-1.0)  # training goes on and changes the live tensor at once
    writer.flush()
    state = load_checkpoint(tmp_path / "state.pt")
    assert state["epoch"] == 3 and torch.equal(state["w"], torch.full((1000,), 3.0))
    writer.flush()  # nothing pending: returns at once


def test_writer_keeps_only_the_newest_queued_snapshot_per_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[tuple[str, int]] = []
    release = threading.Event()
    started = threading.Event()

    def slow_save(path: Path, payload: dict) -> None:
        started.set()
        release.wait(10)
        written.append((path.name, payload["epoch"]))

    monkeypatch.setattr(checkpoints, "save_checkpoint", slow_save)
    writer = CheckpointWriter()
    writer.submit({tmp_path / "resume.pt": {"epoch": 1}})
    assert started.wait(10)  # epoch 1 is being written; everything below queues behind it
    writer.submit({tmp_path / "resume.pt": {"epoch": 2}})
    writer.submit({tmp_path / "best.pt": {"epoch": 2}})
    writer.submit({tmp_path / "resume.pt": {"epoch": 3}})  # replaces epoch 2, never written
    release.set()
    writer.flush()
    assert written == [("resume.pt", 1), ("best.pt", 2), ("resume.pt", 3)]


def test_write_errors_reach_the_training_thread_once(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    writer = CheckpointWriter()
    writer.submit({tmp_path / "file" / "trial.pt": {"epoch": 1}})
    with pytest.raises(HpsearchError, match="writing a checkpoint failed"):
        writer.flush()
    writer.flush()  # reported once
    writer.submit({tmp_path / "file" / "trial.pt": {"epoch": 2}})
    with pytest.raises(HpsearchError, match="writing a checkpoint failed"):
        writer.flush()
    writer.submit({tmp_path / "ok.pt": {"epoch": 3}})
    writer.flush()
    assert load_checkpoint(tmp_path / "ok.pt")["epoch"] == 3


def test_submit_reports_an_earlier_write_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    writer = CheckpointWriter()
    bad = tmp_path / "file" / "trial.pt"
    writer.submit({bad: {"epoch": 1}})
    deadline = time.monotonic() + 120  # a safety net: the loop ends as soon as the failure is reported
    with pytest.raises(HpsearchError, match="writing a checkpoint failed"):
        while time.monotonic() < deadline:  # the failure lands in the background; a later submit reports it
            writer.submit({tmp_path / "ok.pt": {"epoch": 2}})
            time.sleep(0.01)
    writer.flush()


# ------------------------------------------------------------------ a real full disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs of this test's own (root only; skips where mounting is not allowed)."""
    with tmpfs(tmp_path / "disk", "size=3m") as disk:
        yield disk


def test_a_full_disk_is_an_oserror_not_torchs_runtime_error(small_disk: Path) -> None:
    big = {"w": torch.zeros(1_000_000)}  # 4 MB on a 3 MB disk
    with pytest.raises(OSError) as raised:
        save_checkpoint(small_disk / "trial.pt", big)
    assert raised.value.errno == errno.ENOSPC
    assert list(small_disk.iterdir()) == []  # the temporary file is gone
    writer = CheckpointWriter()
    writer.submit({small_disk / "trial.pt": big})
    with pytest.raises(CheckpointError, match="No space left on device"):
        writer.flush()


def _run_on_full_disk(workdir: Path, out: Path, storage: str) -> tuple[int, str, optuna.Study]:
    study = {**TINY_STUDY, "name": "full", "n_trials": 6, "output_dir": str(out), "storage": storage,
             "model": {"name": "mlp", "args": {"width": 512, "depth": 2}},  # with adam's state > 3 MB a file
             "train": {"epochs": 2, "batch_size": 64, "optimizer": "adam"}}
    (workdir / "s.yaml").write_text(yaml.safe_dump(study))
    proc = start_hpsearch("run", "s.yaml", cwd=workdir)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err, optuna.load_study(study_name="full", storage=storage)


@pytest.mark.parametrize("database", ["another disk", "the same disk"])
def test_a_full_output_disk_stops_the_run_and_queues_the_trial_to_resume(
        small_disk: Path, tmp_path: Path, database: str) -> None:
    db = small_disk / "study.db" if database == "the same disk" else tmp_path / "study.db"
    code, err, study = _run_on_full_disk(tmp_path, small_disk / "out", f"sqlite:///{db}")
    last = err.strip().splitlines()[-1]
    assert code == 1, err
    assert "cannot be written: the disk is full" in last and "free space, then rerun to continue" in last, err
    if database == "another disk":
        assert last.startswith(f"hpsearch: error: s.yaml: output_dir: '{small_disk / 'out'}' cannot be written")
    assert "Traceback" not in err and "unexpected pos" not in err
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 1  # the run stopped at the first refusal, not through a streak of failed trials
    # the database on the full disk may refuse first: then the storage is named, never the trial's code
    expected = ("checkpoint_failed",) if database == "another disk" else ("checkpoint_failed", "storage_failed")
    assert records.stop_reason(failed[0]) in expected
    waiting = [t for t in study.trials if t.state == optuna.trial.TrialState.WAITING]
    assert [records.retry_history_of(t.system_attrs) for t in waiting] == [[failed[0].number]]  # queued to resume
