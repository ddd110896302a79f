"""What shapes one training run: :class:`TrainSettings`, a plain dataclass the torch side reads.

The study file's schema (``config.TrainConfig``) is the check of every value; this module does not
import it. ``objective.train_settings`` fills each field from the sampled parameters or the
validated ``train:`` section by name, so an option is one schema field, one field here and the
code that uses it (``tests/test_settings.py`` fails on a field that exists on one side only).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hpsearch import names
from hpsearch.errors import ConfigError

__all__ = ["TrainSettings", "settings_from"]

# Named choices are checked here too: a direct API user's typo would otherwise pick another code path
# silently ('rmsprop' trains AdamW, an unknown scheduler a constant rate); numbers are the schema's to check.
_CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": names.OPTIMIZERS, "scheduler": names.SCHEDULERS, "amp": names.AMP_MODES,
    "cuda_graphs": names.GRAPH_MODES,
}


@dataclass(frozen=True)
class TrainSettings:
    """Everything that shapes one training run (one trial on one split).

    ``lr`` is the peak per-step LR for the effective batch ``batch_size * accum_steps``.
    ``weight_decay`` applies only to parameters with ndim >= 2 (weights, not biases or norms).
    ``warmup_epochs`` is a linear warmup used by none/step/cosine/exponential (onecycle has its
    own 30 % warmup). ``gamma`` is the step-decay factor every ``step_size`` epochs (default 0.1)
    or the per-epoch factor of ``exponential`` (default 0.9); None picks that default.
    ``amp`` only acts on CUDA; the CPU always trains in fp32. Every value is cast to its field's
    type (a sampled ``0`` for a float field becomes ``0.0``, a list a tuple).
    ``freeze_epochs``: the backbone (all but the head, ``pretrained.head_parameters``) is frozen for the first
    epochs (no gradients, learning rate 0, BatchNorm statistics held); afterwards it trains at
    ``backbone_lr_scale`` times the head's rate. ``tta_val``:
    validation logits averaged over that many views (the original and ``tta_val - 1`` fixed augmentations).
    """

    epochs: int
    lr: float
    batch_size: int
    optimizer: str = "adamw"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    scheduler: str = "none"
    warmup_epochs: float = 0.0
    step_size: int = 10
    gamma: float | None = None
    accum_steps: int = 1
    label_smoothing: float = 0.0
    class_weights: tuple[float, ...] | None = None
    augment: tuple[str, ...] = ()
    amp: str = "auto"
    channels_last: bool = True
    cuda_graphs: str = "auto"
    freeze_epochs: int = 0
    backbone_lr_scale: float = 1.0
    tta_val: int = 1

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(TrainSettings)
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, _cast(hints[field.name], getattr(self, field.name)))
        for key, choices in _CHOICES.items():
            if getattr(self, key) not in choices:
                raise ConfigError(f"train.{key} = {getattr(self, key)!r} is invalid; "
                                  f"it must be one of {', '.join(choices)}")

    @property
    def decay_factor(self) -> float:
        """``gamma`` with its per-scheduler default filled in."""
        if self.gamma is not None:
            return self.gamma
        return 0.9 if self.scheduler == "exponential" else 0.1


def settings_from(fixed: Mapping[str, Any], chosen: Mapping[str, Any]) -> TrainSettings:
    """Each field from ``chosen`` where it is there, else from ``fixed``, else its default; other keys are ignored."""
    values = {**fixed, **chosen}
    return TrainSettings(**{f.name: values[f.name] for f in dataclasses.fields(TrainSettings) if f.name in values})


def _cast(kind: Any, value: Any) -> Any:
    """``value`` as type ``kind``: int, float, bool, str, ``X | None`` or ``tuple[X, ...]``."""
    origin = typing.get_origin(kind)
    if origin in (types.UnionType, typing.Union):
        inner = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        return None if value is None else _cast(inner[0], value)
    if origin is tuple:
        return tuple(_cast(typing.get_args(kind)[0], item) for item in value)
    return kind(value)
