"""The shared names: the schema offers exactly them, and every builder on the torch side accepts each one."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, get_args

import pytest
import torch

from hpsearch import names
from hpsearch.config import BUILTIN_MODEL_ARGS, DataConfig, StudyConfig, TrainConfig
from hpsearch.data import augment_table, load_dataset
from hpsearch.engine import amp_dtype
from hpsearch.errors import DataError
from hpsearch.models import build_model
from hpsearch.optim import build_optimizer, lr_at
from hpsearch.settings import TrainSettings
from hpsearch.steps import plan_graphs


def _offered(field: Any) -> set[str]:
    """The names a Literal field (or a list of Literal) of the schema accepts."""
    args = get_args(field.annotation)
    if args and not isinstance(args[0], str):
        args = get_args(args[0])
    return set(args)


def test_the_schema_offers_exactly_the_shared_names() -> None:
    train = TrainConfig.model_fields
    assert _offered(train["optimizer"]) == set(names.OPTIMIZERS)
    assert _offered(train["scheduler"]) == set(names.SCHEDULERS)
    assert _offered(train["amp"]) == set(names.AMP_MODES)
    assert _offered(train["cuda_graphs"]) == set(names.GRAPH_MODES)
    assert _offered(train["augment"]) == set(names.AUGMENTATIONS)
    assert {name: tuple(rules.model_fields) for name, rules in BUILTIN_MODEL_ARGS.items()} == names.MODELS
    assert set(names.TRAIN_PARAMS) <= set(train) and set(names.TRAIN_PARAMS) <= {f.name for f in
                                                                                 dataclasses.fields(TrainSettings)}
    # (tests/test_settings.py: TRAIN_PARAMS is exactly the searchable fields both sides share)
    for dataset in names.DATASETS:
        DataConfig(dataset=dataset)  # accepted by the schema
    assert StudyConfig.model_fields["metric"].default in names.METRICS


@pytest.mark.parametrize("optimizer", names.OPTIMIZERS)
def test_every_optimizer_builds_and_steps(optimizer: str) -> None:
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(model, TrainSettings(epochs=1, lr=0.1, batch_size=4, optimizer=optimizer))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()


@pytest.mark.parametrize("scheduler", names.SCHEDULERS)
def test_every_scheduler_gives_a_rate(scheduler: str) -> None:
    settings = TrainSettings(epochs=3, lr=0.1, batch_size=4, scheduler=scheduler)
    rates = [lr_at(step, 30, settings, 10) for step in range(30)]
    assert all(0 < rate <= 0.1 for rate in rates)


@pytest.mark.parametrize("amp", names.AMP_MODES)
def test_every_amp_mode_is_understood(amp: str) -> None:
    assert amp_dtype(torch.device("cpu"), amp) is None  # the CPU trains in fp32 whatever the mode


@pytest.mark.parametrize("mode", names.GRAPH_MODES)
def test_every_graph_mode_is_understood(mode: str) -> None:
    plan = plan_graphs(mode, torch.device("cpu"), True)
    assert not plan.capture and plan.status.startswith("off (") and plan.required == (mode == "on")


@pytest.mark.parametrize("augmentation", names.AUGMENTATIONS)
def test_every_augmentation_has_a_table(augmentation: str) -> None:
    table = augment_table(8, 8, (augmentation,))
    assert table.shape[1] == 64 and table.shape[0] > 1


@pytest.mark.parametrize("model", list(names.MODELS))
def test_every_builtin_model_builds_with_its_arguments(model: str) -> None:
    args = {arg: 4 for arg in names.MODELS[model]}
    net = build_model(model, (3, 32, 32), 10, dropout=0.1, **args)
    heads = (4,) if "heads" in args else ()  # one head per character position (task multihead)
    assert net.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, *heads, 10)


@pytest.mark.parametrize("dataset", names.DATASETS)
def test_every_dataset_name_reaches_its_loader(dataset: str, tmp_path: Path) -> None:
    try:
        task = {"digit_strings": "multihead", "diabetes": "regression"}.get(dataset, "classification")
        data = load_dataset(dataset, root=tmp_path / "nothing-here", download=False, task=task)
    except DataError as exc:
        assert "is unknown" not in str(exc)  # its loader ran and found no files, as it should offline
    else:
        assert dataset in ("digits", "digit_strings", "diabetes") and data.task == task  # bundled: offline
