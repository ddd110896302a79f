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

__all__ = ["WorkerStatus", "process_start_time", "read_status"]


def process_start_time() -> float | None:
    """When this process started (wall clock, ~10 ms), from /proc; None where there is no /proc."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return time.time() - age


class WorkerStatus:
    """Writes one worker's status file (atomically: a reader never sees half a file); no file, no-op.

    With `wait_for_folder`, nothing is written until :meth:`materialise` creates the folder (a run
    that stops on bad input leaves no folder behind).
    """

    def __init__(self, path: str | Path | None, started: float | None = None, wait_for_folder: bool = False) -> None:
        self.path = None if path is None else Path(path)
        self.waiting = wait_for_folder
        self.data: dict[str, Any] = {"pid": os.getpid(), "phase": "starting", "since": time.time(),
                                     "phases": [["process", started or time.time()], ["starting", time.time()]]}
        self._write()

    def materialise(self) -> None:
        """Create the status file's folder and write everything recorded so far."""
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.waiting = False
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
        if self.path is None or self.waiting:
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
