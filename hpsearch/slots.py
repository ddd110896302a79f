"""GPU assignment for worker processes, as pure functions, plus lock-file GPU claims for containers.

`assign_slots` decides which worker slot runs on which GPU; `Slot.env` is the environment that pins
a child process to its GPU. `claim_gpu` is for workers that cannot be told their GPU (docker
replicas that all see every GPU): each holds an exclusive lock on one GPU's lock file for as long as
it lives. This module never imports torch at import time, so `hpsearch validate` stays fast.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import sys
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping, Sequence, Union

from hpsearch.config import StudyConfig
from hpsearch.errors import ConfigError, DeviceError

log = logging.getLogger("hpsearch")
GpuRequest = Union[Literal["all", "none"], list[int]]

_CLAIM_POLL_S = 0.1


def cuda_visible_devices(gpu: int | None, parent: str | None = None) -> str:
    """The `CUDA_VISIBLE_DEVICES` value that shows a child only `gpu` (an index as this process sees it).

    When this process itself runs under `CUDA_VISIBLE_DEVICES` (`parent`), index i means the i-th
    entry of that list, so the child gets that entry (a number, UUID or MIG id) rather than `i`.
    `None` (a CPU slot) gives "" so the child sees no GPU at all.
    """
    if gpu is None:
        return ""
    if parent is not None and parent.strip():
        entries = [entry.strip() for entry in parent.split(",") if entry.strip()]
        if 0 <= gpu < len(entries):
            return entries[gpu]
    return str(gpu)


def _child_env(gpu: int | None, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    environ = os.environ if environ is None else environ
    return {"CUDA_VISIBLE_DEVICES": cuda_visible_devices(gpu, environ.get("CUDA_VISIBLE_DEVICES"))}


@dataclass(frozen=True)
class Slot:
    """One worker process on this machine: its slot number and its GPU (None: a CPU worker)."""

    index: int
    gpu: int | None

    @property
    def env(self) -> dict[str, str]:
        """Environment for the child process: only its GPU visible (it becomes cuda:0 there); a CPU slot sees none."""
        return _child_env(self.gpu)

    @property
    def label(self) -> str:
        """Short name for logs and trial attributes: 'gpu1#3' (slot 3, on GPU 1) or 'cpu#2'."""
        device = "cpu" if self.gpu is None else f"gpu{self.gpu}"
        return f"{device}#{self.index}"


def _format_gpus(gpus: Sequence[int]) -> str:
    return ",".join(str(gpu) for gpu in gpus)


def _check_gpu_list(gpus: Sequence[object], shown: str) -> list[int]:
    """Every entry a non-negative int, each once, at least one; errors name the flag and the fix."""
    if len(gpus) == 0:
        raise ConfigError("--gpus: the GPU list is empty; use all, none or indices like 0,1")
    for gpu in gpus:
        if isinstance(gpu, bool) or not isinstance(gpu, int) or gpu < 0:
            raise ConfigError(
                f"--gpus {shown}: {gpu!r} is not a GPU index; use all, none or non-negative indices like 0,1"
            )
    seen: set[int] = set()
    for gpu in gpus:
        if gpu in seen:
            raise ConfigError(f"--gpus {shown}: GPU {gpu} is listed twice; list each GPU once")
        seen.add(gpu)
    return [int(gpu) for gpu in gpus]  # type: ignore[call-overload]


def parse_gpus(text: str | int | Sequence[int] | None) -> GpuRequest:
    """Normalise a GPU request: None or "all" → "all"; "none" → "none"; "0,1,3" or [0, 1, 3] → [0, 1, 3].

    The order of an explicit list is kept (slots spread across GPUs in that order). Bad input raises
    a one-line ConfigError that names `--gpus` and what to write instead.
    """
    if text is None:
        return "all"
    if isinstance(text, bool):
        raise ConfigError(f"--gpus: {text!r} is not a GPU list; use all, none or indices like 0,1")
    if isinstance(text, int):
        return _check_gpu_list([text], str(text))
    if isinstance(text, str):
        word = text.strip().lower()
        if word in ("all", "none"):
            return word  # type: ignore[return-value]
        parts = [part.strip() for part in word.split(",") if part.strip()]
        if not parts:
            raise ConfigError(f"--gpus: {text!r} names no GPU; use all, none or indices like 0,1")
        gpus: list[int] = []
        for part in parts:
            if not (part.isascii() and part.isdigit()):
                raise ConfigError(
                    f"--gpus {text}: {part!r} is not a GPU index; use all, none or comma-separated indices like 0,1"
                )
            gpus.append(int(part))
        return _check_gpu_list(gpus, _format_gpus(gpus))
    if isinstance(text, (list, tuple)):
        return _check_gpu_list(list(text), ",".join(str(gpu) for gpu in text))
    raise ConfigError(f"--gpus: {text!r} is not a GPU list; use all, none or indices like 0,1")


def assign_slots(
    visible: Sequence[int],
    requested: GpuRequest,
    trials_per_gpu: int = 1,
    workers: int | None = None,
) -> list[Slot]:
    """Worker slots for this machine.

    GPUs: `requested` "all" takes every visible GPU, a list takes those GPUs (each must be visible).
    Each GPU gets `trials_per_gpu` slots, spread across GPUs first (gpu0, gpu1, gpu0, gpu1, ...);
    `workers`, when given, is the exact number of slots: the first `workers` of that order, cycling
    on across the GPUs when it asks for more. CPU ("none", or "all" with no visible GPU): `workers`
    CPU slots, default 1.
    """
    if isinstance(trials_per_gpu, bool) or not isinstance(trials_per_gpu, int) or trials_per_gpu < 1:
        raise ConfigError(f"workers.trials_per_gpu: must be a positive integer (got {trials_per_gpu!r})")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"--workers: must be a positive integer (got {workers!r})")
    request = parse_gpus(requested)
    if request == "none" or (request == "all" and not visible):
        return [Slot(index, None) for index in range(workers or 1)]
    if request == "all":
        chosen = list(visible)
    else:
        shown = _format_gpus(request)
        if not visible:
            raise DeviceError(
                f"--gpus {shown}: no CUDA GPU is visible on this machine; use --gpus none to train on the CPU"
            )
        missing = [gpu for gpu in request if gpu not in visible]
        if missing:
            which = f"GPU {missing[0]} is" if len(missing) == 1 else f"GPUs {', '.join(map(str, missing))} are"
            raise DeviceError(
                f"--gpus {shown}: {which} not visible (visible: {', '.join(map(str, visible))}); "
                "pick from those or use --gpus all"
            )
        chosen = list(request)
    count = len(chosen) * trials_per_gpu if workers is None else workers
    # Spread order: consecutive slots land on different GPUs, so a partial set still uses every GPU.
    return [Slot(index, chosen[index % len(chosen)]) for index in range(count)]


def visible_gpus() -> list[int]:
    """Indices of the CUDA GPUs this process can use ([] without CUDA or without torch).

    Asked of NVML when its library loads (what torch itself does, in milliseconds, without torch's
    ~2 s import or a CUDA context), else of torch. A machine without an NVIDIA or AMD driver has
    none, and is answered at once: the supervisor of a CPU run never imports torch.
    """
    if not _driver_present():
        return []
    count = _nvml_count()
    if count is not None:
        shown = _visible_count(os.environ.get("CUDA_VISIBLE_DEVICES"), count)
        if shown is not None:
            return list(range(shown))
    try:
        import torch
    except ImportError:
        return []
    try:
        return list(range(torch.cuda.device_count()))
    except (RuntimeError, AssertionError):
        return []


_DRIVER_FILES = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd")  # NVIDIA, AMD (ROCm)


def _driver_present() -> bool:
    if not sys.platform.startswith("linux"):
        return True  # no cheap way to tell elsewhere: ask torch
    return any(os.path.exists(path) for path in _DRIVER_FILES)


def _nvml_count() -> int | None:
    """The number of NVIDIA GPUs per NVML, or None where NVML cannot be asked."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
        if nvml.nvmlInit_v2() != 0:
            return None
        count = ctypes.c_uint(0)
        try:
            return int(count.value) if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0 else None
        finally:
            nvml.nvmlShutdown()
    except (OSError, AttributeError):
        return None


