"""A model factory for the real-Slurm test: the quickstart's MLP, slowed to ~0.7 s per epoch on digits.

A stop signal (scancel, scontrol requeue) must land while a trial is training, not between two
trials; the sleep is per training sample, so an epoch takes the same time whatever the batch size.
"""

from __future__ import annotations

import math
import time
from typing import Any

from torch import nn

SECONDS_PER_SAMPLE = 0.0005  # digits: 1,437 training samples -> ~0.7 s per epoch


class _Slow(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: Any) -> Any:
        if self.training:
            time.sleep(SECONDS_PER_SAMPLE * x.shape[0])
        return self.body(x)


def slow_mlp(input_shape: tuple[int, ...], num_classes: int, dropout: float = 0.0, width: int = 64,
             **_: Any) -> nn.Module:
    return _Slow(nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU(),
                               nn.Dropout(dropout), nn.Linear(width, num_classes)))
