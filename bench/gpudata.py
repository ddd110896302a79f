"""CIFAR-10-shaped learnable data for device runs, where nothing can be downloaded.

Used through hpsearch's custom-dataset hook (`data: {dataset: gpudata:cifar_like}` with bench/ on
PYTHONPATH) by bench/gpu_check.sh. GPUDATA_N sets the number of images (default 50,000).
"""

from __future__ import annotations

import os

import torch


def cifar_like(root: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 3, 32, 32) noise with a class-dependent bright patch at a jittered place: learnable, not trivial."""
    n = int(os.environ.get("GPUDATA_N", "50000"))
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    off = torch.randint(0, 8, (n, 2), generator=g)
    for c in range(10):
        row, col = (c // 5) * 12, (c % 5) * 5
        for a in range(8):
            for b in range(8):
                idx = ((y == c) & (off[:, 0] == a) & (off[:, 1] == b)).nonzero().flatten()
                x[idx, c % 3, row + a : row + a + 6, col + b : col + b + 4] = 240
    return x, y
