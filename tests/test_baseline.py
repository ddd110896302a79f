"""The baseline point (hpsearch.baseline) and the sampler that gives it to trial 0 (study.factories.BaselineFirst)."""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest

from conftest import TINY_STUDY
from hpsearch import records, space
from hpsearch.baseline import baseline_point, holds, middle
from hpsearch.config import CategoricalParam, FloatParam, IntParam, build_config
from hpsearch.errors import ConfigError
from hpsearch.study import make_sampler
from hpsearch.study.factories import BaselineFirst

SPACE = {
    "lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-1, "log": True},
    "batch_size": {"type": "categorical", "choices": [128, 32, 64, 256]},
    "weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-2, "log": True},
    "optimizer": {"type": "categorical", "choices": ["sgd", "adamw"]},
    "momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"optimizer": "sgd"}},
    "width": {"type": "categorical", "choices": [64, 128, 256]},
    "depth": {"type": "int", "low": 1, "high": 4},
}


def _cfg(train: dict[str, Any] | None = None, **changes: Any) -> Any:
    raw = {**TINY_STUDY, "model": {"name": "mlp"}, "train": {"epochs": 2, **(train or {})}, "space": SPACE}
    raw.pop("sampler")
    return build_config({**raw, **changes})


def _first(**changes: Any) -> Any:
    return _cfg(baseline_first=True, **changes)


@pytest.mark.parametrize(("spec", "expected"), [
    (FloatParam(type="float", low=1e-4, high=1e-2, log=True), 1e-3),
    (FloatParam(type="float", low=0.0, high=0.5), 0.25),
    (FloatParam(type="float", low=0.0, high=1.0, step=0.3), 0.6),  # 0.5 is 1.67 steps: the nearest step
    (IntParam(type="int", low=16, high=1024, log=True), 128),
    (IntParam(type="int", low=1, high=4), 3),  # 2.5: a half step rounds up
    (IntParam(type="int", low=8, high=64, step=8), 40),
    (CategoricalParam(type="categorical", choices=[256, 32, 64, 128]), 64),  # the lower median by value
    (CategoricalParam(type="categorical", choices=[3, 1, 2]), 2),
    (CategoricalParam(type="categorical", choices=["adam", "sgd", "adamw"]), "adam"),  # not numbers: the first
    (CategoricalParam(type="categorical", choices=[True, False]), True),
])
def test_middle_of_each_kind_of_parameter(spec: Any, expected: Any) -> None:
    value = middle(spec)
    assert value == pytest.approx(expected) and type(value) is type(expected)
    assert holds(spec, value)


def test_holds_tells_a_bool_from_a_number_and_respects_steps() -> None:
    assert not holds(CategoricalParam(type="categorical", choices=[1, 2]), True)
    assert not holds(CategoricalParam(type="categorical", choices=[True, False]), 1)
    assert holds(FloatParam(type="float", low=0.001, high=0.01, step=0.001), 0.003)
    assert not holds(FloatParam(type="float", low=0.001, high=0.01, step=0.001), 0.0035)
    assert not holds(IntParam(type="int", low=8, high=64, step=8), 12)
    assert not holds(FloatParam(type="float", low=1e-6, high=1e-2, log=True), 0.0)


def test_the_point_takes_hpsearchs_defaults_where_the_space_holds_them() -> None:
    point = baseline_point(_cfg())
    # adamw (train: default) leaves momentum out; weight decay's default 0 is outside the log range: its middle;
    # lr has no default: its geometric middle; batch_size the median choice; width and depth the mlp's defaults
    assert point == {"lr": pytest.approx(math.sqrt(1e-4 * 1e-1)), "batch_size": 64, "weight_decay": pytest.approx(1e-4),
                     "optimizer": "adamw", "width": 128, "depth": 2}
    assert space.suggest(optuna.trial.FixedTrial(point), _cfg()) == point  # a point the space can draw


