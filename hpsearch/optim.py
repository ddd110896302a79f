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

__all__ = ["backbone_factor", "build_optimizer", "lr_at", "splits_backbone"]

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


def splits_backbone(settings: TrainSettings) -> bool:
    """Whether the head and the backbone train at different rates (some epoch or all): separate param groups."""
    return settings.freeze_epochs > 0 or settings.backbone_lr_scale != 1.0


def backbone_factor(epoch: int, settings: TrainSettings) -> float:
    """The backbone's learning rate over the head's in epoch ``epoch`` (0-based): 0 while frozen, else the scale.

    A rate of exactly 0 while frozen keeps the weights bit for bit even where a gradient reached them (SGD and
    Adam(W) move a parameter by lr times something finite, weight decay by lr times wd); the trainer also switches
    the backbone's gradients off and holds its BatchNorms in eval mode (``pretrained.Backbone``).
    """
    return 0.0 if epoch < settings.freeze_epochs else settings.backbone_lr_scale


def build_optimizer(model: nn.Module, settings: TrainSettings, lr: float | Tensor | None = None,
                    capturable: bool = False, backbone_lr: float | Tensor | None = None,
                    head: list[nn.Parameter] | None = None) -> torch.optim.Optimizer:
    """Optimizer with two groups: weight decay on params with ndim >= 2, none on biases and norms.

    ``lr`` (default ``settings.lr``) may be a 1-element device tensor that the training step
    updates in place; ``capturable`` makes Adam/AdamW's step safe to capture in a CUDA graph.
    With ``head`` (the head's parameters, when :func:`splits_backbone`) each of the two groups is split
    in head and backbone (group key ``backbone``); the backbone groups start at ``backbone_lr``.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    lr = settings.lr if lr is None else lr
    parts: list[tuple[list[nn.Parameter], bool]] = [(params, False)]
    if head is not None:
        ids = {id(p) for p in head}
        parts = [([p for p in params if id(p) in ids], False), ([p for p in params if id(p) not in ids], True)]
    groups = []
    for part, backbone in parts:
        rate = (lr * settings.backbone_lr_scale if backbone_lr is None else backbone_lr) if backbone else lr
        groups += [
            {"params": [p for p in part if p.ndim >= 2], "weight_decay": settings.weight_decay, "backbone": backbone,
             "lr": rate},
            {"params": [p for p in part if p.ndim < 2], "weight_decay": 0.0, "backbone": backbone, "lr": rate},
        ]
    groups = [g for g in groups if g["params"]]
    # Fused kernels on every device: one launch for all parameters on CUDA, fewer dispatches per
    # step on the CPU too (ops per step and the quickstart's speedup: bench/RESULTS.md).
    if settings.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=settings.momentum,
                               nesterov=settings.nesterov and settings.momentum > 0, fused=True)
    cls = torch.optim.Adam if settings.optimizer == "adam" else torch.optim.AdamW
    return cls(groups, lr=lr, fused=True, capturable=capturable)
