"""The study's artifact store: a trial's best checkpoint is linked into it, not copied, where the file system allows."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import optuna
import pytest

from hpsearch import records
from hpsearch.cli import main
from hpsearch.study import artifact_dir, artifact_store


def test_a_trials_best_checkpoint_is_on_disk_once(write_study: Callable[..., Path], workdir: Path) -> None:
    path = write_study(n_trials=1)
    assert main(["run", str(path)]) == 0
    trial = optuna.load_study(study_name="tiny", storage="sqlite:///runs/tiny/study.db").trials[0]
    checkpoint = Path(trial.user_attrs[records.CHECKPOINT])
    stored = [p for p in artifact_dir("runs/tiny").iterdir() if p.is_file()]
    linked = [p for p in stored if p.stat().st_ino == checkpoint.stat().st_ino]
    assert len(stored) == 2 and len(linked) == 1  # history.json and the checkpoint, which is the same file
    assert checkpoint.stat().st_nlink == 2
    history = next(p for p in stored if p not in linked)
    assert history.stat().st_nlink == 1 and history.read_text().startswith("[")  # its temporary name is gone


def test_across_file_systems_the_store_copies(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs a second file system at /dev/shm")
    source = tmp_path / "weights.pt"
    source.write_bytes(os.urandom(4096))
    out = Path(os.path.realpath(shm)) / f"hpsearch-test-{os.getpid()}"
    try:
        store = artifact_store(out)
        with source.open("rb") as f:
            store.write("a1", f)  # os.link fails with EXDEV: the bytes are copied
        copied = artifact_dir(out) / "a1"
        assert copied.read_bytes() == source.read_bytes() and copied.stat().st_ino != source.stat().st_ino
    finally:
        for item in sorted(out.rglob("*"), reverse=True):
            item.unlink() if item.is_file() else item.rmdir()
        out.rmdir()
