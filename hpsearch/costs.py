"""What a trained model costs: trainable parameters, forward latency and the training's peak memory.

Torch side: knows nothing of Optuna or the study file. The same functions run on the CPU and on CUDA;
only how time and memory are read differs by device.
"""

from __future__ import annotations

import resource
import statistics
import time
from pathlib import Path

import torch
from torch import nn

LATENCY_WARMUP = 3  # untimed passes first: lazy initialisation, cuDNN autotuning and caches settle
LATENCY_REPEATS = 9  # timed passes; the median ignores the odd preempted one
CUDA_PEAK = "cuda_peak_allocated"  # what peak_memory_mb measured: the caching allocator's peak on the device
RSS_DELTA = "rss_delta"  # on the CPU: the process's peak resident set during training above its size at the start
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def count_params(model: nn.Module) -> int:
    """Trainable parameters (a parameter shared by two layers counts once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def latency_ms(model: nn.Module, x: torch.Tensor, warmup: int = LATENCY_WARMUP,
               repeats: int = LATENCY_REPEATS) -> float:
    """Median milliseconds of one forward pass of ``x`` in eval mode, after ``warmup`` untimed passes.

    On CUDA each pass is timed with events on the stream (host wall time would measure the launch, not the
    kernels); on the CPU with a monotonic clock. The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        for _ in range(warmup):
            model(x)
        times = _cuda_times(model, x, repeats) if x.device.type == "cuda" else _host_times(model, x, repeats)
    finally:
        model.train(was_training)
    return float(statistics.median(times))


def _host_times(model: nn.Module, x: torch.Tensor, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def _cuda_times(model: nn.Module, x: torch.Tensor, repeats: int) -> list[float]:
    pairs = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        model(x)
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize(x.device)
    return [start.elapsed_time(end) for start, end in pairs]


class MemoryMeter:
    """The peak memory of what runs between :meth:`start` and :meth:`peak_mb`, on the device it runs on.

    CUDA: the allocator's peak (``max_memory_allocated``), reset at the start. CPU: the process's resident
    set high-water mark, reset through ``/proc/self/clear_refs`` where Linux allows it (else the lifetime
    peak, ``ru_maxrss``), minus the resident set at the start: memory the training added, not the process.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = CUDA_PEAK if device.type == "cuda" else RSS_DELTA
        self._base_mb = 0.0

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        self._base_mb = _rss_mb("VmRSS") or 0.0
        try:
            _CLEAR_REFS.write_text("5")  # resets VmHWM to the current resident set (Linux >= 4.0)
        except OSError:
            pass

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        peak = _rss_mb("VmHWM")
        if peak is None:  # no /proc: the lifetime peak (KiB on Linux)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return max(0.0, peak - self._base_mb)


def _rss_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB, or None where there is no /proc."""
    try:
        text = _STATUS.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return None
