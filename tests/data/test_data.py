"""Datasets load through the real readers, splits are stratified, device batches are exact."""

from __future__ import annotations

import logging
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from urllib.error import URLError
import torch

from hpsearch.data import (ArrayData, DeviceData, apply_augment, augment_table, from_arrays, load_dataset,
                           prepare_inputs, split_folds)
from hpsearch.errors import DataError
from torch_fixtures import DEVICES, skip_md5_checks, write_cifar10, write_image_folder, write_mnist, write_svhn

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits() -> ArrayData:
    return load_dataset("digits")


def _check(data: ArrayData, x: torch.Tensor, y: torch.Tensor) -> None:
    assert data.x.dtype == torch.uint8 and data.y.dtype == torch.int64
    assert torch.equal(data.x, x)
    assert torch.equal(data.y, y)
    assert data.num_classes == 10
    assert data.is_image
    expected_mean = x.double().mean(dim=(0, 2, 3))
    assert np.allclose(data.mean, expected_mean.tolist())
    assert np.allclose(data.std, x.double().std(dim=(0, 2, 3), unbiased=False).tolist())


def test_digits_loads_as_uint8_images(digits: ArrayData) -> None:
    assert digits.x.shape == (1797, 1, 8, 8)
    assert digits.x.dtype == torch.uint8
    assert int(digits.x.max()) == 16
    assert digits.num_classes == 10
    assert digits.input_shape == (1, 8, 8)
    assert digits.is_image
    assert len(digits.mean) == len(digits.std) == 1
    assert 4.0 < digits.mean[0] < 5.5
    assert digits.class_names == tuple("0123456789")


def test_cifar10_real_pickle_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    skip_md5_checks(monkeypatch)
    x, y = write_cifar10(tmp_path, per_batch=6)
    data = load_dataset("cifar10", root=tmp_path)
    assert data.x.shape == (30, 3, 32, 32)
    _check(data, x, y)
    assert data.class_names[:2] == ("airplane", "automobile")  # torchvision's own names


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_family_real_idx_files(tmp_path: Path, name: str, folder: str) -> None:
    x, y = write_mnist(tmp_path, folder=folder, n=25)
    data = load_dataset(name, root=str(tmp_path))
    assert data.x.shape == (25, 1, 28, 28)
    _check(data, x, y)


def test_svhn_real_mat_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("scipy.io", reason="torchvision reads SVHN's .mat files with scipy")
    skip_md5_checks(monkeypatch)
    x, y = write_svhn(tmp_path, n=20)
    data = load_dataset("svhn", root=tmp_path)
    assert data.x.shape == (20, 3, 32, 32)
    _check(data, x, y)


def test_image_size_resizes_torchvision_sets(tmp_path: Path) -> None:
    write_mnist(tmp_path, n=12)
    data = load_dataset("mnist", root=tmp_path, image_size=32)
    assert data.x.shape == (12, 1, 32, 32) and data.x.dtype == torch.uint8


@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("cifar10", "cifar-10-batches-py"),
        ("mnist", "MNIST/raw"),
        ("fashion_mnist", "FashionMNIST/raw"),
        ("svhn", "train_32x32.mat"),
    ],
)
def test_missing_files_offline_is_one_line_data_error(tmp_path: Path, name: str, where: str) -> None:
    with pytest.raises(DataError) as info:
        load_dataset(name, root=tmp_path, download=False)
    message = str(info.value)
    assert "\n" not in message
    assert f"dataset '{name}'" in message
    assert str(tmp_path / where) in message
    assert "download: true" in message


def test_corrupted_cifar_is_data_error(tmp_path: Path) -> None:
    write_cifar10(tmp_path, per_batch=2)  # MD5 sums do not match the published ones
    with pytest.raises(DataError, match=r"corrupted files in .*cifar-10-batches-py"):
        load_dataset("cifar10", root=tmp_path)


def test_image_folder_loads_and_resizes(tmp_path: Path) -> None:
    x, y = write_image_folder(tmp_path / "imgs", per_class=3, size=32)
    data = load_dataset("image_folder", root=tmp_path / "imgs")
    assert data.num_classes == 3 and data.class_names == ("cat", "dog", "eel")
    assert torch.equal(data.x, x) and torch.equal(data.y, y)
    small = load_dataset("image_folder", root=tmp_path / "imgs", image_size=16)
    assert small.x.shape == (9, 3, 16, 16) and small.x.dtype == torch.uint8
    assert small.class_names == data.class_names  # resizing keeps the names
    assert data.sample_names == tuple(f"{c}/{i}.png" for c in ("cat", "dog", "eel") for i in range(3))  # rows' files


