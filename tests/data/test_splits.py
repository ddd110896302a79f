"""Bootstrap splits: seeded, out-of-bag validation disjoint from the draws, and batches that keep the repeats."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from hpsearch.data import DeviceData, bootstrap_splits, from_arrays, split_folds
from hpsearch.errors import DataError

CPU = torch.device("cpu")


def test_bootstrap_draws_with_replacement_and_validates_out_of_bag() -> None:
    n = 500
    splits = bootstrap_splits(n, 4, seed=7)
    assert len(splits) == 4
    for train, val in splits:
        assert train.dtype == val.dtype == torch.int64
        assert len(train) == n  # n draws, repeats kept
        assert 0 <= int(train.min()) and int(train.max()) < n and 0 <= int(val.min()) and int(val.max()) < n
        assert len(set(train.tolist())) < n  # repeats present (all distinct has probability ~ n!/n^n)
        assert set(train.tolist()).isdisjoint(val.tolist())  # validated only on samples never drawn
        assert set(train.tolist()) | set(val.tolist()) == set(range(n))
        assert val.tolist() == sorted(set(val.tolist())) and train.tolist() == sorted(train.tolist())
        assert 0.30 < len(val) / n < 0.44  # about 1/e out of bag
    assert len({tuple(val.tolist()) for _, val in splits}) == 4  # each split draws its own sample


def test_bootstrap_is_seeded_by_the_study_seed_and_split_number() -> None:
    first = bootstrap_splits(300, 3, seed=1)
    again = split_folds(torch.zeros(300, dtype=torch.int64), val_split=None, cv_folds=None, bootstrap=3, seed=1)
    other = bootstrap_splits(300, 3, seed=2)
    for (a_train, a_val), (b_train, b_val) in zip(first, again):
        assert torch.equal(a_train, b_train) and torch.equal(a_val, b_val)
    assert not any(torch.equal(a, b) for (a, _), (b, _) in zip(first, other))
    longer = bootstrap_splits(300, 5, seed=1)  # split i does not depend on how many splits there are
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(first, longer))


def test_bootstrap_takes_labels_of_any_shape() -> None:
    """Only the sample count matters: (N, L) sequence labels split like (N,) class labels."""
    flat = split_folds(torch.zeros(50, dtype=torch.int64), val_split=None, cv_folds=None, bootstrap=2, seed=0)
    wide = split_folds(torch.zeros(50, 5, dtype=torch.int64), val_split=None, cv_folds=None, bootstrap=2, seed=0)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(flat, wide))


@pytest.mark.parametrize("k", [1, 51])
def test_bootstrap_count_is_bounded(k: int) -> None:
    with pytest.raises(DataError, match=f"data.bootstrap must be between 2 and 50, got {k}"):
        bootstrap_splits(100, k, seed=0)


def test_bootstrap_refuses_an_empty_out_of_bag_set() -> None:
    with pytest.raises(DataError, match="at least 2 samples"):
        bootstrap_splits(1, 2, seed=0)
    # Two samples: a draw of both the same index leaves one out; (0, 1) leaves none.  Some seed below hits it.
    with pytest.raises(DataError, match="left none out of bag"):
        for seed in range(50):
            bootstrap_splits(2, 2, seed=seed)


def test_exactly_one_split_kind() -> None:
    y = torch.arange(20) % 2
    with pytest.raises(DataError, match="exactly one of data.val_split, data.cv_folds and data.bootstrap"):
        split_folds(y, val_split=None, cv_folds=2, bootstrap=2, seed=0)


def test_batches_of_indices_with_repeats_deliver_each_repeat() -> None:
    """A bootstrap draw trains on a sample as often as it was drawn, resident and streamed alike."""
    n = 40
    x = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8) * 5  # the first pixel names the sample
    pool = from_arrays(x, torch.arange(n) % 3)
    train, _ = bootstrap_splits(n, 2, seed=3)[0]
    assert len(set(train.tolist())) < n
    for data in (DeviceData.place(pool, CPU), DeviceData.place(pool, CPU, force_streaming=True)):
        got_x, got_y = [], []
        for xb, yb in data.batches(train, 7, shuffle=True, generator=torch.Generator().manual_seed(0)):
            got_x.append(xb)
            got_y.append(yb)
        raw = torch.cat(got_x)[:, 0, 0, 0] * pool.std[0] + pool.mean[0]
        seen = torch.round(raw / 5).long()
        assert Counter(seen.tolist()) == Counter(train.tolist())
        assert torch.equal(torch.cat(got_y), pool.y[seen])
