"""Test-time augmentation: fixed views per seed, the same as augmenting the raw image, averaged logits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hpsearch.data import augment_table, normalise, normaliser
from hpsearch.data.tta import tta_logits, tta_rows
from hpsearch.errors import DataError
from hpsearch.steps import EvalStep

SHAPE = (3, 8, 8)


def test_views_are_fixed_by_the_seed_and_never_the_identity() -> None:
    rows = tta_rows(SHAPE, ["hflip", "crop"], 5, seed=1)
    assert rows.shape == (4, 64)
    assert torch.equal(rows, tta_rows(SHAPE, ["crop", "hflip"], 5, seed=1))
    assert not torch.equal(rows, tta_rows(SHAPE, ["hflip", "crop"], 5, seed=2))
    assert not (rows == torch.arange(64)).all(1).any()
    assert len({tuple(r.tolist()) for r in rows}) == 4  # distinct while the table has enough
    table = augment_table(8, 8, ("crop", "hflip"))
    assert all((table == r).all(1).any() for r in rows)  # each is one of training's own augmentations


def test_more_views_than_augmentations_repeat_them() -> None:
    rows = tta_rows((1, 8, 8), ["hflip"], 3, seed=0)  # one non-identity view: the mirror
    assert torch.equal(rows[0], rows[1]) and torch.equal(rows[0], torch.arange(64).view(8, 8).flip(1).flatten())


def test_one_view_is_no_augmentation() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 4))
    x = torch.randn(5, *SHAPE)
    assert torch.equal(tta_logits(model, x, tta_rows(SHAPE, ["crop"], 1, 0)), model(x))


def test_views_of_the_normalised_batch_equal_normalised_views_of_the_raw_image() -> None:
    raw = torch.randint(0, 256, (4, *SHAPE), dtype=torch.uint8)
    scale, shift = normaliser([100.0, 120.0, 90.0], [50.0, 60.0, 70.0], 3)
    row = tta_rows(SHAPE, ["crop", "hflip"], 2, seed=4)[0]
    seen: list[torch.Tensor] = []
    tta_logits(lambda v: seen.append(v) or v.flatten(1), normalise(raw, scale, shift), row[None])
    augmented = raw.reshape(4, 3, 64).index_select(2, row).view(4, *SHAPE)
    assert torch.equal(seen[1], normalise(augmented, scale, shift))


def test_validation_scores_the_mean_of_the_views() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 4)).eval()
    x, y = torch.randn(6, *SHAPE), torch.tensor([0, 1, 2, 3, 0, 1])
    rows = tta_rows(SHAPE, ["crop"], 3, seed=0)
    step = EvalStep(model, loss_fn=nn.CrossEntropyLoss(), amp=None, device=torch.device("cpu"), tta=rows)
    step(x, y)
    flat = x.reshape(6, 3, 64)
    views = [x] + [flat.index_select(2, r).view(6, *SHAPE) for r in rows]
    with torch.no_grad():
        mean = sum(model(v) for v in views) / 3
    metrics = step.sums.read(6)
    assert metrics["loss"] == pytest.approx(float(nn.CrossEntropyLoss()(mean, y)), rel=1e-6)
    assert metrics["accuracy"] == float((mean.argmax(1) == y).double().mean())


def test_tta_needs_images_and_augmentations() -> None:
    with pytest.raises(DataError, match="needs image inputs"):
        tta_rows((10,), ["crop"], 2, 0)
    with pytest.raises(DataError, match="train.augment is empty"):
        tta_rows(SHAPE, [], 2, 0)
