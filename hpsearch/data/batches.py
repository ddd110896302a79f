"""Device-resident batches: slices of a device permutation, on-device augmentation, the streaming fallback."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from hpsearch import names
from hpsearch.data.datasets import ArrayData
from hpsearch.data.inputs import inputs_record, normalise, normaliser
from hpsearch.errors import DataError

log = logging.getLogger("hpsearch")


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
            if name not in names.AUGMENTATIONS:
                raise DataError(f"augmentation '{name}' is unknown; use one of {', '.join(names.AUGMENTATIONS)}")
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
