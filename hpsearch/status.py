"""What a worker is doing, in a small JSON file beside its log: phase, since when, and what it measured.

The supervisor reads these files to show each worker's phase before its first trial (starting,
loading data...), to notice a worker stuck there, and to size the workers per GPU from the first
worker's memory probe. The file keeps every phase with its time, so a benchmark can tell where a
run's start-up time went. Standard library only: the supervisor never imports torch.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["WorkerStatus", "read_status"]


class WorkerStatus:
    """Writes one worker's status file (atomically: a reader never sees half a file); no file, no-op."""

    def __init__(self, path: str | Path | None, started: float | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.data: dict[str, Any] = {"pid": os.getpid(), "phase": "starting", "since": time.time(),
                                     "phases": [["process", started or time.time()], ["starting", time.time()]]}
        self._write()

    def phase(self, name: str, **info: Any) -> None:
        """Enter phase `name` (e.g. 'loading data', 'trials'), recording when, plus any `info`."""
        now = time.time()
        self.data.update(info, phase=name, since=now)
        self.data["phases"].append([name, now])
        self._write()

    def note(self, **info: Any) -> None:
        """Record `info` without changing phase (e.g. the memory probe's numbers)."""
        self.data.update(info)
        self._write()

    def _write(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(self.data))
            os.replace(tmp, self.path)
        except OSError:  # a status file is a courtesy: a full disk must not stop the worker
            tmp.unlink(missing_ok=True)


def read_status(path: str | Path) -> dict[str, Any] | None:
    """A worker's status, or None while there is none (not started yet, or unreadable)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
