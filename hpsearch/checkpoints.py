"""Checkpoint files: atomic writes, safe reads, and a background writer that keeps training going.

A trial saves its best weights when the metric improves and its resumable state every epoch. For
a large model that is hundreds of MB per epoch; written inline, the accelerator waits for the disk.
:class:`CheckpointWriter` snapshots the tensors to host memory (fast) and leaves the write to a
thread, so the next epoch starts at once.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import torch

from hpsearch.errors import CheckpointError, HpsearchError

__all__ = ["CheckpointWriter", "host_copy", "load_checkpoint", "save_checkpoint"]

log = logging.getLogger("hpsearch")


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically (temporary file in the same folder, then rename).

    The file gets the usual permissions (0666 less the umask), so teammates sharing ``runs/`` can read it.
    A refused write (disk full, quota) raises the file system's OSError, never torch's errno-less RuntimeError.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mkstemp would make it 0600
    try:
        with os.fdopen(fd, "wb") as f:
            sink = _Sink(f)
            try:
                torch.save(payload, sink)
            except RuntimeError as exc:  # torch reports a failed write as "unexpected pos": find the real cause
                raise _refusal(sink, path.parent) or exc
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Sink:
    """The file torch.save writes to, keeping the OSError of a refused write that torch turns into a RuntimeError."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self.file.flush()


def _refusal(sink: _Sink, folder: Path) -> OSError | None:
    """The file system's refusal behind a failed torch.save: the write's own OSError, or a full disk found now."""
    if sink.error is not None:
        return sink.error
    try:
        sink.file.flush()  # what torch's writer left in the buffer: a full disk refuses it with ENOSPC
        stat = os.statvfs(folder)
    except OSError as exc:
        return exc
    if stat.f_bavail == 0:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))
    return None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only``: tensors and primitives)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as exc:
        raise HpsearchError(f"checkpoint {path} does not exist") from exc
    except Exception as exc:
        raise HpsearchError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); delete it to start over") from exc


def host_copy(obj: Any, memo: dict[tuple[Any, ...], torch.Tensor] | None = None) -> Any:
    """A deep copy of nested dicts, lists and tuples with every tensor copied to host memory.

    Views of the same memory (the same weights in two state dicts) are copied once per ``memo``.
    """
    memo = {} if memo is None else memo
    if isinstance(obj, torch.Tensor):
        key = (obj.device, obj.data_ptr(), obj.storage_offset(), obj.dtype, tuple(obj.shape), obj.stride())
        if key not in memo:
            memo[key] = obj.detach().to("cpu", copy=True)
        return memo[key]
    if isinstance(obj, dict):
        return {key: host_copy(value, memo) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(host_copy(value, memo) for value in obj)
    return obj


class CheckpointWriter:
    """Writes checkpoints on one background thread, newest snapshot per path, errors re-raised.

    :meth:`submit` copies the payloads (tensors to host memory: training may change them right
    after; a tensor in several of them once) and returns; a snapshot still queued for the same
    path is replaced, since only the newest matters. :meth:`flush` waits until everything
    submitted is on disk and re-raises the first write error; :meth:`submit` re-raises it too.
    Each file is replaced atomically, so a crash leaves the previous version intact.
    """

    def __init__(self) -> None:
        self._queued: dict[Path, dict[str, Any]] = {}
        self._writing = False
        self._error: tuple[Path, BaseException] | None = None
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, files: dict[str | Path, dict[str, Any]]) -> None:
        """Queue each payload for its path (a snapshot taken now) and return without waiting for the disk."""
        self._raise_error()
        memo: dict[tuple[Any, ...], torch.Tensor] = {}
        snapshots = {Path(path): host_copy(payload, memo) for path, payload in files.items()}
        with self._cond:
            for path, snapshot in snapshots.items():
                self._queued.pop(path, None)  # re-insert: writes stay in submission order
                self._queued[path] = snapshot
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="hpsearch-checkpoints", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def flush(self) -> None:
        """Wait until every submitted checkpoint is written; re-raise the first write error."""
        with self._cond:
            while self._queued or self._writing:
                if self._thread is None or not self._thread.is_alive():
                    raise HpsearchError("the checkpoint writer thread is gone; checkpoints were not written")
                self._cond.wait(timeout=1.0)
        self._raise_error()

    def _raise_error(self) -> None:
        with self._cond:
            failed, self._error = self._error, None
        if failed is None:
            return
        path, error = failed
        if isinstance(error, OSError):  # the file system's refusal (disk full, permissions): no trial could save
            raise CheckpointError(f"writing a checkpoint failed ({path}: {error.strerror or error})",
                                  str(path)) from error
        raise HpsearchError(f"writing a checkpoint failed ({type(error).__name__}: {error})") from error

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queued:
                    self._cond.wait()
                path = next(iter(self._queued))
                snapshot = self._queued.pop(path)
                self._writing = True
            try:
                save_checkpoint(path, snapshot)
            except Exception as exc:  # kept for the training thread, which decides what to do
                log.error("checkpoint %s could not be written: %s", path, exc)
                with self._cond:
                    self._error = self._error or (path, exc)
            finally:
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()
