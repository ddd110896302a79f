"""The bundled task datasets (digit_strings, diabetes) and the label checks against the task."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits

from hpsearch.data import load_dataset, multihead_data, regression_data
from hpsearch.errors import DataError


def test_digit_strings_are_seeded_digits_side_by_side_padded_with_the_blank() -> None:
    data = load_dataset("digit_strings", task="multihead", max_length=4, seed=3)
    assert data.x.shape == (3000, 1, 8, 32) and data.x.dtype == torch.uint8
    assert data.y.shape == (3000, 4) and data.num_classes == 11 and data.blank == 10 and data.max_length == 4
    assert data.class_names[-1] == "blank" and data.class_names[:10] == tuple(str(d) for d in range(10))
    lengths = (data.y != 10).sum(1)
    assert set(lengths.tolist()) == {1, 2, 3, 4}
    for row, n in zip(data.y[:50], lengths[:50]):  # padding only after the characters
        assert (row[:n] < 10).all() and (row[n:] == 10).all()
    digits = load_digits()
    first = data.x[0, 0, :, :8]
    matches = [i for i in range(len(digits.images)) if torch.equal(torch.from_numpy(digits.images[i]).to(torch.uint8),
                                                                   first)]
    assert matches and all(digits.target[i] == data.y[0, 0] for i in matches)  # the first character is its digit
    blank_from = 8 * int(lengths[0])
    assert (data.x[0, 0, :, blank_from:] == 0).all()  # the canvas beyond the string is blank
    again = load_dataset("digit_strings", task="multihead", max_length=4, seed=3)
    other = load_dataset("digit_strings", task="multihead", max_length=4, seed=4)
    assert torch.equal(again.x, data.x) and torch.equal(again.y, data.y) and not torch.equal(other.y, data.y)
    assert data.strata.tolist() == lengths.tolist()  # splits stratify on the string length


def test_digit_strings_default_length_and_resize() -> None:
    data = load_dataset("digit_strings", task="multihead", image_size=16)
    assert data.x.shape == (3000, 1, 16, 16) and data.y.shape == (3000, 5)


def test_diabetes_is_float_targets_with_their_statistics() -> None:
    data = load_dataset("diabetes", task="regression")
    assert data.x.shape == (442, 10) and data.y.shape == (442, 1) and data.y.dtype == torch.float32
    assert data.target_mean[0] == pytest.approx(data.y.double().mean().item())
    assert data.target_std[0] == pytest.approx(data.y.double().std(unbiased=False).item(), rel=1e-6)
    assert data.strata.unique().tolist() == [0]


@pytest.mark.parametrize("name, task, expected", [
    ("digit_strings", "classification", "holds digit strings (labels (N, L) padded with a blank class), which task "
                                        "classification cannot learn; set task: multihead"),
    ("diabetes", "multihead", "holds float targets, which task multihead cannot learn; set task: regression"),
    ("digits", "regression", "holds one class label per sample, which task regression cannot learn; set task: "
                             "classification"),
])
def test_a_bundled_dataset_of_another_task_is_refused(name: str, task: str, expected: str) -> None:
    with pytest.raises(DataError, match=rf"^dataset '{name}' {expected.replace('(', '.').replace(')', '.')}$"):
        load_dataset(name, task=task)


def test_multihead_labels_out_of_range_or_with_the_blank_inside_are_refused() -> None:
    x = torch.zeros(3, 4)
    with pytest.raises(DataError, match=r"label 5 is out of range for 4 classes \(0..3, the blank included\)"):
        multihead_data(x, torch.tensor([[0, 3], [5, 3], [1, 2]]), 4, None, None, "s")
    with pytest.raises(DataError, match=r"label -1 is out of range"):
        multihead_data(x, torch.tensor([[0, 3], [-1, 3], [1, 2]]), 4, None, None, "s")
    with pytest.raises(DataError, match=r"the blank class 0 lies inside the real classes \(0..3\); number the labels "
                                        r"so the blank is the last class, 3"):
        multihead_data(x, torch.tensor([[0, 3], [1, 3], [1, 2]]), 4, None, 0, "s")
    assert multihead_data(x, torch.tensor([[0, 3], [1, 3], [1, 2]]), None, None, None, "s").blank == 3


def test_regression_targets_must_be_finite_floats() -> None:
    x = torch.zeros(3, 2)
    with pytest.raises(DataError, match="integer labels .* task regression needs float targets"):
        regression_data(x, torch.tensor([1, 2, 3]), None, "r")
    with pytest.raises(DataError, match="NaN or infinite values"):
        regression_data(x, torch.tensor([1.0, float("nan"), 3.0]), None, "r")
    two = regression_data(x, torch.tensor([[1.0, 10.0], [2.0, 10.0], [3.0, 10.0]]), ["a", "b"], "r")
    assert two.num_classes == 2 and two.target_std[1] == 1.0  # a constant target is left unscaled
