"""The optimizer and the learning-rate schedule of a run, both read from :class:`TrainSettings`.

What ``lr`` means: the peak learning rate of one optimizer step, for the effective batch
``batch_size * accum_steps``. It is not rescaled when the batch size changes; schedules only
multiply it by a factor in [0, 1].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from hpsearch.settings import TrainSettings

__all__ = ["build_optimizer", "lr_at"]

ONECYCLE_PCT_START = 0.3
ONECYCLE_DIV_FACTOR = 25.0  # start at lr / 25, as torch.optim.lr_scheduler.OneCycleLR
ONECYCLE_FINAL_DIV_FACTOR = 1e4  # end at lr / 25 / 1e4


def lr_at(step: int, total_steps: int, settings: TrainSettings, steps_per_epoch: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based) out of ``total_steps``: a pure function."""
    peak = settings.lr
    if settings.scheduler == "onecycle":
        return _onecycle(step, total_steps, peak)
    warmup = round(settings.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return peak * (step + 1) / warmup
    if settings.scheduler == "cosine":
        progress = (step - warmup) / max(1, total_steps - warmup)
        return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if settings.scheduler == "step":
        return peak * settings.decay_factor ** (step // (settings.step_size * steps_per_epoch))
    if settings.scheduler == "exponential":
        return peak * settings.decay_factor ** ((step - warmup) / steps_per_epoch)
    return peak


def _onecycle(step: int, total_steps: int, peak: float) -> float:
    start = peak / ONECYCLE_DIV_FACTOR
    end = start / ONECYCLE_FINAL_DIV_FACTOR
    up = max(1, int(ONECYCLE_PCT_START * total_steps))
    if step < up:
        return start + (peak - start) * step / up
    progress = min(1.0, (step - up) / max(1, total_steps - 1 - up))
    return end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, settings: TrainSettings, lr: float | Tensor | None = None,
                    capturable: bool = False) -> torch.optim.Optimizer:
    """Optimizer with two groups: weight decay on params with ndim >= 2, none on biases and norms.

    ``lr`` (default ``settings.lr``) may be a 1-element device tensor that the training step
    updates in place; ``capturable`` makes Adam/AdamW's step safe to capture in a CUDA graph.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": settings.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    lr = settings.lr if lr is None else lr
    # Fused kernels on every device: one launch for all parameters on CUDA, fewer dispatches per
    # step on the CPU too (ops per step and the quickstart's speedup: bench/RESULTS.md).
    if settings.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=settings.momentum,
                               nesterov=settings.nesterov and settings.momentum > 0, fused=True)
    cls = torch.optim.Adam if settings.optimizer == "adam" else torch.optim.AdamW
    return cls(groups, lr=lr, fused=True, capturable=capturable)
