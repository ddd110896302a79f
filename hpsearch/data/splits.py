"""Seeded validation splits: stratified hold-out or k-fold, or bootstrap (out-of-bag)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hpsearch import names
from hpsearch.errors import DataError


# --------------------------------------------------------------------------------------------
# splits


def split_folds(
    y: torch.Tensor, *, val_split: float | None, cv_folds: int | None, seed: int, bootstrap: int | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Seeded (train_idx, val_idx) pairs: one for ``val_split``, k for ``cv_folds`` (both stratified), or k for
    ``bootstrap`` (see :func:`bootstrap_splits`).

    Indices are sorted int64 tensors; a hold-out or k-fold pair is disjoint and covers ``range(len(y))``.
    """
    from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit

    if sum(choice is not None for choice in (val_split, cv_folds, bootstrap)) != 1:
        raise DataError("set exactly one of data.val_split, data.cv_folds and data.bootstrap")
    if bootstrap is not None:
        return bootstrap_splits(len(y), bootstrap, seed)
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


def bootstrap_splits(n: int, k: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``k`` bootstrap splits of ``n`` samples: split i trains on ``n`` indices drawn with replacement (repeats
    kept, sorted) and validates on the out-of-bag ones (never drawn, sorted).

    Split i draws from a generator seeded by (``seed``, i), so the same study seed gives the same splits and
    split i does not depend on ``k``. About 36.8 % of the samples are out of bag; a split whose draw left none
    out (only possible for tiny ``n``) is an error, not an empty validation set.
    """
    if not 2 <= k <= names.MAX_BOOTSTRAP:
        raise DataError(f"data.bootstrap must be between 2 and {names.MAX_BOOTSTRAP}, got {k}")
    if n < 2:
        raise DataError(f"data.bootstrap needs at least 2 samples, the dataset has {n}")
    pairs = []
    for i in range(k):
        rng = np.random.default_rng([seed, i])  # a SeedSequence of (seed, i): independent streams per split
        drawn = np.sort(rng.integers(0, n, size=n))
        out_of_bag = np.setdiff1d(np.arange(n), drawn, assume_unique=False)
        if out_of_bag.size == 0:
            raise DataError(f"bootstrap split {i + 1} of {n} samples left none out of bag to validate on; "
                            f"use more data or data.val_split")
        pairs.append((torch.from_numpy(drawn).long(), torch.from_numpy(out_of_bag).long()))
    return pairs
