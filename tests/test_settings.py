"""One definition per training setting: the schema checks it, TrainSettings carries it, train_settings fills it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hpsearch import names
from hpsearch.config import StudyConfig, TrainConfig
from hpsearch.errors import ConfigError
from hpsearch.objective import train_settings
from hpsearch.settings import TrainSettings, settings_from

SETTINGS = {f.name: f for f in dataclasses.fields(TrainSettings)}
# Fields on one side only, each for a reason: the rest must be spelled the same on both sides.
CONFIG_ONLY = {
    "dropout": "a model argument (objective.model_spec)",
    "class_weighting": "becomes TrainSettings.class_weights, computed from the labels",
    "early_stopping": "objective's stopper, not the trainer's",
    "checkpoint": "objective's files",
    "resume_checkpoints": "objective's files",
}
SETTINGS_ONLY = {
    "class_weights": "from train.class_weighting",
    "channels_last": "an engine switch for direct users (benchmarks); a study always uses the default",
}
FIXED_ONLY = {"epochs", "augment", "amp", "cuda_graphs", "tta_val"}  # settings a study file fixes but never searches


def test_a_setting_exists_on_both_sides_or_is_listed_as_one_sided() -> None:
    config = set(TrainConfig.model_fields)
    assert config - set(SETTINGS) == set(CONFIG_ONLY)
    assert set(SETTINGS) - config == set(SETTINGS_ONLY)


def test_both_sides_default_to_the_same_values() -> None:
    from_schema = settings_from(dict(TrainConfig(lr=1.0, batch_size=1)), {})  # every other field: the schema's default
    assert from_schema == TrainSettings(epochs=TrainConfig().epochs, lr=1.0, batch_size=1)  # ... and the dataclass's


def test_train_params_are_the_settings_a_study_may_search() -> None:
    shared = set(SETTINGS) & set(TrainConfig.model_fields)
    assert set(names.TRAIN_PARAMS) == shared - FIXED_ONLY
    assert len(names.TRAIN_PARAMS) == len(set(names.TRAIN_PARAMS))


def _cfg(**train) -> StudyConfig:
    return StudyConfig(name="s", train={"lr": 0.1, "batch_size": 32, **train})


def test_every_field_comes_from_the_train_section() -> None:
    fixed = {"epochs": 3, "lr": 0.02, "batch_size": 16, "optimizer": "sgd", "momentum": 0.5, "nesterov": True,
             "weight_decay": 0.01, "scheduler": "step", "warmup_epochs": 1.5, "step_size": 2, "gamma": 0.5,
             "accum_steps": 2, "label_smoothing": 0.1, "augment": ["crop"], "amp": "off", "cuda_graphs": "off"}
    settings = train_settings(_cfg(**fixed), {}, torch.tensor([0, 1]), 2)
    assert {name: getattr(settings, name) for name in fixed} == {**fixed, "augment": ("crop",)}
    assert settings.class_weights is None and settings.channels_last is True


def test_sampled_params_override_and_are_cast_to_the_field_type() -> None:
    params = {"weight_decay": 0, "momentum": 0, "label_smoothing": 0, "step_size": 3, "nesterov": True, "width": 8}
    settings = train_settings(_cfg(), params, torch.tensor([0, 1, 1]), 2)
    assert settings.weight_decay == 0.0 and type(settings.weight_decay) is float  # a categorical [0, 1e-4] gives 0
    assert type(settings.momentum) is float and type(settings.label_smoothing) is float
    assert settings.step_size == 3 and settings.nesterov is True


def test_a_model_argument_named_like_a_fixed_setting_is_not_a_setting() -> None:
    # A custom model may search an argument called `epochs`: only TRAIN_PARAMS reach the trainer.
    settings = train_settings(_cfg(epochs=4), {"epochs": 99, "amp": "fp16"}, torch.tensor([0, 1]), 2)
    assert settings.epochs == 4 and settings.amp == "auto"


def test_class_weighting_gives_class_weights() -> None:
    settings = train_settings(_cfg(class_weighting=True), {}, torch.tensor([0, 1, 1, 1]), 2)
    assert settings.class_weights == pytest.approx((2.0, 2 / 3))


def test_settings_from_ignores_other_keys_and_keeps_defaults() -> None:
    settings = settings_from({"epochs": 2, "lr": 1, "batch_size": 4.0, "dropout": 0.5}, {"gamma": 1})
    assert (settings.lr, settings.batch_size, settings.gamma) == (1.0, 4, 1.0)
    assert type(settings.lr) is float and type(settings.batch_size) is int and settings.channels_last is True


def test_direct_users_get_named_choices_checked() -> None:
    for key in ("optimizer", "scheduler", "amp", "cuda_graphs"):
        with pytest.raises(ConfigError, match=rf"train\.{key} = 'nope' is invalid; it must be one of "):
            TrainSettings(epochs=1, lr=0.1, batch_size=8, **{key: "nope"})
