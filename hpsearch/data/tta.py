"""Test-time augmentation: logits averaged over the original and K - 1 fixed augmented views.

The views are rows of the training augmentations' pixel-map table (:func:`augment_table`: every crop
shift, mirrored or not), K - 1 of them other than the identity, drawn once by a seed: one transform per
view for the whole batch, so a sample's prediction does not depend on the batch it comes in or on its
position there. The views gather pixels of the normalised batch: a pixel permutation within each channel
commutes with the per-channel normalisation, so this equals augmenting the raw uint8 image first.
Regression outputs are averaged in their normalised units, before ``Regression.predict`` maps them back: that map
is affine per output, so the mean is the same in the data's units, and validation's ``val_mse`` under
``train.tta_val`` is what ``hpsearch predict --tta`` scores. Data without images (tabular features) has no view
to take: ``preflight.check_image_keys`` refuses ``train.tta_val`` and ``train.augment`` there before any trial.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from hpsearch.data.batches import augment_table
from hpsearch.errors import DataError

__all__ = ["tta_logits", "tta_rows"]


def tta_rows(input_shape: Sequence[int], augment: Sequence[str], k: int, seed: int,
             device: torch.device | str = "cpu") -> Tensor:
    """The (k - 1, H * W) pixel maps of the extra views for images of ``input_shape`` (C, H, W), fixed by ``seed``.

    Distinct non-identity rows while there are enough, then the same order again.
    """
    if k < 1:
        raise DataError(f"tta must be at least 1 (1: no augmentation), got {k}")
    if k == 1:
        return torch.empty((0, 0), dtype=torch.int64, device=device)
    if len(input_shape) != 3:
        raise DataError(f"tta = {k} needs image inputs (C, H, W), but samples have shape {tuple(input_shape)}")
    if not augment:
        raise DataError(f"tta = {k} needs augmentations, but the study's train.augment is empty; use tta 1")
    _, height, width = (int(d) for d in input_shape)
    table = augment_table(height, width, tuple(sorted(augment)))  # sorted: as DeviceData draws training views
    identity = torch.arange(height * width)
    others = torch.nonzero((table != identity).any(1)).flatten()
    order = others[torch.randperm(others.numel(), generator=torch.Generator().manual_seed(seed))]
    picks = order.repeat((k - 1 + order.numel() - 1) // order.numel())[: k - 1]
    return table.index_select(0, picks).to(device)


def tta_logits(model: Callable[[Tensor], Tensor], x: Tensor, rows: Tensor) -> Tensor:
    """Mean float32 logits of ``model`` over ``x`` (N, C, H, W) itself and one view per row of ``rows``.

    Fixed shapes and index tensors only: a CUDA graph captures it like a plain forward.
    """
    total = model(x).float()
    if rows.numel() == 0:
        return total
    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w)
    for row in rows:
        total = total + model(flat.index_select(2, row).view(n, c, h, w)).float()
    return total / (rows.shape[0] + 1)