def test_image_folder_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("image_folder", root=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no images in .*empty"):
        load_dataset("image_folder", root=tmp_path / "empty")


def test_unknown_dataset_names_the_choices() -> None:
    with pytest.raises(DataError, match="cifar10, mnist"):
        load_dataset("cifar100")


CUSTOM = """
import numpy as np
import torch
from torch.utils.data import Dataset

def features(root=None):
    rng = np.random.default_rng(0)
    return rng.normal(size=(30, 5)), np.arange(30) % 3

def images(root=None):
    return torch.zeros((8, 3, 4, 4), dtype=torch.uint8), torch.arange(8) % 2

class Squares(Dataset):
    classes = ["even", "odd"]
    def __len__(self):
        return 6
    def __getitem__(self, i):
        return torch.full((1, 2, 2), float(i)), i % 2

def dataset(root=None):
    return Squares()

def named(root=None):
    from hpsearch.data import from_arrays
    return from_arrays(np.eye(4, dtype=np.float32), np.arange(4) % 2, 2, ["no", "yes"])

def unnamed(root=None):
    from hpsearch.data import ArrayData
    return ArrayData(torch.zeros(4, 2), torch.arange(4) % 2, 2, (0.0, 0.0), (1.0, 1.0))

def wrong(root=None):
    return "nope"

def broken(root=None):
    raise ValueError("bad folder " + str(root))

def no_root():
    return np.eye(4, dtype=np.float32), np.arange(4) % 2

def any_keywords(**kwargs):
    return np.eye(4, dtype=np.float32), np.arange(4) % 2
"""


@pytest.fixture
def custom_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "my_data.py").write_text(textwrap.dedent(CUSTOM))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_data"
    sys.modules.pop("my_data", None)


def test_custom_callable_returns(custom_module: str) -> None:
    feats = load_dataset(f"{custom_module}:features")
    assert feats.x.dtype == torch.float32 and feats.input_shape == (5,) and not feats.is_image
    assert feats.num_classes == 3 and len(feats.mean) == 5
    images = load_dataset(f"{custom_module}:images")
    assert images.x.dtype == torch.uint8 and images.is_image and images.num_classes == 2
    squares = load_dataset(f"{custom_module}:dataset")
    assert squares.x.shape == (6, 1, 2, 2) and squares.y.tolist() == [0, 1, 0, 1, 0, 1]
    assert squares.class_names == ("even", "odd")  # a Dataset's `classes`
    assert feats.class_names == ("0", "1", "2")  # none given: the indices
    assert load_dataset(f"{custom_module}:named").class_names == ("no", "yes")
    assert load_dataset(f"{custom_module}:unnamed").class_names == ("0", "1")


def test_class_names_must_match_the_classes() -> None:
    with pytest.raises(ValueError, match="3 class names for 2 classes"):
        from_arrays(torch.zeros(4, 2), torch.arange(4) % 2, 2, ["a", "b", "c"])


def test_prepare_inputs_normalises_raw_inputs_as_training_batches_do(digits: ArrayData) -> None:
    placed = DeviceData.place(digits, torch.device("cpu"))
    idx = torch.arange(0, 40)
    trained_on, _ = next(placed.batches(idx, 40, shuffle=False))
    raw = digits.x[idx]
    record = placed.inputs
    assert record == {"mean": list(digits.mean), "std": list(digits.std), "input_shape": [1, 8, 8], "dtype": "uint8",
                      "num_classes": 10, "class_names": list("0123456789"), "min": 0.0, "max": 16.0}
    assert torch.equal(prepare_inputs(raw, record), trained_on)  # bit for bit: one definition of the formula
    assert torch.equal(prepare_inputs(raw.double().numpy(), record), trained_on)  # numpy float pixels 0..16
    assert torch.equal(prepare_inputs(raw[:, 0], record), trained_on)  # (N, H, W) grey images
    assert torch.equal(prepare_inputs(raw[3], record), trained_on[3:4])  # one sample
    assert not torch.equal(prepare_inputs(raw, record), raw.float())
    with pytest.raises(DataError, match=r"inputs of shape \(40, 64\); expected \(N, 1, 8, 8\)"):
        prepare_inputs(raw.reshape(40, 64), record)
    with pytest.raises(DataError, match="no record of the input normalisation"):
        prepare_inputs(raw, None)


