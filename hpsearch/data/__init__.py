"""Datasets, stratified splits, the inputs record and device-resident batches.

Every dataset is loaded once into an :class:`ArrayData` (uint8 NCHW images or float features on
the CPU; `datasets`). :class:`DeviceData` then keeps it on the training device and produces shuffled,
augmented, normalised batches from it (airbench style), or streams it through a DataLoader when
it does not fit (`batches`). `inputs` holds the one normalisation and what a prediction needs to know;
`splits` the seeded hold-out, k-fold and bootstrap (out-of-bag) splits.
`targets` holds what each task's labels are (digit strings, diabetes, the checks against the task).
`labelfiles` reads a folder of images with digit-string labels (the house-numbers competition's format).
"""

from __future__ import annotations

from hpsearch.data.datasets import ArrayData, DEFAULT_ROOT, channel_stats, from_arrays, load_dataset, load_test_split
from hpsearch.data.inputs import inputs_record, normalise, normaliser, prepare_inputs
from hpsearch.data.targets import digit_strings, multihead_data, regression_data
from hpsearch.data.splits import bootstrap_splits, split_folds
from hpsearch.data.batches import DeviceData, apply_augment, augment_table, crop_padding, pinned

__all__ = [
    "ArrayData",
    "DEFAULT_ROOT",
    "DeviceData",
    "apply_augment",
    "augment_table",
    "bootstrap_splits",
    "channel_stats",
    "crop_padding",
    "digit_strings",
    "from_arrays",
    "inputs_record",
    "load_dataset",
    "load_test_split",
    "multihead_data",
    "normalise",
    "normaliser",
    "pinned",
    "prepare_inputs",
    "regression_data",
    "split_folds",
]
