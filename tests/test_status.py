"""Worker status files: atomic, phase history kept, unreadable means none."""

from __future__ import annotations

import json
from pathlib import Path

from hpsearch.status import WorkerStatus, read_status


def test_phases_are_recorded_with_their_times(tmp_path: Path) -> None:
    path = tmp_path / "worker-0.json"
    status = WorkerStatus(path, started=1.0)
    status.phase("loading data")
    status.note(probe={"trial_peak": 5})
    status.phase("trials")
    found = read_status(path)
    assert found is not None and found["phase"] == "trials" and found["probe"] == {"trial_peak": 5}
    assert [name for name, _ in found["phases"]] == ["process", "starting", "loading data", "trials"]
    times = [t for _, t in found["phases"]]
    assert times[0] == 1.0 and times[1:] == sorted(times[1:])
    assert [p.name for p in tmp_path.iterdir()] == ["worker-0.json"]  # no temporary file left


def test_no_file_no_status(tmp_path: Path) -> None:
    assert read_status(tmp_path / "missing.json") is None
    (tmp_path / "half.json").write_text('{"phase": "load')
    assert read_status(tmp_path / "half.json") is None
    WorkerStatus(None).phase("trials")  # without a path nothing is written, nothing fails


def test_an_unwritable_status_never_stops_the_worker(tmp_path: Path) -> None:
    status = WorkerStatus(tmp_path / "gone" / "worker-0.json")
    status.phase("trials")  # the folder does not exist: quietly nothing
    assert not (tmp_path / "gone").exists()
    assert json.loads(json.dumps(status.data))["phase"] == "trials"