def test_inputs_scaled_to_0_1_get_a_warning_raw_ones_none(digits: ArrayData) -> None:
    record = DeviceData.place(digits, torch.device("cpu")).inputs
    raw = digits.x[:20]
    with pytest.warns(UserWarning, match=r"pass raw values .*not values scaled to 0\.\.1"):
        prepare_inputs(raw.float() / 16, record)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare_inputs(raw.float(), record)  # raw units, as float
        prepare_inputs(torch.zeros(2, 1, 8, 8), record)  # blank images are not a sign of scaling


def test_inputs_far_outside_the_training_range_get_a_warning(digits: ArrayData) -> None:
    record = DeviceData.place(digits, torch.device("cpu")).inputs  # digits: pixels 0..16
    raw = digits.x[:20]
    with pytest.warns(UserWarning, match=r"inputs lie in 0\.\.255, far outside the training data's range 0\.\.16"):
        prepare_inputs((raw.int() * 255 // 16).to(torch.uint8), record)  # rescaled to 0..255 pixels
    with pytest.warns(UserWarning, match="far outside"):
        prepare_inputs(raw.float() - 100, record)
    older = {k: v for k, v in record.items() if k not in ("min", "max")}  # saved before the range was recorded
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare_inputs(raw, record)
        prepare_inputs(raw.float() + 4, record)  # a little beyond: not far
        prepare_inputs((raw.int() * 255 // 16).to(torch.uint8), older)


def test_custom_callable_errors(custom_module: str) -> None:
    with pytest.raises(DataError, match="returned str"):
        load_dataset(f"{custom_module}:wrong")
    with pytest.raises(DataError, match="raised ValueError: bad folder /data/x"):
        load_dataset(f"{custom_module}:broken", root="/data/x")
    with pytest.raises(DataError, match="has no callable 'missing'"):
        load_dataset(f"{custom_module}:missing")
    with pytest.raises(DataError, match="cannot import module 'no_such_module_hps'"):
        load_dataset("no_such_module_hps:make")


def test_custom_callable_without_root_is_told_to_accept_it(custom_module: str) -> None:
    with pytest.raises(DataError, match=r"dataset 'my_data:no_root' must accept the keyword argument root .*"
                                        r"add a parameter such as root=None"):
        load_dataset(f"{custom_module}:no_root")
    assert load_dataset(f"{custom_module}:any_keywords").num_classes == 2  # **kwargs takes root too


# ---------------------------------------------------------------- splits


def test_val_split_stratified_deterministic_disjoint_covering(digits: ArrayData) -> None:
    (train, val), = split_folds(digits.y, val_split=0.2, cv_folds=None, seed=3)
    assert train.dtype == val.dtype == torch.int64
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(len(digits.y)))
    assert abs(len(val) - 0.2 * len(digits.y)) <= 1
    share = torch.bincount(digits.y[val], minlength=10) / len(val)
    overall = torch.bincount(digits.y, minlength=10) / len(digits.y)
    assert torch.allclose(share, overall, atol=0.01)
    (train2, val2), = split_folds(digits.y, val_split=0.2, cv_folds=None, seed=3)
    assert torch.equal(train, train2) and torch.equal(val, val2)
    (_, val3), = split_folds(digits.y, val_split=0.2, cv_folds=None, seed=4)
    assert not torch.equal(val, val3)


def test_kfold_partitions(digits: ArrayData) -> None:
    folds = split_folds(digits.y, val_split=None, cv_folds=5, seed=0)
    assert len(folds) == 5
    vals = torch.cat([v for _, v in folds])
    assert sorted(vals.tolist()) == list(range(len(digits.y)))
    for train, val in folds:
        assert len(train) + len(val) == len(digits.y)
        assert set(train.tolist()).isdisjoint(val.tolist())
        assert torch.bincount(digits.y[val], minlength=10).min() >= 34


def test_split_errors() -> None:
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2])
    with pytest.raises(DataError, match="smallest class has 1"):
        split_folds(y, val_split=None, cv_folds=3, seed=0)
    with pytest.raises(DataError, match="exactly one"):
        split_folds(y, val_split=0.2, cv_folds=3, seed=0)
    with pytest.raises(DataError, match="val_split"):
        split_folds(y, val_split=0.2, cv_folds=None, seed=0)


# ---------------------------------------------------------------- device batches


def _collect(batches) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*batches, strict=True)
    return torch.cat(xs), torch.cat(ys)


