"""Write tiny datasets in the real on-disk formats, for the real torchvision readers to load.

CIFAR-10 pickle batches + batches.meta, MNIST/FashionMNIST raw idx files, SVHN's
train_32x32.mat and an ImageFolder tree of PNGs. Each writer returns the (x uint8 NCHW, y int64)
the loader should produce. The torchvision classes check their files against the published MD5
sums, which tiny files cannot match: :func:`skip_md5_checks` relaxes only that check.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def _images(n: int, channels: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, channels, size, size), dtype=np.uint8)
    y = np.arange(n, dtype=np.int64) % 10
    return x, y


def skip_md5_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let torchvision accept our tiny files: existence is still checked, the MD5 sum is not."""
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.svhn as svhn

    def exists_only(fpath: str | Path, md5: str | None = None) -> bool:
        return Path(fpath).is_file()

    monkeypatch.setattr(cifar, "check_integrity", exists_only)
    monkeypatch.setattr(svhn, "check_integrity", exists_only)


def write_cifar10(root: Path, per_batch: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Write cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta} under ``root``."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for i, name in enumerate([*CIFAR_TRAIN, "test_batch"]):
        x, y = _images(per_batch, 3, 32, seed + i)
        entry = {"batch_label": name, "labels": y.tolist(), "data": x.reshape(per_batch, -1), "filenames": [f"{name}_{j}.png" for j in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
        if name != "test_batch":
            xs.append(x)
            ys.append(y)
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"], "num_cases_per_batch": per_batch, "num_vis": 3072}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f)
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX format: magic (0, 0, dtype 0x08 = ubyte, ndim), big-endian int32 dims, raw bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str = "MNIST", n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Write ``folder``/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte under ``root``."""
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    x, y = _images(n, 1, 28, seed)
    _write_idx(raw / "train-images-idx3-ubyte", x[:, 0])
    _write_idx(raw / "train-labels-idx1-ubyte", y)
    tx, ty = _images(10, 1, 28, seed + 1)
    _write_idx(raw / "t10k-images-idx3-ubyte", tx[:, 0])
    _write_idx(raw / "t10k-labels-idx1-ubyte", ty)
    return torch.from_numpy(x), torch.from_numpy(y)


def write_svhn(root: Path, n: int = 30, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Write train_32x32.mat (X: 32x32x3xN uint8, y: Nx1 with digit 0 stored as 10) under ``root``."""
    from scipy.io import savemat

    Path(root).mkdir(parents=True, exist_ok=True)
    x, y = _images(n, 3, 32, seed)
    stored = np.where(y == 0, 10, y).astype(np.uint8).reshape(n, 1)
    savemat(str(Path(root) / "train_32x32.mat"), {"X": x.transpose(2, 3, 1, 0), "y": stored})
    return torch.from_numpy(x), torch.from_numpy(y)


def write_image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog", "eel"), per_class: int = 4, size: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Write ``root``/<class>/<i>.png RGB images; returns them at their written size."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for label, name in enumerate(sorted(classes)):
        (Path(root) / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(Path(root) / name / f"{i}.png")
            xs.append(pixels.transpose(2, 0, 1))
            ys.append(label)
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys, dtype=torch.int64)


# The same test body on the CPU (always) and on CUDA (`gpu`, skipped without a GPU): the fast path
# is one code path, and only the CUDA switches differ in what the test expects.
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)]
