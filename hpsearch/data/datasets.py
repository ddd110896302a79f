"""Loading a dataset once into an ArrayData: digits, digit strings, diabetes, torchvision sets, image folders, custom
callables; the labels checked against the study's task (`targets`)."""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from hpsearch import names
from hpsearch.errors import DataError
from hpsearch.plugins import import_callable

DEFAULT_ROOT = "./data"

# Where each torchvision set keeps its training files under `root` (named in error messages).
_TORCHVISION_FILES = {
    "cifar10": "cifar-10-batches-py",
    "mnist": os.path.join("MNIST", "raw"),
    "fashion_mnist": os.path.join("FashionMNIST", "raw"),
    "svhn": "train_32x32.mat",
}


@dataclass(frozen=True)
class ArrayData:
    """A whole training pool in memory: inputs, labels (or targets) and per-channel statistics.

    ``x`` is uint8 (N, C, H, W) for images, or float32 (N, ...) for feature data; ``mean`` and
    ``std`` are per channel (dimension 1 of ``x``) in ``x``'s raw units. ``class_names`` defaults
    to "0", "1", ... when not given. What ``y`` holds depends on ``task`` (`hpsearch.tasks`):

    - ``classification``: int64 (N,) class indices below ``num_classes``;
    - ``multihead``: int64 (N, L) class indices, one per character position, padded with ``blank`` (the
      last class, ``num_classes - 1``; its name is in ``class_names`` too); L is :attr:`max_length`;
    - ``regression``: float32 (N, k) targets in their own units; ``num_classes`` is k (one output each,
      ``class_names`` their names) and ``target_mean``/``target_std`` their per-output statistics.

    ``sample_names`` names each sample by its file (``label_folder``, ``image_folder``), or is empty (an index
    names it); ``hpsearch predict --input val`` writes them.
    """

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = ()
    task: str = "classification"
    blank: int | None = None
    target_mean: tuple[float, ...] = ()
    target_std: tuple[float, ...] = ()
    sample_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        given = tuple(str(n) for n in self.class_names) or tuple(str(i) for i in range(self.num_classes))
        if len(given) != self.num_classes:
            raise ValueError(f"{len(given)} class names for {self.num_classes} classes")
        object.__setattr__(self, "class_names", given)  # frozen: the default is filled in once, here

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. (C, H, W)."""
        return tuple(self.x.shape[1:])

    @property
    def is_image(self) -> bool:
        """True for (N, C, H, W) image data."""
        return self.x.ndim == 4

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def max_length(self) -> int | None:
        """Character positions per sample (multihead), else None."""
        return int(self.y.shape[1]) if self.task == "multihead" else None

    @property
    def strata(self) -> torch.Tensor:
        """What hold-out and k-fold splits stratify on: the class, the number of characters, or nothing (one stratum)."""
        if self.task == "multihead":
            return (self.y != self.blank).sum(1)
        if self.task == "regression":
            return torch.zeros(len(self), dtype=torch.int64)
        return self.y


# --------------------------------------------------------------------------------------------
# loading


def load_dataset(
    name: str,
    root: str | Path | None = None,
    download: bool = False,
    image_size: int | list[int] | tuple[int, int] | None = None,
    task: str = "classification",
    max_length: int | None = None,
    seed: int = 0,
    labels: str | None = None,
) -> ArrayData:
    """Load the training split of a dataset into memory, once, its labels checked against ``task``.

    ``name`` is one of :data:`hpsearch.names.DATASETS` or ``"package.module:callable"``. ``image_size``
    resizes images to a square side (default 32 for ``image_folder``, native size otherwise).
    ``max_length`` and ``seed`` shape ``digit_strings`` (characters at most, the draw); ``label_folder`` reads
    ``root``'s images and their ``labels`` file (default labels.json or labels.csv there), resized to
    ``image_size`` (a side or (height, width), default 32), labels padded to ``max_length``.
    Raises :class:`DataError` with a one-line message when the data cannot be found or read, or its
    labels do not fit the task.
    """
    from hpsearch.data.targets import digit_strings, for_task, load_diabetes

    if name == "label_folder":
        return for_task(_load_label_folder(Path(root or DEFAULT_ROOT), image_size or 32,
                                           max_length or names.DEFAULT_MAX_LENGTH, labels), task, name)
    if image_size is not None and image_size < 1:
        raise DataError(f"dataset '{name}': image_size must be a positive integer, got {image_size}")
    if name == "digits":
        data = _load_digits()
    elif name == "digit_strings":
        data = digit_strings(max_length or names.DEFAULT_MAX_LENGTH, seed)
    elif name == "diabetes":
        data = load_diabetes()
    elif name in _TORCHVISION_FILES:
        with _no_new_empty_folders(Path(root or DEFAULT_ROOT)):
            data = _load_torchvision(name, Path(root or DEFAULT_ROOT), download)
    elif name == "image_folder":
        if root is None:
            raise DataError("dataset 'image_folder': set data.root to a folder of class subfolders")
        return for_task(_load_image_folder(Path(root), image_size or 32), task, name)
    elif ":" in name:
        data = _load_custom(name, root, task)
    else:
        choices = ", ".join(names.DATASETS)
        raise DataError(f"dataset '{name}' is unknown; use one of {choices} or 'package.module:callable'")
    if image_size is not None and data.is_image and data.x.shape[-2:] != (image_size, image_size):
        x = _resize(data.x, image_size)
        mean, std = channel_stats(x)
        data = replace(data, x=x, mean=mean, std=std)
    return for_task(data, task, name)


def from_arrays(x: Any, y: Any, num_classes: int | None = None, class_names: Sequence[str] | None = None) -> ArrayData:
    """Build an :class:`ArrayData` from tensors or numpy arrays, computing the statistics.

    uint8 ``x`` of shape (N, C, H, W) or (N, H, W) is kept as images; anything else becomes
    float32 features. ``num_classes`` defaults to ``max(y) + 1``, ``class_names`` to "0", "1", ...
    """
    x = _as_tensor(x)
    y = _as_tensor(y)
    if x.dtype == torch.uint8 and x.ndim == 3:
        x = x.unsqueeze(1)
    elif x.dtype != torch.uint8:
        x = x.to(torch.float32)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"x must have shape (N, ...) with N > 0, got {tuple(x.shape)}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    if y.is_floating_point() and not torch.equal(y, y.round()):
        raise ValueError("y must hold integer class labels")
    y = y.to(torch.int64).contiguous()
    if int(y.min()) < 0:
        raise ValueError("class labels must be >= 0")
    k = int(y.max()) + 1 if num_classes is None else num_classes
    if int(y.max()) >= k:
        raise ValueError(f"label {int(y.max())} does not fit num_classes={k}")
    mean, std = channel_stats(x)
    return ArrayData(x=x.contiguous(), y=y, num_classes=k, mean=mean, std=std, class_names=tuple(class_names or ()))


def _as_tensor(a: Any) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu()
    return torch.from_numpy(np.ascontiguousarray(a))


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (dimension 1) mean and population std of ``x`` in float64."""
    c = x.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    squares = torch.zeros(c, dtype=torch.float64)
    dims = [0, *range(2, x.ndim)]
    # float64 chunks of ~16M elements: exact enough, without a full-size float64 copy.
    rows = max(1, (1 << 24) // max(1, x[0].numel()))
    for chunk in x.split(rows):
        chunk = chunk.to(torch.float64)
        total += chunk.sum(dims)
        squares += chunk.square().sum(dims)
    n = x.numel() / c
    mean = total / n
    var = (squares / n - mean.square()).clamp_min(0.0)
    std = var.sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))  # constant channels: leave unscaled
    return tuple(mean.tolist()), tuple(std.tolist())


