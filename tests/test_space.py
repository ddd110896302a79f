"""The search space as data, exercised through FixedTrial and a real in-memory study."""

from __future__ import annotations

import optuna
import pytest

from conftest import TINY_STUDY
from hpsearch.config import build_config
from hpsearch.errors import ConfigError
from hpsearch.space import grid, suggest

SPACE = {
    "lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-1, "log": True},
    "batch_size": {"type": "categorical", "choices": [32, 64]},
    "optimizer": {"type": "categorical", "choices": ["sgd", "adamw"]},
    "momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"optimizer": "sgd"}},
    "width": {"type": "int", "low": 16, "high": 64, "step": 16},
}


def _cfg(**changes: object):
    train = {"epochs": 2}
    return build_config({**TINY_STUDY, "model": {"name": "mlp"}, "train": train, "space": SPACE, **changes})


def test_conditional_param_only_when_condition_holds() -> None:
    cfg = _cfg()
    sgd = suggest(optuna.trial.FixedTrial({"lr": 0.01, "batch_size": 32, "optimizer": "sgd", "momentum": 0.9,
                                           "width": 32}), cfg)
    adamw = suggest(optuna.trial.FixedTrial({"lr": 0.01, "batch_size": 64, "optimizer": "adamw", "width": 48}), cfg)
    assert sgd["momentum"] == 0.9
    assert "momentum" not in adamw and adamw["width"] == 48


def test_sampled_values_respect_bounds() -> None:
    cfg = _cfg()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(30):
        trial = study.ask()
        params = suggest(trial, cfg)
        assert 1.0e-4 <= params["lr"] <= 1.0e-1
        assert params["width"] in (16, 32, 48, 64)
        assert ("momentum" in params) == (params["optimizer"] == "sgd")
        study.tell(trial, 0.0)


def test_grid_enumerates_every_point() -> None:
    space = {"lr": {"type": "float", "low": 0.01, "high": 0.03, "step": 0.01},
             "batch_size": {"type": "categorical", "choices": [32, 64]}}
    cfg = build_config({**TINY_STUDY, "sampler": {"type": "grid"}, "train": {"epochs": 1}, "space": space})
    values = grid(cfg)
    assert values["lr"] == pytest.approx([0.01, 0.02, 0.03]) and values["batch_size"] == [32, 64]


def test_grid_floats_end_exactly_on_high() -> None:
    space = {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "step": 1e-3}}
    cfg = build_config({**TINY_STUDY, "sampler": {"type": "grid"}, "train": {"epochs": 1, "batch_size": 8},
                        "space": space})
    values = grid(cfg)["lr"]
    assert len(values) == 10 and values[-1] == 0.01 and max(values) <= 0.01  # not 0.010000000000000002


def test_conditions_may_come_before_what_they_test() -> None:
    """YAML mappings have no order: sorted keys put momentum (when optimizer) before optimizer."""
    space = {"lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
             "momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"optimizer": "sgd"}},
             "optimizer": {"type": "categorical", "choices": ["adamw", "sgd"]}}
    cfg = build_config({**TINY_STUDY, "train": {"epochs": 1, "batch_size": 8}, "space": space})
    seen = set()
    for number in range(20):
        params = suggest(optuna.trial.FixedTrial({"lr": 0.01, "optimizer": ["adamw", "sgd"][number % 2],
                                                  "momentum": 0.9}), cfg)
        assert ("momentum" in params) == (params["optimizer"] == "sgd")
        seen.add(params["optimizer"])
    assert seen == {"adamw", "sgd"}


def test_a_cycle_of_conditions_is_refused() -> None:
    space = {"a": {"type": "categorical", "choices": [1, 2], "when": {"b": 1}},
             "b": {"type": "categorical", "choices": [1, 2], "when": {"a": 1}}}
    with pytest.raises(ConfigError, match=r"space\.a\.when: the when: conditions form a cycle \(a -> b -> a\)"):
        build_config({**TINY_STUDY, "model": {"name": "package.module:factory"},
                      "train": {"epochs": 1, "batch_size": 8, "lr": 0.1}, "space": space})
