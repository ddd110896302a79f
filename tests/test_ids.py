"""ids: the worker id round trip, one run-id format, the status paths and seeds that must never change."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from hpsearch import ids


def test_a_worker_id_parses_back() -> None:
    assert ids.worker_id() == f"{socket.gethostname()}:{os.getpid()}"
    assert ids.parse_worker_id(ids.worker_id(123)) == (socket.gethostname(), 123)
    assert ids.parse_worker_id("host:with:colons:9") == ("host:with:colons", 9)
    assert [ids.parse_worker_id(w) for w in (None, 7, "nohost", "host:pid")] == [None] * 4


def test_run_ids_are_unique_and_start_with_the_worker() -> None:
    first, second = ids.run_id(), ids.run_id()
    assert first != second and first.startswith(ids.worker_id() + ":")
    assert len(first.split(":")) == len(ids.worker_id().split(":")) + 2  # start time and a random part


def test_status_and_log_paths() -> None:
    assert ids.status_path("runs/x", 3) == Path("runs/x/logs/worker-3.json")
    assert ids.worker_log_path(Path("runs/x"), 0) == Path("runs/x/logs/worker-0.log")


def test_seeds_are_those_every_earlier_run_drew() -> None:
    # Values of the derivations before they moved here: a change would replay or break resumed studies.
    assert ids.derive_seed(42, "worker 7") == 180308113
    assert ids.derive_seed(0, "run after 3 trials") == 1053448748
    assert (ids.trial_seed(42, 0), ids.trial_seed(7, 13)) == (1246065492, 68565740)