def _load_digits() -> ArrayData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.uint8)).unsqueeze(1)
    return from_arrays(x, torch.from_numpy(bunch.target), 10, [str(int(n)) for n in bunch.target_names])


def load_test_split(name: str, root: str | Path | None = None, download: bool = False,
                    image_size: int | None = None) -> ArrayData:
    """The test split of torchvision dataset ``name`` (what ``hpsearch predict --input test`` reads), resized as
    :func:`load_dataset` resizes the training split."""
    if name not in _TORCHVISION_FILES:
        raise DataError(f"dataset '{name}' has no test split of its own (only {', '.join(_TORCHVISION_FILES)} do); "
                        f"give a folder of images or a .npy file")
    with _no_new_empty_folders(Path(root or DEFAULT_ROOT)):
        data = _load_torchvision(name, Path(root or DEFAULT_ROOT), download, train=False)
    if image_size is not None and data.x.shape[-2:] != (image_size, image_size):
        data = from_arrays(_resize(data.x, image_size), data.y, data.num_classes, data.class_names)
    return data


def _load_torchvision(name: str, root: Path, download: bool, train: bool = True) -> ArrayData:
    from torchvision import datasets

    where = root / _TORCHVISION_FILES[name]
    try:
        if name == "cifar10":
            ds = datasets.CIFAR10(str(root), train=train, download=download)
            x = torch.from_numpy(ds.data).permute(0, 3, 1, 2)
            y = torch.as_tensor(ds.targets)
        elif name in ("mnist", "fashion_mnist"):
            cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
            ds = cls(str(root), train=train, download=download)
            x, y = ds.data, ds.targets
        else:
            ds = datasets.SVHN(str(root), split="train" if train else "test", download=download)
            x, y = torch.from_numpy(ds.data), torch.from_numpy(ds.labels)
    except Exception as exc:  # torchvision raises RuntimeError, URLError, AssertionError, OSError...
        raise DataError(_missing_message(name, where, download, exc)) from exc
    return from_arrays(x, y, 10, getattr(ds, "classes", None))  # SVHN has no names: its labels are the digits


