"""Datasets, stratified splits and device-resident batches.

Every dataset is loaded once into an :class:`ArrayData` (uint8 NCHW images or float features on
the CPU). :class:`DeviceData` then keeps it on the training device and produces shuffled,
augmented, normalised batches from it (airbench style), or streams it through a DataLoader when
it does not fit.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from hpsearch import names
from hpsearch.errors import DataError
from hpsearch.plugins import import_callable

__all__ = [
    "AUGMENTATIONS",
    "DATASET_NAMES",
    "ArrayData",
    "DeviceData",
    "apply_augment",
    "augment_table",
    "inputs_record",
    "load_dataset",
    "normalise",
    "normaliser",
    "pinned",
    "prepare_inputs",
    "split_folds",
]

log = logging.getLogger("hpsearch")

DATASET_NAMES = names.DATASETS
AUGMENTATIONS = names.AUGMENTATIONS
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
    """A whole training pool in memory: inputs, integer labels and per-channel statistics.

    ``x`` is uint8 (N, C, H, W) for images, or float32 (N, ...) for feature data; ``mean`` and
    ``std`` are per channel (dimension 1 of ``x``) in ``x``'s raw units. ``class_names`` defaults
    to "0", "1", ... when not given.
    """

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = ()

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


# --------------------------------------------------------------------------------------------
# loading


def load_dataset(
    name: str,
    root: str | Path | None = None,
    download: bool = False,
    image_size: int | None = None,
) -> ArrayData:
    """Load the training split of a dataset into memory, once.

    ``name`` is one of :data:`DATASET_NAMES` or ``"package.module:callable"``. ``image_size``
    resizes images to a square side (default 32 for ``image_folder``, native size otherwise).
    Raises :class:`DataError` with a one-line message when the data cannot be found or read.
    """
    if image_size is not None and image_size < 1:
        raise DataError(f"dataset '{name}': image_size must be a positive integer, got {image_size}")
    if name == "digits":
        data = _load_digits()
    elif name in _TORCHVISION_FILES:
        with _no_new_empty_folders(Path(root or DEFAULT_ROOT)):
            data = _load_torchvision(name, Path(root or DEFAULT_ROOT), download)
    elif name == "image_folder":
        if root is None:
            raise DataError("dataset 'image_folder': set data.root to a folder of class subfolders")
        return _load_image_folder(Path(root), image_size or 32)
    elif ":" in name:
        data = _load_custom(name, root)
    else:
        choices = ", ".join(DATASET_NAMES)
        raise DataError(f"dataset '{name}' is unknown; use one of {choices} or 'package.module:callable'")
    if image_size is not None and data.is_image and data.x.shape[-2:] != (image_size, image_size):
        data = from_arrays(_resize(data.x, image_size), data.y, data.num_classes, data.class_names)
    return data


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


def _load_torchvision(name: str, root: Path, download: bool) -> ArrayData:
    from torchvision import datasets

    where = root / _TORCHVISION_FILES[name]
    try:
        if name == "cifar10":
            ds = datasets.CIFAR10(str(root), train=True, download=download)
            x = torch.from_numpy(ds.data).permute(0, 3, 1, 2)
            y = torch.as_tensor(ds.targets)
        elif name in ("mnist", "fashion_mnist"):
            cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
            ds = cls(str(root), train=True, download=download)
            x, y = ds.data, ds.targets
        else:
            ds = datasets.SVHN(str(root), split="train", download=download)
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
    return from_arrays(x, torch.as_tensor(ds.targets), len(ds.classes), ds.classes)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 images to size x size, in chunks to bound the float copy."""
    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, x.shape[0], 4096):
        chunk = x[start : start + 4096].to(torch.float32)
        resized = torch.nn.functional.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + 4096] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _load_custom(spec: str, root: str | Path | None) -> ArrayData:
    factory = import_callable(spec, "dataset", DataError)
    if not _takes_root(factory):
        raise DataError(f"dataset '{spec}' must accept the keyword argument root (hpsearch calls it with "
                        f"root=data.root); add a parameter such as root=None")
    try:
        result = factory(root=root)
    except Exception as exc:
        raise DataError(f"dataset '{spec}' raised {type(exc).__name__}: {exc}") from exc
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


# --------------------------------------------------------------------------------------------
# normalisation: the one definition, shared by training batches and exported models


