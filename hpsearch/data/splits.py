"""Stratified, seeded validation splits: hold-out or k-fold."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hpsearch.errors import DataError


# --------------------------------------------------------------------------------------------
# splits


def split_folds(
    y: torch.Tensor, *, val_split: float | None, cv_folds: int | None, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Stratified, seeded (train_idx, val_idx) pairs: one for ``val_split``, k for ``cv_folds``.

    Indices are sorted int64 tensors; each pair is disjoint and covers ``range(len(y))``.
    """
    from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit

    if (val_split is None) == (cv_folds is None):
        raise DataError("set exactly one of data.val_split and data.cv_folds")
    labels = y.cpu().numpy()
    counts = np.bincount(labels)
    smallest = int(counts[counts > 0].min())
    if cv_folds is not None:
        if cv_folds < 2:
            raise DataError(f"data.cv_folds must be at least 2, got {cv_folds}")
        if smallest < cv_folds:
            raise DataError(
                f"data.cv_folds={cv_folds} needs at least {cv_folds} samples per class, but the "
                f"smallest class has {smallest}; lower cv_folds"
            )
        splitter: Any = StratifiedKFold(n_splits=cv_folds, shuffle=True, random_state=seed)
    else:
        if not 0.0 < val_split < 1.0:
            raise DataError(f"data.val_split must be between 0 and 1, got {val_split}")
        splitter = StratifiedShuffleSplit(n_splits=1, test_size=val_split, random_state=seed)
    try:
        pairs = list(splitter.split(np.zeros(len(labels)), labels))
    except ValueError as exc:
        raise DataError(
            f"cannot split {len(labels)} samples (smallest class: {smallest}) with "
            f"val_split={val_split}: {exc}; change data.val_split"
        ) from exc
    return [(torch.from_numpy(np.sort(tr)).long(), torch.from_numpy(np.sort(va)).long()) for tr, va in pairs]