def _normalised(data: ArrayData, idx: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    return (data.x[idx].float() - mean) / std


@pytest.fixture(scope="module")
def tagged() -> ArrayData:
    """Images whose first pixel encodes the sample index, so batches can be traced back."""
    n = 100
    x = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return from_arrays(x, torch.arange(n) % 4)


def test_each_index_once_per_epoch_and_batch_sizes_share_tensors(tagged: ArrayData) -> None:
    data = DeviceData.place(tagged, CPU)
    assert data.resident and data.x.data_ptr() == tagged.x.data_ptr()
    indices = torch.arange(3, 97)
    g = torch.Generator().manual_seed(0)
    for batch_size in (7, 32, 94, 200):
        batches = list(data.batches(indices, batch_size, shuffle=True, generator=g))
        assert len(batches) == data.num_batches(len(indices), batch_size)
        x, y = _collect(batches)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert sorted(y.tolist()) == sorted(tagged.y[indices].tolist())
        order = torch.round(x[:, 0, 0, 0] * tagged.std[0] + tagged.mean[0]).long()
        assert sorted(order.tolist()) == indices.tolist()
        assert torch.allclose(x, _normalised(tagged, order), atol=1e-5)
        assert torch.equal(y, tagged.y[order])
    assert data.x.data_ptr() == tagged.x.data_ptr()


def test_shuffle_is_seeded_and_drop_last(tagged: ArrayData) -> None:
    data = DeviceData.place(tagged, CPU)
    idx = torch.arange(100)
    first = _collect(data.batches(idx, 16, shuffle=True, generator=torch.Generator().manual_seed(1)))[0]
    again = _collect(data.batches(idx, 16, shuffle=True, generator=torch.Generator().manual_seed(1)))[0]
    other = _collect(data.batches(idx, 16, shuffle=True, generator=torch.Generator().manual_seed(2)))[0]
    assert torch.equal(first, again) and not torch.equal(first, other)
    plain = _collect(data.batches(idx, 16, shuffle=False))[0]
    assert torch.allclose(plain, _normalised(tagged, idx), atol=1e-5)
    kept = list(data.batches(idx, 16, shuffle=True, drop_last=True))
    assert len(kept) == data.num_batches(100, 16, drop_last=True) == 6
    assert all(len(y) == 16 for _, y in kept)


def test_hflip_and_crop_keep_shapes_and_source_values(tagged: ArrayData) -> None:
    g = torch.Generator().manual_seed(0)
    x = tagged.x[:64]
    flipped = apply_augment(x, augment_table(8, 8, ("hflip",)), g)
    is_flip = (flipped == x.flip(3)).flatten(1).all(1)
    is_same = (flipped == x).flatten(1).all(1)
    assert flipped.shape == x.shape and flipped.dtype == torch.uint8
    assert bool((is_flip | is_same).all()) and 10 < int(is_flip.sum()) < 54
    cropped = apply_augment(x, augment_table(8, 8, ("crop",), padding=2), g)
    assert cropped.shape == x.shape and cropped.dtype == torch.uint8
    padded = torch.nn.functional.pad(x.float(), (2, 2, 2, 2), mode="reflect")
    for i in range(len(x)):  # every crop is one window of the reflect-padded image
        windows = padded[i].unfold(1, 8, 1).unfold(2, 8, 1)  # (C, 5, 5, 8, 8)
        match = (windows == cropped[i].float().view(3, 1, 1, 8, 8)).flatten(3).all(3).all(0)
        assert bool(match.any())
    assert not torch.equal(cropped, x)


def test_augment_table_holds_each_crop_and_flip_once() -> None:
    image = torch.arange(64, dtype=torch.uint8).view(1, 1, 8, 8)
    table = augment_table(8, 8, ("crop", "hflip"), padding=2)
    assert table.shape == (5 * 5 * 2, 64) and table.dtype == torch.int64
    padded = torch.nn.functional.pad(image.float(), (2, 2, 2, 2), mode="reflect")[0, 0]
    windows = padded.unfold(0, 8, 1).unfold(1, 8, 1).reshape(-1, 8, 8)  # every crop of the padded image
    expected = {tuple((w.flip(-1) if flip else w).flatten().tolist()) for flip in (False, True) for w in windows}
    got = {tuple(image.view(64)[row].float().tolist()) for row in table}
    assert len(got) == 50 and got == expected  # every (dy, dx, flip) exactly once: uniform draws
    assert augment_table(8, 8, ("hflip",)).shape == (2, 64) and augment_table(8, 8, ("crop",)).shape == (25, 64)
    picks = apply_augment(image.expand(5000, 1, 8, 8), table, torch.Generator().manual_seed(0))
    assert len({tuple(p.flatten().tolist()) for p in picks}) == 50


def test_augmented_batches_come_from_their_samples(tagged: ArrayData) -> None:
    data = DeviceData.place(tagged, CPU)
    g = torch.Generator().manual_seed(5)
    x, y = _collect(data.batches(torch.arange(100), 25, shuffle=True, augment=("hflip", "crop"), generator=g))
    assert x.shape == (100, 3, 8, 8)
    assert sorted(y.tolist()) == sorted(tagged.y.tolist())
    raw = torch.round(x * torch.tensor(tagged.std).view(1, 3, 1, 1) + torch.tensor(tagged.mean).view(1, 3, 1, 1))
    assert raw.min() >= 0 and raw.max() <= 255


def test_augment_rejects_unknown_and_feature_data() -> None:
    feats = DeviceData.place(from_arrays(torch.randn(10, 4), torch.arange(10) % 2), CPU)
    with pytest.raises(DataError, match="needs image data"):
        next(feats.batches(torch.arange(10), 4, shuffle=False, augment=("hflip",)))
    x, _ = next(feats.batches(torch.arange(10), 4, shuffle=False))
    assert x.shape == (4, 4)
    with pytest.raises(DataError, match="unknown"):
        feats.batches(torch.arange(10), 4, shuffle=False, augment=("rotate",))


@pytest.mark.parametrize("device", DEVICES)
def test_streaming_yields_same_samples_as_resident(tagged: ArrayData, caplog: pytest.LogCaptureFixture, device: str) -> None:
    """The streaming fallback (on CUDA: pinned memory, loader workers, non-blocking copies) gives the same batches."""
    dev = torch.device(device)
    resident = DeviceData.place(tagged, dev)
    with caplog.at_level(logging.WARNING, logger="hpsearch"):
        streamed = DeviceData.place(tagged, dev, force_streaming=True)
    assert resident.resident and resident.x.device.type == dev.type
    assert not streamed.resident and streamed.x.device.type == "cpu"
    assert any("streaming" in r.getMessage() for r in caplog.records)
    idx = torch.arange(5, 95)

    def gen(seed: int) -> torch.Generator:
        return torch.Generator(device=dev).manual_seed(seed)

    for shuffle in (False, True):
        a = _collect(resident.batches(idx, 16, shuffle=shuffle, generator=gen(7)))
        b = _collect(streamed.batches(idx, 16, shuffle=shuffle, generator=gen(7)))
        assert b[0].device.type == b[1].device.type == dev.type
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    a = _collect(resident.batches(idx, 16, shuffle=True, augment=("crop", "hflip"), generator=gen(3)))
    b = _collect(streamed.batches(idx, 16, shuffle=True, augment=("crop", "hflip"), generator=gen(3)))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("device", DEVICES)
def test_placement_budget_is_checked_against_free_memory(tagged: ArrayData, caplog: pytest.LogCaptureFixture, device: str) -> None:
    """On CUDA data over the budget streams (visibly); host memory (the CPU) has no such budget."""
    dev = torch.device(device)
    with caplog.at_level(logging.WARNING, logger="hpsearch"):
        tight = DeviceData.place(tagged, dev, memory_fraction=1e-12)
    assert tight.resident is (dev.type == "cpu")
    logged = [r.getMessage() for r in caplog.records if "streaming" in r.getMessage()]
    if dev.type == "cuda":
        assert len(logged) == 1 and "MiB free" in logged[0]
    else:
        assert not logged
    assert DeviceData.place(tagged, dev).resident


def test_a_failed_download_leaves_no_empty_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.mnist as mnist

    def offline(url: str, **kwargs: object) -> None:
        raise URLError("Name or service not known")

    monkeypatch.setattr(mnist, "download_and_extract_archive", offline)  # the network, and only it, is faked
    (tmp_path / "kept").mkdir()
    with pytest.raises(DataError, match="download to .*MNIST/raw failed"):
        load_dataset("mnist", root=tmp_path / "data" / "sets", download=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]  # data/, data/sets/MNIST/raw all gone