def test_a_when_that_holds_at_the_baseline_brings_its_parameter_in() -> None:
    sgd_first = {**SPACE, "optimizer": {"type": "categorical", "choices": ["sgd", "adamw"]},
                 "momentum": {"type": "float", "low": 0.5, "high": 0.95, "when": {"optimizer": "sgd"}},
                 "width": {"type": "categorical", "choices": [16, 32]}}
    no_adamw = {**sgd_first, "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]}}
    point = baseline_point(_cfg(space=no_adamw))
    assert point["optimizer"] == "sgd" and point["momentum"] == 0.9  # the first choice; momentum's default holds
    assert point["width"] == 16  # the mlp's default 128 is not a choice: the lower median


def test_the_baseline_comes_first_when_the_file_asks() -> None:
    assert not _cfg().starts_from_baseline  # off by default: bench/RESULTS.md, "Search quality"
    assert _cfg(baseline_first=True).starts_from_baseline
    assert _cfg(sampler={"type": "random"}, baseline_first=True).starts_from_baseline


@pytest.mark.parametrize(("changes", "names"), [
    ({"enqueue": [{"lr": 0.01, "batch_size": 32, "weight_decay": 1e-3, "optimizer": "adamw", "width": 64,
                   "depth": 1}]}, "enqueue"),
    ({"warm_start": {"study": "earlier"}}, "warm_start"),
])
def test_baseline_first_with_something_else_first_is_refused(changes: dict[str, Any], names: str) -> None:
    with pytest.raises(ConfigError, match=rf"baseline_first: {names}: .*; drop"):
        _cfg(baseline_first=True, **changes)


def test_grid_with_baseline_first_is_refused_naming_the_key() -> None:
    grid_space = {"lr": {"type": "categorical", "choices": [0.001, 0.01]}}
    with pytest.raises(ConfigError, match=r"baseline_first: the grid sampler .* remove baseline_first"):
        _cfg({"batch_size": 32}, sampler={"type": "grid"}, space=grid_space, baseline_first=True)


def _ask(study: optuna.Study, cfg: Any) -> dict[str, Any]:
    trial = study.ask()
    params = space.suggest(trial, cfg)
    study.tell(trial, params["lr"])
    return params


def test_trial_0_is_the_baseline_and_trial_1_the_inner_samplers_first_draw() -> None:
    cfg = _first()
    sampler = make_sampler(cfg)
    assert isinstance(sampler, BaselineFirst) and not isinstance(make_sampler(_cfg()), BaselineFirst)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    first, second = _ask(study, cfg), _ask(study, cfg)
    assert first == baseline_point(cfg)
    plain = optuna.create_study(direction="maximize", sampler=make_sampler(_cfg()))
    assert second == _ask(plain, cfg)  # the baseline took no draw from the start-up sampler's random stream
    assert [t.user_attrs.get(records.BASELINE) for t in study.trials] == [True, None]


def test_a_study_that_starts_with_queued_or_added_trials_gets_no_baseline() -> None:
    cfg = _first()  # a rerun or an earlier run's queue: the file itself cannot ask for both (refused above)
    queued = optuna.create_study(direction="maximize", sampler=make_sampler(cfg))
    queued.enqueue_trial({"lr": 0.02, "batch_size": 32, "weight_decay": 1e-3, "optimizer": "adamw", "width": 64,
                          "depth": 1})
    assert _ask(queued, cfg)["lr"] == 0.02 and records.BASELINE not in queued.trials[0].user_attrs
    added = optuna.create_study(direction="maximize", sampler=make_sampler(cfg))
    added.add_trial(queued.trials[0])
    assert _ask(added, cfg) != baseline_point(cfg)


def test_a_run_with_baseline_first_trains_the_baseline_first(write_study: Any, capsys: Any) -> None:
    from hpsearch.cli import main

    study = write_study(baseline_first=True, n_trials=2)
    assert main(["validate", str(study)]) == 0
    # lr has no default: its geometric middle; dropout's default 0 is in the range
    assert "# first trial: the baseline {lr: 0.003162, dropout: 0} (" in capsys.readouterr().out
    assert main(["run", str(study)]) == 0
    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{study.parent}/runs/tiny/study.db").trials
    assert trials[0].params == pytest.approx({"lr": math.sqrt(1e-3 * 1e-2), "dropout": 0.0})
    assert trials[0].user_attrs[records.BASELINE] is True and records.BASELINE not in trials[1].user_attrs
