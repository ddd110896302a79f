"""The small error hierarchy: every user-facing failure is an HpsearchError subclass.

The CLI maps ``HpsearchError`` to exit code 2 and prints ``str(error)`` as one line.
"""

from __future__ import annotations


class HpsearchError(Exception):
    """Base class for errors a user can fix; the message names what is wrong and what to do."""


class ConfigError(HpsearchError):
    """The study file is malformed, incomplete or contradictory."""


class StorageError(HpsearchError):
    """The storage URL is unreachable, unsupported or holds an incompatible study."""


class DataError(HpsearchError):
    """A dataset cannot be found, read or built."""


class ModelError(HpsearchError):
    """A model cannot be built from its name and arguments."""


class DeviceError(HpsearchError):
    """The requested device or GPUs are not available."""


class TrialFailureError(HpsearchError):
    """Trials keep failing the same way (usually user code); the study stopped instead of burning its budget."""

    exit_code = 1


class StorageFailure(HpsearchError):
    """The storage stopped working during a run (server gone, disk full, file damaged); rerunning continues."""

    exit_code = 1


class CheckpointError(HpsearchError):
    """The file system refused a checkpoint (disk full, permissions) during a run; rerunning continues.

    Not a failure of the trial: every trial would meet it, so the run stops and the trial resumes later.
    """

    exit_code = 1

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class WorkerCrashError(HpsearchError):
    """A worker process kept dying (killed, crashed); not a problem of the study file."""

    exit_code = 1


class SupervisorGoneError(HpsearchError):
    """The `hpsearch run` that started this worker is gone; the worker stops instead of running unwatched."""

    exit_code = 130  # an interruption: nothing was started, rerunning continues
