"""Builtin models run on digits and CIFAR shapes; custom factories and errors are clear."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from hpsearch import models, names
from hpsearch.errors import ModelError
from hpsearch.models import build_model


@pytest.mark.parametrize("name", list(names.MODELS))
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_builtins_forward(name: str, shape: tuple[int, ...]) -> None:
    model = build_model(name, shape, 10, dropout=0.2)
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(names.MODELS))
def test_names_hold_each_builtins_own_argument_defaults(name: str) -> None:
    import inspect

    signature = inspect.signature(models._BUILDERS[name]).parameters
    assert names.MODEL_DEFAULTS[name] == {arg: signature[arg].default for arg in names.MODELS[name]}


def test_builtin_kwargs_and_dropout() -> None:
    assert set(models._BUILDERS) == set(names.MODELS)  # a builder for every builtin name, none unnamed
    small = build_model("seednet", (3, 32, 32), 10, width=8)
    big = build_model("seednet", (3, 32, 32), 10)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in big.parameters())
    convs = [m.out_channels for m in big.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [32, 32, 64]
    mlp = build_model("mlp", (1, 8, 8), 10, dropout=0.3, width=16, depth=3)
    assert [m.out_features for m in mlp.modules() if isinstance(m, nn.Linear)] == [16, 16, 16, 10]
    assert [m.p for m in mlp.modules() if isinstance(m, nn.Dropout)] == [0.3] * 3
    resnet = build_model("resnet18", (1, 28, 28), 5, dropout=0.1)
    assert resnet.conv1.in_channels == 1 and resnet.conv1.stride == (1, 1)
    assert isinstance(resnet.maxpool, nn.Identity)
    assert resnet.fc[0].p == 0.1
    assert build_model("mlp", (5,), 3)(torch.randn(4, 5)).shape == (4, 3)


def test_builtin_errors_name_the_model_and_fix() -> None:
    with pytest.raises(ModelError, match="model 'mlp' got unknown argument.*depht.*accepts: width, depth"):
        build_model("mlp", (1, 8, 8), 10, depht=3)
    with pytest.raises(ModelError, match="model 'resnet18'.*accepts: heads"):
        build_model("resnet18", (3, 32, 32), 10, width=3)
    with pytest.raises(ModelError, match="width must be a positive integer"):
        build_model("seednet", (3, 32, 32), 10, width=0)
    with pytest.raises(ModelError, match="needs image inputs.*use model 'mlp'"):
        build_model("seednet", (64,), 10)
    with pytest.raises(ModelError, match="at least 8x8"):
        build_model("seednet", (1, 4, 4), 10)
    with pytest.raises(ModelError, match="model 'vgg' is unknown; use one of seednet, mlp, resnet18"):
        build_model("vgg", (3, 32, 32), 10)
    with pytest.raises(ModelError, match="dropout"):
        build_model("mlp", (3,), 2, dropout=1.5)


FACTORIES = """
from torch import nn

def linear(input_shape, num_classes, dropout, bias=True):
    return nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], num_classes, bias=bias))

def fixed(input_shape, num_classes):
    return nn.Linear(3, num_classes)

def not_a_module(input_shape, num_classes, dropout):
    return "model"

def explodes(input_shape, num_classes, dropout):
    raise RuntimeError("out of ideas")
"""


@pytest.fixture
def factories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "my_models.py").write_text(textwrap.dedent(FACTORIES))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_models"
    sys.modules.pop("my_models", None)


def test_custom_factory(factories: str) -> None:
    model = build_model(f"{factories}:linear", (1, 8, 8), 10, dropout=0.1, bias=False)
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert model[2].bias is None


def test_custom_factory_errors(factories: str) -> None:
    with pytest.raises(ModelError, match="cannot be called with arguments input_shape, num_classes, dropout"):
        build_model(f"{factories}:fixed", (3,), 2)
    with pytest.raises(ModelError, match="cannot be called.*width"):
        build_model(f"{factories}:linear", (1, 8, 8), 10, width=3)
    with pytest.raises(ModelError, match="returned str; the factory must return a torch.nn.Module"):
        build_model(f"{factories}:not_a_module", (3,), 2)
    with pytest.raises(ModelError, match="raised RuntimeError: out of ideas"):
        build_model(f"{factories}:explodes", (3,), 2)
    with pytest.raises(ModelError, match="has no callable 'nothing'"):
        build_model(f"{factories}:nothing", (3,), 2)
    with pytest.raises(ModelError, match="cannot import module 'no_such_models_hps'.*PYTHONPATH"):
        build_model("no_such_models_hps:net", (3,), 2)