@contextmanager
def _no_new_empty_folders(root: Path) -> Iterator[None]:
    """A load that fails removes the empty folders it made (torchvision makes `root` before it downloads)."""
    before = {root, *root.parents} | _folders_under(root)
    existed = {path for path in before if path.is_dir()}
    try:
        yield
    except DataError:
        new = ({root, *root.parents} | _folders_under(root)) - existed
        for path in sorted(new, key=lambda p: len(p.parts), reverse=True):  # the deepest first
            with suppress(OSError):  # not empty (a partial download stays for a retry) or gone
                path.rmdir()
        raise


def _folders_under(root: Path, depth: int = 3) -> set[Path]:
    """Folders at most `depth` levels below `root` (torchvision's own go two deep: MNIST/raw)."""
    if depth == 0 or not root.is_dir():
        return set()
    found: set[Path] = set()
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink():
            found |= {child} | _folders_under(child, depth - 1)
    return found


def _missing_message(name: str, where: Path, download: bool, exc: Exception) -> str:
    detail = " ".join(str(exc).split())[:200]
    if download:
        return (
            f"dataset '{name}': download to {where} failed ({type(exc).__name__}: {detail}); "
            f"check the internet connection, or copy the files there and set data.download: false"
        )
    if where.suffix:  # a single file (svhn)
        what = f"no file {where}" if not where.exists() else f"{where} is unreadable or corrupted ({detail})"
    elif not where.is_dir() or not any(where.iterdir()):
        what = f"no data in {where}"
    else:
        what = f"missing or corrupted files in {where} ({detail})"
    return f"dataset '{name}': {what}; set data.download: true on a machine with internet, or copy the files there"


def _load_label_folder(root: Path, image_size: int | list[int] | tuple[int, int], max_length: int,
                       labels: str | None) -> ArrayData:
    """The competition-format folder as multihead data: 10 digits and the blank (index 10, named "")."""
    from hpsearch.data.labelfiles import load_label_folder
    from hpsearch.data.targets import multihead_data

    folder = load_label_folder(root, image_size if isinstance(image_size, int) else tuple(image_size),
                               max_length, labels)
    names_ = (*folder.classes, "")
    data = multihead_data(folder.images, folder.labels, len(names_), names_, folder.blank, "label_folder")
    return replace(data, sample_names=folder.files)


