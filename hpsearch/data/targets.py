"""Labels for each task: the bundled ``digit_strings`` (multihead) and ``diabetes`` (regression), custom data that
returns (N, L) labels or float targets, and the checks that the labels fit the study's task.

Every check is one line naming the dataset and the fix (a :class:`DataError`, exit 2 before any trial).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from hpsearch.data.datasets import ArrayData, _as_tensor, channel_stats, from_arrays
from hpsearch.errors import DataError

DIGIT_STRINGS_SIZE = 3000  # images drawn: enough to learn 1-5 digit strings, small enough for a CPU search
DIGIT_SIDE = 8  # scikit-learn's digits are 8x8
BLANK_NAME = "blank"
_TASK_OF = {"digit_strings": "multihead", "label_folder": "multihead", "diabetes": "regression"}  # every other builtin dataset: classification


def digit_strings(max_length: int, seed: int, n: int = DIGIT_STRINGS_SIZE) -> ArrayData:
    """``n`` images of 1 to ``max_length`` of scikit-learn's 8x8 digits side by side on a blank 8 x 8*max_length canvas.

    Each image's length and digits are drawn from ``seed``; the string starts at the left edge (as its label
    reads: a random offset made the task too hard to learn in a CPU search's few epochs, `train.augment: [crop]`
    shifts it). Labels are rows of ``max_length`` digits, padded with the blank class 10 (11 classes per position).
    """
    from sklearn.datasets import load_digits

    if max_length < 1:
        raise DataError(f"dataset 'digit_strings': max_length must be at least 1, got {max_length}")
    bunch = load_digits()
    images, targets = bunch.images.astype(np.uint8), bunch.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_length + 1, size=n)
    picks = rng.integers(0, len(images), size=(n, max_length))
    x = np.zeros((n, 1, DIGIT_SIDE, DIGIT_SIDE * max_length), dtype=np.uint8)
    y = np.full((n, max_length), 10, dtype=np.int64)
    for i in range(n):
        k = int(lengths[i])
        strip = np.concatenate(list(images[picks[i, :k]]), axis=1)  # (8, 8k)
        x[i, 0, :, :strip.shape[1]] = strip
        y[i, :k] = targets[picks[i, :k]]
    names = [str(d) for d in range(10)] + [BLANK_NAME]
    return multihead_data(torch.from_numpy(x), torch.from_numpy(y), 11, names, blank=10, spec="digit_strings")


def load_diabetes() -> ArrayData:
    """scikit-learn's bundled diabetes data: 442 patients, 10 features, one float target (disease progression)."""
    from sklearn.datasets import load_diabetes as sk_diabetes

    bunch = sk_diabetes()
    return regression_data(bunch.data, bunch.target, ["progression"], spec="diabetes")


def multihead_data(x: Any, y: Any, num_classes: int | None, class_names: Any, blank: int | None,
                   spec: str) -> ArrayData:
    """An ArrayData of (N, L) integer labels padded with ``blank`` (default: the last class), checked."""
    y = _as_tensor(y)
    if y.is_floating_point():
        raise DataError(f"dataset '{spec}' returned float labels of shape {tuple(y.shape)}; task multihead needs "
                        f"integer class indices (N, L) padded with a blank class")
    if y.ndim != 2:
        raise DataError(f"dataset '{spec}' returned labels of shape {tuple(y.shape)}; task multihead needs (N, L), "
                        f"one class index per character position (set task: classification for (N,) labels)")
    y = y.to(torch.int64)
    k = int(y.max()) + 1 if num_classes is None else int(num_classes)
    blank = k - 1 if blank is None else int(blank)
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= k:
        raise DataError(f"dataset '{spec}': label {low if low < 0 else high} is out of range for {k} classes "
                        f"(0..{k - 1}, the blank included); fix the labels or num_classes")
    if blank != k - 1:
        raise DataError(f"dataset '{spec}': the blank class {blank} lies inside the real classes (0..{k - 1}); "
                        f"number the labels so the blank is the last class, {k - 1}")
    base = from_arrays(x, torch.zeros(len(y), dtype=torch.int64), k, class_names or None)
    return replace(base, y=y.contiguous(), task="multihead", blank=blank)


def regression_data(x: Any, y: Any, names: Any, spec: str) -> ArrayData:
    """An ArrayData of float targets (N,) or (N, k), kept as float32 (N, k) with their per-output mean and std."""
    y = _as_tensor(y)
    if not y.is_floating_point():
        raise DataError(f"dataset '{spec}' returned integer labels ({y.dtype}); task regression needs float targets "
                        f"(N,) or (N, k): return them as floats, or set task: classification")
    if y.ndim == 1:
        y = y.unsqueeze(1)
    if y.ndim != 2 or not torch.isfinite(y).all():
        what = f"shape {tuple(y.shape)}" if y.ndim != 2 else "NaN or infinite values"
        raise DataError(f"dataset '{spec}' returned targets with {what}; task regression needs finite (N,) or (N, k)")
    y = y.to(torch.float32).contiguous()
    k = int(y.shape[1])
    base = from_arrays(x, torch.zeros(len(y), dtype=torch.int64), k, list(names) if names else None)
    mean, std = channel_stats(y)
    return replace(base, y=y, task="regression", target_mean=mean, target_std=std)


def task_data(result: Any, task: str, spec: str) -> ArrayData:
    """A custom dataset's result (an ArrayData or a tuple (x, y)) for task multihead or regression."""
    if isinstance(result, ArrayData):
        x, y, k, names, blank = result.x, result.y, result.num_classes, result.class_names, result.blank
    elif isinstance(result, tuple) and len(result) == 2:
        (x, y), k, names, blank = result, None, None, None
    else:
        raise DataError(f"dataset '{spec}' returned {type(result).__name__}; for task {task} return an ArrayData or a "
                        f"tuple (x, y) of arrays")
    try:
        if task == "multihead":
            return multihead_data(x, y, k, names, blank, spec)
        return regression_data(x, y, names if isinstance(result, ArrayData) else None, spec)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise DataError(f"dataset '{spec}' returned unusable data: {exc}") from exc


def check_class_labels(result: Any, spec: str) -> None:
    """Labels a classification task cannot take: (N, L) rows or float targets; the fix names the task that can."""
    y = result.y if isinstance(result, ArrayData) else result[1] if isinstance(result, tuple) and len(result) == 2 \
        else None
    if y is None:
        return
    y = _as_tensor(y)
    if y.ndim == 2 and y.shape[1] > 1:
        kind = "float targets" if y.is_floating_point() else "labels"
        fix = "regression" if y.is_floating_point() else "multihead (one class per character position)"
        raise DataError(f"dataset '{spec}' returned {kind} of shape {tuple(y.shape)}; task classification needs (N,) "
                        f"class indices: set task: {fix}")
    if y.is_floating_point() and not torch.equal(y, y.round()):
        raise DataError(f"dataset '{spec}' returned float labels; task classification needs integer class indices: "
                        f"set task: regression for float targets")


def for_task(data: ArrayData, task: str, name: str) -> ArrayData:
    """``data`` if its labels are what ``task`` learns, else a one-line error naming the task to set."""
    if ":" in name:
        return data  # a custom dataset was built for the task already
    holds = _TASK_OF.get(name, "classification")
    if holds != task:
        what = {"multihead": "digit strings (labels (N, L) padded with a blank class)",
                "regression": "float targets", "classification": "one class label per sample"}[holds]
        raise DataError(f"dataset '{name}' holds {what}, which task {task} cannot learn; set task: {holds}")
    return data