def _visible_count(cuda_visible: str | None, count: int) -> int | None:
    """How many of `count` GPUs CUDA_VISIBLE_DEVICES leaves visible; None for forms only CUDA can read (UUIDs, MIG)."""
    if cuda_visible is None:
        return count
    seen: list[int] = []
    for entry in cuda_visible.split(","):
        entry = entry.strip()
        if not entry.lstrip("-").isdigit():
            return None if entry else len(seen)
        index = int(entry)
        if index < 0 or index >= count or index in seen:
            break  # CUDA stops at the first invalid entry
        seen.append(index)
    return len(seen)


class GpuClaim:
    """Pin this worker to one GPU of a shared machine by holding an exclusive lock file: used by docker workers that all see every GPU.

    The lock is a `flock` on `<lock_dir>/gpu<i>.lock` held through an open descriptor, so the kernel
    drops it when the claim is released, the descriptor closed or the process dies (SIGKILL
    included); no stale lock survives a crashed worker. The descriptor is not inherited by exec'd
    children (but a forked child shares it, and with it the lock, until it exits).
    """

    def __init__(self, gpu: int, path: Path, fd: int) -> None:
        self.gpu = gpu
        self.path = path
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        """Whether this claim still holds its lock."""
        return self._fd is not None

    @property
    def env(self) -> dict[str, str]:
        """Environment that shows a child process only the claimed GPU."""
        return _child_env(self.gpu)

    def release(self) -> None:
        """Give the GPU back (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor drops the flock

    def __enter__(self) -> GpuClaim:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"GpuClaim(gpu={self.gpu}, path={str(self.path)!r}, held={self.held})"


def _lock_name(gpu: int, rank: int) -> str:
    return f"gpu{gpu}.lock" if rank == 0 else f"gpu{gpu}.{rank}.lock"


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    # Who holds it, for a person looking at the folder; the lock itself is what counts.
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
    return fd


def claim_gpu(
    lock_dir: str | Path,
    gpus: Sequence[int],
    wait_s: float = 0.0,
    trials_per_gpu: int = 1,
) -> GpuClaim:
    """Claim the first free GPU of `gpus` by locking `lock_dir/gpu<i>.lock`; hold it for the claim's lifetime.

    With `trials_per_gpu` > 1 each GPU has that many claimable slots (`gpu<i>.lock`, `gpu<i>.1.lock`, ...),
    taken in spread order like `assign_slots`. When every slot is taken, retry for up to `wait_s`
    seconds, then raise a one-line DeviceError. `lock_dir` must be on a local file system shared by
    the workers (a docker named volume); it is created if missing.
    """
    directory = Path(lock_dir)
    gpu_list = list(gpus)
    if not gpu_list:
        raise DeviceError(f"--gpu-claim {directory}: no CUDA GPU is visible to claim; run the worker with GPUs or without --gpu-claim")
    if trials_per_gpu < 1:
        raise ConfigError(f"workers.trials_per_gpu: must be a positive integer (got {trials_per_gpu!r})")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DeviceError(f"--gpu-claim {directory}: cannot create the lock folder ({exc.strerror}); use a writable folder") from None
    order = [(gpu, rank) for rank in range(trials_per_gpu) for gpu in gpu_list]
    deadline = time.monotonic() + max(wait_s, 0.0)
    while True:
        for gpu, rank in order:
            path = directory / _lock_name(gpu, rank)
            try:
                fd = _try_lock(path)
            except OSError as exc:
                raise DeviceError(f"--gpu-claim {directory}: cannot open {path.name} ({exc.strerror}); use a folder this user can write") from None
            if fd is not None:
                return GpuClaim(gpu, path, fd)
        if time.monotonic() >= deadline:
            break
        time.sleep(min(_CLAIM_POLL_S, max(deadline - time.monotonic(), 0.0)))
    if trials_per_gpu > 1:
        what = f"all {len(order)} GPU slots ({len(gpu_list)} GPUs x {trials_per_gpu}) in {directory} are"
    elif len(gpu_list) == 1:
        what = f"the only GPU in {directory} is"
    else:
        what = f"all {len(gpu_list)} GPUs in {directory} are"
    waited = f" (waited {wait_s:g}s)" if wait_s > 0 else ""
    raise DeviceError(f"{what} claimed by other workers{waited}; run fewer workers or add GPUs")


# --------------------------------------------------------------------------- how many trials share a GPU

MAX_TRIALS_PER_GPU = 8
GPU_HEADROOM = 0.15  # of the GPU's memory, kept free for fragmentation, cuDNN workspaces and other processes
GIB = 2**30


@dataclass(frozen=True)
class MemoryProbe:
    """What the first worker on a GPU measured before its first trial (bytes)."""

    trial_peak: int  # one trial's peak allocation at the largest batch size and model in the space
    worker_fixed: int  # what a worker holds besides its trial: CUDA context and resident data
    free: int  # free on the GPU after the probe, with the probing worker's own share already taken
    total: int
    batch_size: int  # the batch size the peak was measured at


def auto_trials_per_gpu(probe: MemoryProbe | None, cores: int, gpus: int,
                        cap: int = MAX_TRIALS_PER_GPU) -> tuple[int, str]:
    """Trials per GPU for `workers.trials_per_gpu: auto`, and why, from measured numbers.

    Memory: the probing worker plus as many more as fit in the free memory, each needing its fixed
    share and a trial's peak, keeping `GPU_HEADROOM` of the GPU free. CPU: about one core per GPU
    worker. At most `cap`. Without a probe (it failed), one per GPU.
    """
    if probe is None:
        return 1, "1 per GPU (no memory measurement; set workers.trials_per_gpu to choose)"
    usable = probe.free - GPU_HEADROOM * probe.total - probe.trial_peak
    by_memory = 1 + max(0, int(usable // max(1, probe.worker_fixed + probe.trial_peak)))
    by_cores = max(1, cores // max(1, gpus))
    chosen = max(1, min(by_memory, by_cores, cap))
    limit = {by_memory: "memory", by_cores: "CPU cores", cap: "the cap"}[min(by_memory, by_cores, cap)]
    return chosen, (f"{chosen} per GPU, set by {limit}: a trial peaks at {probe.trial_peak / GIB:.2f} GiB at batch "
                    f"{probe.batch_size} and a worker holds {probe.worker_fixed / GIB:.2f} GiB besides, "
                    f"{probe.free / GIB:.1f} of {probe.total / GIB:.1f} GiB are free (keeping {GPU_HEADROOM:.0%} "
                    f"headroom: {by_memory} fit); {cores} CPU cores for {gpus} GPU(s): {by_cores}; at most {cap}")


# --------------------------------------------------------------------------- the slots of a run

def plan_slots(cfg: StudyConfig, gpus: str | None, workers: int | None) -> tuple[list[Slot], bool]:
    """This machine's worker slots for a run (`--gpus` and `--workers` over the file), and whether
    `trials_per_gpu: auto` will add more once the first worker on each GPU has measured memory."""
    requested = parse_gpus(gpus) if gpus is not None else cfg.workers.gpus
    visible = [] if cfg.device == "cpu" else visible_gpus()
    if cfg.device == "cuda" and not visible:
        raise DeviceError("--device cuda: no CUDA GPU is visible; use --device cpu or auto")
    tpg = cfg.workers.trials_per_gpu
    count = workers or cfg.workers.n
    slots = assign_slots(visible, requested, tpg if isinstance(tpg, int) else 1, count)
    auto = tpg == "auto" and count is None and any(slot.gpu is not None for slot in slots)
    return slots, auto


def enough_slots(slots: list[Slot], remaining: int) -> list[Slot]:
    """No more workers than trials left to run: each extra one would load the data and find nothing to do."""
    keep = max(1, remaining)
    if len(slots) > keep:
        log.info("starting %d workers, not %d: only %d trials are left to run", keep, len(slots), max(0, remaining))
    return slots[:keep]


def worker_slot(cfg: StudyConfig, index: int, gpus: str | None, claim_dir: str | None,
                claim_wait: float) -> tuple[Slot, GpuClaim | None]:
    """The slot of one `hpsearch worker`: a claimed GPU (docker), the one `--gpus` names, the first, or the CPU.

    A claim sets CUDA_VISIBLE_DEVICES before CUDA starts: the process then sees only that GPU, as cuda:0.
    """
    visible = [] if cfg.device == "cpu" else visible_gpus()
    if claim_dir:
        tpg = cfg.workers.trials_per_gpu
        claim = claim_gpu(claim_dir, visible, wait_s=claim_wait, trials_per_gpu=tpg if isinstance(tpg, int)
                          else MAX_TRIALS_PER_GPU)
        os.environ.update(claim.env)
        return Slot(index, 0), claim
    if gpus is not None:
        return Slot(index, assign_slots(visible, parse_gpus(gpus), 1, 1)[0].gpu), None
    return Slot(index, 0 if visible else None), None