def _load_image_folder(root: Path, image_size: int) -> ArrayData:
    from PIL import Image
    from torchvision import datasets
    from torchvision.transforms.functional import pil_to_tensor

    if not root.is_dir():
        raise DataError(f"dataset 'image_folder': folder {root} does not exist; set data.root to a folder of class subfolders")
    try:
        ds = datasets.ImageFolder(str(root))
    except (FileNotFoundError, OSError) as exc:
        raise DataError(
            f"dataset 'image_folder': no images in {root} ({' '.join(str(exc).split())}); "
            f"expected one subfolder per class holding image files"
        ) from exc
    x = torch.empty((len(ds), 3, image_size, image_size), dtype=torch.uint8)
    size = (image_size, image_size)
    for i, (path, _) in enumerate(ds.samples):
        try:
            image = ds.loader(path).convert("RGB")
        except OSError as exc:
            raise DataError(f"dataset 'image_folder': cannot read image {path}: {exc}") from exc
        if image.size != size:
            image = image.resize(size, resample=Image.Resampling.BILINEAR)
        x[i] = pil_to_tensor(image)
    data = from_arrays(x, torch.as_tensor(ds.targets), len(ds.classes), ds.classes)
    return replace(data, sample_names=tuple(Path(path).relative_to(root).as_posix() for path, _ in ds.samples))


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 images to size x size, in chunks to bound the float copy."""
    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, x.shape[0], 4096):
        chunk = x[start : start + 4096].to(torch.float32)
        resized = torch.nn.functional.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + 4096] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _load_custom(spec: str, root: str | Path | None, task: str = "classification") -> ArrayData:
    factory = import_callable(spec, "dataset", DataError)
    if not _takes_root(factory):
        raise DataError(f"dataset '{spec}' must accept the keyword argument root (hpsearch calls it with "
                        f"root=data.root); add a parameter such as root=None")
    try:
        result = factory(root=root)
    except Exception as exc:
        raise DataError(f"dataset '{spec}' raised {type(exc).__name__}: {exc}") from exc
    from hpsearch.data.targets import check_class_labels, task_data

    if task != "classification":
        return task_data(result, task, spec)
    check_class_labels(result, spec)
    try:
        if isinstance(result, ArrayData):
            checked = from_arrays(result.x, result.y, result.num_classes, result.class_names)
            if len(result.mean) == len(checked.mean) == len(result.std):
                return replace(checked, mean=tuple(result.mean), std=tuple(result.std))
            return checked
        if isinstance(result, tuple) and len(result) == 2:
            return from_arrays(*result)
        if isinstance(result, Dataset) or (isinstance(result, Sequence) and not isinstance(result, str | bytes)):
            return _materialise(result, getattr(result, "classes", None))
    except (ValueError, TypeError, RuntimeError) as exc:
        raise DataError(f"dataset '{spec}' returned unusable data: {exc}") from exc
    raise DataError(
        f"dataset '{spec}' returned {type(result).__name__}; return an ArrayData, a tuple (x, y) "
        f"of arrays, or a torch Dataset"
    )


def _takes_root(factory: Any) -> bool:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return True  # no inspectable signature (a C function): the call itself will tell
    return any(p.kind is inspect.Parameter.VAR_KEYWORD or (p.name == "root" and p.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)) for p in parameters)


def _materialise(ds: Any, class_names: Sequence[str] | None = None) -> ArrayData:
    """Read a map-style dataset of (input, label) pairs once into one tensor."""
    from torchvision.transforms.functional import pil_to_tensor

    n = len(ds)
    if n == 0:
        raise ValueError("the dataset is empty")
    xs, ys = [], []
    for i in range(n):
        item, label = ds[i]
        if hasattr(item, "convert") and hasattr(item, "size"):  # PIL image
            item = pil_to_tensor(item)
        xs.append(_as_tensor(item))
        ys.append(int(label))
    labels = torch.tensor(ys, dtype=torch.int64)
    return from_arrays(torch.stack(xs), labels, len(class_names) if class_names else None, class_names)
