"""The one normalisation (training batches and exported models share it) and the inputs record a prediction needs."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from hpsearch.data.datasets import ArrayData, _as_tensor
from hpsearch.errors import DataError


# --------------------------------------------------------------------------------------------
# normalisation: the one definition, shared by training batches and exported models


def inputs_record(data: ArrayData) -> dict[str, Any]:
    """What a prediction needs to know of the inputs, as plain data (stored in every best checkpoint).

    ``mean``/``std`` per channel in raw units, ``input_shape`` of one sample, ``dtype`` of the raw
    inputs (uint8 images or float32 features), ``num_classes``, ``class_names``, and ``min``/``max``:
    the range of the training inputs, against which :func:`prepare_inputs` checks what it is given.
    A task other than classification adds ``task`` and what decoding its outputs needs: ``blank`` and
    ``max_length`` (multihead), ``target_mean``/``target_std`` per output (regression: the model learns
    normalised targets, predictions are turned back into the data's units).
    """
    empty = data.x.numel() == 0
    record = {"mean": list(data.mean), "std": list(data.std), "input_shape": list(data.input_shape),
              "dtype": str(data.x.dtype).removeprefix("torch."), "num_classes": data.num_classes,
              "class_names": list(data.class_names), "min": None if empty else float(data.x.min()),
              "max": None if empty else float(data.x.max())}
    if data.task == "multihead":
        record.update(task=data.task, blank=data.blank, max_length=data.max_length)
    elif data.task == "regression":
        record.update(task=data.task, target_mean=list(data.target_mean), target_std=list(data.target_std))
    return record


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
