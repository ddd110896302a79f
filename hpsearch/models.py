"""Model registry: the builtin ``seednet``, ``mlp`` and ``resnet18``, or a custom factory.

``seednet`` and ``resnet18`` take ``heads: L`` for the multihead task: the shared backbone ends in L
linear heads (:class:`PositionHeads`) and the model returns (N, L, num_classes).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from hpsearch import names
from hpsearch.errors import ModelError
from hpsearch.plugins import import_callable

__all__ = ["PositionHeads", "build_model"]


def build_model(
    name: str, input_shape: tuple[int, ...], num_classes: int, dropout: float = 0.0, **kwargs: Any
) -> nn.Module:
    """Build model ``name`` for inputs of ``input_shape`` (one sample) and ``num_classes`` outputs.

    ``name`` is a builtin from :data:`hpsearch.names.MODELS` (its extra keyword arguments
    listed there) or ``"package.module:callable"``, called as
    ``factory(input_shape=..., num_classes=..., dropout=..., **kwargs)``; for the multihead task kwargs hold
    ``num_positions`` (L), for regression ``num_outputs`` (k, also passed as num_classes).
    Raises :class:`ModelError` with a one-line message on any failure.
    """
    input_shape = tuple(int(d) for d in input_shape)
    if not 0.0 <= dropout < 1.0:
        raise ModelError(f"model '{name}': dropout must be in [0, 1), got {dropout}")
    if num_classes < 1:  # 1: a regression model's single output
        raise ModelError(f"model '{name}': num_classes must be at least 1, got {num_classes}")
    if name in _BUILDERS:
        unknown = sorted(set(kwargs) - set(names.MODELS[name]))
        if unknown:
            accepted = ", ".join(names.MODELS[name]) or "no extra arguments"
            raise ModelError(f"model '{name}' got unknown argument(s) {', '.join(unknown)}; it accepts: {accepted}")
        for key, value in kwargs.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ModelError(f"model '{name}': {key} must be a positive integer, got {value!r}")
        return _BUILDERS[name](input_shape, num_classes, dropout, **kwargs)
    if ":" in name:
        return _build_custom(name, input_shape, num_classes, dropout, kwargs)
    raise ModelError(f"model '{name}' is unknown; use one of {', '.join(names.MODELS)} or 'package.module:callable'")


def _image_shape(name: str, input_shape: tuple[int, ...], smallest: int) -> tuple[int, int, int]:
    if len(input_shape) != 3 or min(input_shape[1:]) < smallest:
        raise ModelError(
            f"model '{name}' needs image inputs (C, H, W) of at least {smallest}x{smallest}, got "
            f"{input_shape}; use model 'mlp' for feature data"
        )
    return input_shape  # type: ignore[return-value]


class PositionHeads(nn.Module):
    """L linear heads on shared features, one per character position: (N, features) -> (N, L, num_classes).

    One Linear of L * num_classes outputs: each position's block of rows is its own head (no weights
    shared between positions), computed in one matmul instead of L small ones.
    """

    def __init__(self, features: int, positions: int, num_classes: int) -> None:
        super().__init__()
        self.positions, self.num_classes = positions, num_classes
        self.linear = nn.Linear(features, positions * num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x).view(x.shape[0], self.positions, self.num_classes)


def _head(features: int, num_classes: int, heads: int | None) -> nn.Module:
    return nn.Linear(features, num_classes) if heads is None else PositionHeads(features, heads, num_classes)


def seednet(input_shape: tuple[int, ...], num_classes: int, dropout: float = 0.0, width: int = 32,
            heads: int | None = None) -> nn.Module:
    """The classic CIFAR-10 CNN: three conv5x5-ReLU-maxpool blocks, fc, dropout, fc (``heads``: L heads instead)."""
    c, h, w = _image_shape("seednet", input_shape, 8)
    widths = (width, width, 2 * width)
    layers: list[nn.Module] = []
    for c_in, c_out in zip((c, *widths[:2]), widths, strict=True):
        layers += [nn.Conv2d(c_in, c_out, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
    flat = widths[-1] * (h // 8) * (w // 8)
    hidden = 2 * width
    return nn.Sequential(
        *layers,
        nn.Flatten(),
        nn.Linear(flat, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        _head(hidden, num_classes, heads),
    )


def mlp(input_shape: tuple[int, ...], num_classes: int, dropout: float = 0.0, width: int = 128, depth: int = 2) -> nn.Module:
    """Flatten, then ``depth`` hidden layers of ``width`` units with ReLU and dropout, then a linear head."""
    layers: list[nn.Module] = [nn.Flatten()]
    size = math.prod(input_shape)
    for _ in range(depth):
        layers += [nn.Linear(size, width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        size = width
    layers.append(nn.Linear(size, num_classes))
    return nn.Sequential(*layers)


def resnet18(input_shape: tuple[int, ...], num_classes: int, dropout: float = 0.0, heads: int | None = None) -> nn.Module:
    """torchvision ResNet-18 with a small-image stem (3x3 stride-1 conv, no maxpool) and dropout before fc.

    ``heads``: fc ends in L position heads (:class:`PositionHeads`) on the shared 512 features.
    """
    from torchvision.models import resnet18 as tv_resnet18

    c, _, _ = _image_shape("resnet18", input_shape, 8)
    model = tv_resnet18(weights=None, num_classes=num_classes)
    # Small images: keep full resolution into layer1 instead of the ImageNet 4x downsampling stem.
    model.conv1 = nn.Conv2d(c, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    model.fc = nn.Sequential(nn.Dropout(dropout), model.fc if heads is None else _head(512, num_classes, heads))
    return model


_BUILDERS: dict[str, Callable[..., nn.Module]] = {"seednet": seednet, "mlp": mlp, "resnet18": resnet18}


def _build_custom(
    spec: str, input_shape: tuple[int, ...], num_classes: int, dropout: float, kwargs: dict[str, Any]
) -> nn.Module:
    factory = import_callable(spec, "model", ModelError)
    arguments = {"input_shape": input_shape, "num_classes": num_classes, "dropout": dropout, **kwargs}
    try:
        inspect.signature(factory).bind(**arguments)
    except TypeError as exc:
        raise ModelError(
            f"model '{spec}' cannot be called with arguments {', '.join(arguments)} ({exc}); "
            f"give the factory parameters input_shape, num_classes, dropout (and **kwargs)"
        ) from exc
    except ValueError:
        pass  # no inspectable signature (some builtins): just call it
    try:
        model = factory(**arguments)
    except Exception as exc:
        raise ModelError(f"model '{spec}' raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"model '{spec}' returned {type(model).__name__}; the factory must return a torch.nn.Module")
    return model