def inputs_record(data: ArrayData) -> dict[str, Any]:
    """What a prediction needs to know of the inputs, as plain data (stored in every best checkpoint).

    ``mean``/``std`` per channel in raw units, ``input_shape`` of one sample, ``dtype`` of the raw
    inputs (uint8 images or float32 features), ``num_classes``, ``class_names``, and ``min``/``max``:
    the range of the training inputs, against which :func:`prepare_inputs` checks what it is given.
    """
    empty = data.x.numel() == 0
    return {"mean": list(data.mean), "std": list(data.std), "input_shape": list(data.input_shape),
            "dtype": str(data.x.dtype).removeprefix("torch."), "num_classes": data.num_classes,
            "class_names": list(data.class_names), "min": None if empty else float(data.x.min()),
            "max": None if empty else float(data.x.max())}


def normaliser(mean: Sequence[float], std: Sequence[float], sample_ndim: int,
               device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) float32 tensors for :func:`normalise`, broadcasting over (N, C, ...) batches."""
    shape = (1, -1) + (1,) * (sample_ndim - 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device)
    return (1.0 / std_t).view(shape), (-mean_t / std_t).view(shape)


def normalise(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """(x - mean) / std per channel as ``x * scale + shift``: one fused op, uint8 -> float32 inside it."""
    return torch.addcmul(shift, x, scale, out=out)


def prepare_inputs(x: Any, inputs: Mapping[str, Any] | None) -> torch.Tensor:
    """Raw inputs (one sample or a batch, in the dataset's raw units) as the normalised float32 batch a model takes.

    ``inputs`` is :func:`inputs_record`'s record; a checkpoint saved before it existed has none,
    which is a :class:`DataError` saying how to normalise by hand.
    """
    if inputs is None:
        raise DataError("this checkpoint has no record of the input normalisation (saved by an older hpsearch); "
                        "normalise x yourself, (x - mean) / std per channel with the training data's statistics, "
                        "and call the model directly")
    batch = _as_tensor(x)
    shape = tuple(inputs["input_shape"])
    if tuple(batch.shape) == shape or (shape[0] == 1 and tuple(batch.shape) == shape[1:]):
        batch = batch.reshape(1, *shape)  # one sample
    elif batch.ndim == len(shape) and shape[0] == 1 and tuple(batch.shape[1:]) == shape[1:]:
        batch = batch.unsqueeze(1)  # (N, H, W) single-channel images
    if tuple(batch.shape[1:]) != shape:
        raise DataError(f"inputs of shape {tuple(batch.shape)}; expected (N, {', '.join(map(str, shape))}) "
                        f"or one sample of shape {shape}")
    if batch.dtype != torch.uint8:
        batch = batch.to(torch.float32)  # exact for the integer pixel values images are stored as
        _warn_if_rescaled(batch, inputs)
    _warn_if_out_of_range(batch, inputs)
    scale, shift = normaliser(inputs["mean"], inputs["std"], len(shape), batch.device)
    return normalise(batch, scale, shift)


def _warn_if_rescaled(batch: torch.Tensor, inputs: Mapping[str, Any]) -> None:
    """Warn when raw-unit inputs look scaled to 0..1 (ToTensor's habit): the model would see near-constant input."""
    peak = float(batch.max()) if batch.numel() else 0.0
    if 0.0 < peak <= 1.0 and max(inputs["mean"]) > 1.0:
        warnings.warn(f"inputs lie in 0..{peak:.3g} but the training data's mean is {max(inputs['mean']):.4g} in its "
                      f"raw units: pass raw values (e.g. uint8 pixels 0..255), not values scaled to 0..1",
                      stacklevel=3)


def _warn_if_out_of_range(batch: torch.Tensor, inputs: Mapping[str, Any]) -> None:
    """Warn when inputs reach far beyond the training data's range (pixels 0..255 for data in 0..16, say).

    Far: by more than half the training range. A record without the range (older hpsearch) warns nothing.
    """
    low, high = inputs.get("min"), inputs.get("max")
    if low is None or high is None or not batch.numel():
        return
    margin = (float(high) - float(low)) / 2
    seen_low, seen_high = float(batch.min()), float(batch.max())
    if seen_low < float(low) - margin or seen_high > float(high) + margin:
        warnings.warn(f"inputs lie in {seen_low:.4g}..{seen_high:.4g}, far outside the training data's range "
                      f"{float(low):.4g}..{float(high):.4g} (raw units): predictions on them are unreliable; pass "
                      f"inputs in the units the model was trained on", stacklevel=3)


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


# --------------------------------------------------------------------------------------------
# device batches


def pinned(device: torch.device) -> bool:
    """Whether host->device copies for ``device`` use pinned memory and non_blocking transfers."""
    return device.type == "cuda"


def _loader_workers(device: torch.device) -> int:
    # Workers only pay off when they overlap host gathers with GPU compute.
    return min(4, os.cpu_count() or 1) if device.type == "cuda" else 0


def _free_bytes(device: torch.device) -> int | None:
    """Free memory on ``device``, or None where the data lives in host memory anyway."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return None


class _BatchGather(Dataset):
    """Map-style dataset whose items are whole batches: one vectorised gather per batch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(idx, dtype=torch.int64)
        return self.x.index_select(0, index), self.y.index_select(0, index)


class DeviceData:
    """A dataset placed for training: resident on the device as uint8, or streamed from the host.

    Build it once per worker with :meth:`place`; every trial, whatever its batch size, draws
    batches from the same tensors.
    """

    def __init__(self, data: ArrayData, device: torch.device, resident: bool) -> None:
        self.device = device
        self.resident = resident
        self.num_classes = data.num_classes
        self.input_shape = data.input_shape
        self.is_image = data.is_image
        self.inputs = inputs_record(data)
        where = device if resident else torch.device("cpu")
        self.x = data.x.to(where)
        self.y = data.y.to(where)
        self._scale, self._shift = normaliser(data.mean, data.std, len(data.input_shape), device)
        self._tables: dict[tuple[str, ...], torch.Tensor] = {}  # augment_table per augmentation set

    @classmethod
    def place(
        cls,
        data: ArrayData,
        device: torch.device,
        memory_fraction: float = 0.5,
        force_streaming: bool = False,
    ) -> DeviceData:
        """Put ``data`` on ``device`` when it takes at most ``memory_fraction`` of the free memory.

        Otherwise (or with ``force_streaming``) keep it on the host and stream batches through a
        DataLoader; the fallback is logged once.
        """
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        size = data.x.nbytes + data.y.nbytes
        free = _free_bytes(device)
        fits = free is None or size <= memory_fraction * free
        if force_streaming or not fits:
            reason = "forced" if force_streaming else f"{size / 2**20:.0f} MiB > {memory_fraction:.0%} of {free / 2**20:.0f} MiB free"
            log.warning("data: streaming %d samples from host memory to %s (%s); training will be slower", len(data), device, reason)
            return cls(data, device, resident=False)
        return cls(data, device, resident=True)

    def num_batches(self, n: int, batch_size: int, drop_last: bool = False) -> int:
        """How many batches :meth:`batches` yields for ``n`` indices."""
        return n // batch_size if drop_last else math.ceil(n / batch_size)

    def batches(
        self,
        indices: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        augment: Sequence[str] = (),
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        out: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x float32 normalised, y int64) batches on the device, covering ``indices`` once.

        ``augment`` (training only) applies "hflip" and/or "crop" in batch on the device, drawing
        from ``generator`` (which must live on the device) like the shuffle does. With ``out``
        (static x and y buffers of one full batch, as CUDA graphs need), every full batch is
        written into them and they are what is yielded; a last partial batch comes as new tensors.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        for name in augment:
            if name not in AUGMENTATIONS:
                raise DataError(f"augmentation '{name}' is unknown; use one of {', '.join(AUGMENTATIONS)}")
            if not self.is_image:
                raise DataError(f"augmentation '{name}' needs image data, but inputs have shape {self.input_shape}")
        if out is not None and (out[0].shape[0] != batch_size or out[1].shape[0] != batch_size):
            raise ValueError(f"out buffers hold {out[0].shape[0]} samples, batches have {batch_size}")
        if self.resident:
            return self._resident_batches(indices, batch_size, shuffle, tuple(augment), generator, drop_last, out)
        return self._streamed_batches(indices, batch_size, shuffle, tuple(augment), generator, drop_last, out)

    def _order(self, indices: torch.Tensor, shuffle: bool, generator: torch.Generator | None) -> torch.Tensor:
        indices = indices.to(self.device)
        if not shuffle:
            return indices
        # Drawn on the device: no host round trip and no host->device copy of the permutation.
        perm = torch.randperm(indices.shape[0], device=self.device, generator=generator)
        return indices[perm]

    def _resident_batches(
        self,
        indices: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        augment: tuple[str, ...],
        generator: torch.Generator | None,
        drop_last: bool,
        out: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order(indices, shuffle, generator)
        labels = self.y.index_select(0, order)  # once per epoch; each batch's labels are a view
        n = self.num_batches(order.shape[0], batch_size, drop_last)
        for b in range(n):
            part = slice(b * batch_size, (b + 1) * batch_size)
            yield self._deliver(self.x.index_select(0, order[part]), labels[part], augment, generator, out)

    def _streamed_batches(
        self,
        indices: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        augment: tuple[str, ...],
        generator: torch.Generator | None,
        drop_last: bool,
        out: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order(indices, shuffle, generator).cpu().tolist()  # one host sync per epoch
        sampler = torch.utils.data.BatchSampler(order, batch_size, drop_last)
        loader = DataLoader(
            _BatchGather(self.x, self.y),
            sampler=sampler,
            batch_size=None,
            num_workers=_loader_workers(self.device),
            pin_memory=pinned(self.device),
        )
        non_blocking = pinned(self.device)
        for x, y in loader:
            x = x.to(self.device, non_blocking=non_blocking)
            yield self._deliver(x, y.to(self.device, non_blocking=non_blocking), augment, generator, out)

    def _deliver(self, x: torch.Tensor, y: torch.Tensor, augment: tuple[str, ...], generator: torch.Generator | None,
                 out: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The finished batch, written into ``out`` when it is a full batch."""
        if out is None or x.shape[0] != out[0].shape[0]:
            return self._finish(x, augment, generator), y
        self._finish(x, augment, generator, out[0])
        out[1].copy_(y)
        return out

    def _finish(self, x: torch.Tensor, augment: tuple[str, ...], generator: torch.Generator | None,
                out: torch.Tensor | None = None) -> torch.Tensor:
        # Augment while still uint8: a quarter of the memory traffic of float32.
        if augment:
            key = tuple(sorted(augment))
            if key not in self._tables:
                self._tables[key] = augment_table(x.shape[2], x.shape[3], key, self.device)
            x = apply_augment(x, self._tables[key], generator)
        # Into `out` in its own layout (channels_last) when given.
        return normalise(x, self._scale, self._shift, out=out)


def augment_table(
    height: int, width: int, augment: Sequence[str], device: torch.device | str = "cpu", padding: int | None = None
) -> torch.Tensor:
    """Every pixel map ``augment`` can draw, one per row: (K, height * width) int64 source indices.

    "crop" translates by up to ``padding`` pixels with reflection (torchvision
    ``RandomCrop(size, padding, padding_mode="reflect")``), "hflip" then mirrors; the K rows are
    the equally likely (dy, dx, flip) combinations, so one uniform row per image draws them all.
    """
    pad = (crop_padding(height, width) if padding is None else padding) if "crop" in augment else 0
    shifts = torch.arange(-pad, pad + 1, device=device).unsqueeze(1)
    rows = _reflect(torch.arange(height, device=device) + shifts, height)  # (S, H)
    cols = _reflect(torch.arange(width, device=device) + shifts, width)  # (S, W)
    if "hflip" in augment:
        cols = torch.cat([cols, cols.flip(1)])  # (2S, W): after the crop, mirrored or not
    flat = rows[:, None, :, None] * width + cols[None, :, None, :]  # (S, S or 2S, H, W)
    return flat.reshape(-1, height * width)


def apply_augment(x: torch.Tensor, table: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Augment an (N, C, H, W) batch with one uniformly drawn row of ``table`` per image.

    Three kernels whatever the augmentations (draw, look up, gather): small batches on a GPU are
    bound by kernel launches, not by the bytes moved.
    """
    n, c, h, w = x.shape
    pick = torch.randint(table.shape[0], (n,), device=x.device, generator=generator)
    source = table.index_select(0, pick).unsqueeze(1).expand(n, c, h * w)
    return x.reshape(n, c, h * w).gather(2, source).view(n, c, h, w)


def crop_padding(height: int, width: int) -> int:
    """Translation range of "crop": 4 pixels for images of 16 px and up, less for tiny ones."""
    return max(1, min(4, min(height, width) // 4))


def _reflect(i: torch.Tensor, size: int) -> torch.Tensor:
    """Reflect out-of-range coordinates back into [0, size) like padding_mode="reflect"."""
    i = i.abs()
    return torch.where(i >= size, 2 * (size - 1) - i, i)
