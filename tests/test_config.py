"""The study file contract: valid files resolve, every bad file gets one clear ConfigError."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import TINY_STUDY
from hpsearch.config import build_config, load_config, with_overrides
from hpsearch.errors import ConfigError

STUDIES = sorted((Path(__file__).parent.parent / "studies").glob("*.yaml"))


def _raw(**changes: Any) -> dict[str, Any]:
    return {**TINY_STUDY, **changes}


def _space(**params: Any) -> dict[str, Any]:
    return {**TINY_STUDY["space"], **params}


def test_defaults_are_filled_in() -> None:
    cfg = build_config({"name": "x", "train": {"lr": 0.01, "batch_size": 32}})
    resolved = cfg.resolved()
    assert resolved["direction"] == "maximize"
    assert resolved["storage"] == "sqlite:///runs/x/study.db"
    assert resolved["data"]["val_split"] == 0.2 and resolved["data"]["cv_folds"] is None
    assert resolved["sampler"]["type"] == "tpe" and resolved["pruner"]["type"] == "median"


def test_val_loss_minimizes_by_default() -> None:
    assert build_config(_raw(metric="val_loss")).resolved_direction == "minimize"


@pytest.mark.parametrize("path", STUDIES, ids=[p.name for p in STUDIES])
def test_shipped_studies_validate(path: Path) -> None:
    assert load_config(path).name


def test_env_expansion_in_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HP_DB", "sqlite:///x.db")
    assert build_config(_raw(storage="${HP_DB}")).storage_url == "sqlite:///x.db"


def test_cli_overrides_revalidate() -> None:
    cfg = with_overrides(build_config(_raw()), n_trials=7, epochs=3)
    assert (cfg.n_trials, cfg.train.epochs) == (7, 3)
    with pytest.raises(ConfigError, match="train.epochs"):
        with_overrides(build_config(_raw()), epochs=0)


BAD_FILES = [
    ("unknown top-level key", _raw(n_trails=3), r"n_trails: unknown key 'n_trails'"),
    ("unknown nested key", _raw(train={"epochs": 2, "batch_size": 64, "epoch": 3}), r"train.epoch: unknown key"),
    ("wrong type", _raw(n_trials="many"), r"n_trials: .*valid integer.*'many'"),
    ("low > high", _raw(space=_space(lr={"type": "float", "low": 0.1, "high": 0.01})), r"space.lr: low .* greater than high"),
    ("log through 0", _raw(space=_space(lr={"type": "float", "low": 0.0, "high": 0.1, "log": True})), r"space.lr: log: true needs low > 0"),
    ("empty choices", _raw(space=_space(batch_size={"type": "categorical", "choices": []})), r"space.batch_size.choices: choices is empty"),
    ("unknown param type", _raw(space=_space(lr={"type": "double", "low": 0.1, "high": 1})), r"space.lr.type: unknown type 'double'"),
    ("unknown sampler", _raw(sampler={"type": "bayes"}), r"sampler.type: unknown type 'bayes'"),
    ("unknown pruner", _raw(pruner={"type": "asha"}), r"pruner.type: unknown type 'asha'"),
    ("unknown dataset", _raw(data={"dataset": "cifar"}), r"data.dataset: unknown dataset 'cifar' \(did you mean 'cifar10'\?\)"),
    ("unknown model", _raw(model={"name": "resnet"}), r"model.name: unknown model 'resnet'"),
    ("unknown metric", _raw(metric="accuracy"), r"metric: unknown metric 'accuracy'"),
    ("metric vs direction", _raw(metric="val_loss", direction="maximize"), r"direction: 'maximize' contradicts metric 'val_loss'"),
    ("zero epochs", _raw(train={"epochs": 0, "batch_size": 64}), r"train.epochs: .*greater than or equal to 1"),
    ("negative trials", _raw(n_trials=-2), r"n_trials: .*greater than or equal to 1"),
    ("zero trials", _raw(n_trials=0), r"n_trials: .*greater than or equal to 1"),
    ("missing name", {k: v for k, v in TINY_STUDY.items() if k != "name"}, r"name: required key is missing"),
    ("both splits", _raw(data={"dataset": "digits", "val_split": 0.2, "cv_folds": 5}), r"data: val_split and cv_folds are both set"),
    ("lr nowhere", _raw(space={"dropout": {"type": "float", "low": 0, "high": 0.5}}), r"space.lr: 'lr' is neither searched nor fixed"),
    ("param on model without it", _raw(space=_space(depth2={"type": "int", "low": 1, "high": 3})), r"space.depth2: 'depth2' is neither a training setting"),
    ("param fixed and searched", _raw(train={"epochs": 2, "batch_size": 64, "lr": 0.1}), r"space.lr: 'lr' is set both in train.lr and in space.lr"),
    ("when on undeclared", _raw(space=_space(momentum={"type": "float", "low": 0.8, "high": 0.9, "when": {"optimizer": "sgd"}})), r"space.momentum.when.optimizer: condition on 'optimizer'"),
    ("when value not a choice", _raw(space=_space(optimizer={"type": "categorical", "choices": ["adam", "sgd"]}, momentum={"type": "float", "low": 0.8, "high": 0.9, "when": {"optimizer": "sgdm"}})), r"'sgdm' is not one of optimizer's choices"),
    ("grid without step", _raw(sampler={"type": "grid"}, space={"lr": {"type": "float", "low": 0.01, "high": 0.1}}), r"space.lr.step: the grid sampler needs a step"),
    ("enqueue out of range", _raw(enqueue=[{"lr": 5.0}]), r"enqueue\[0\].lr: 5.0 is outside space.lr"),
    ("enqueue unknown param", _raw(enqueue=[{"lrr": 0.01}]), r"enqueue\[0\].lrr: 'lrr' is not a parameter"),
    ("threshold without bounds", _raw(pruner={"type": "threshold"}), r"pruner: threshold pruner needs lower or upper"),
    ("hyperband past epochs", _raw(pruner={"type": "hyperband", "min_resource": 5}), r"pruner.min_resource: min_resource \(5\) exceeds train.epochs"),
    ("bad study name", _raw(name="my study/1"), r"name: String should match pattern"),
    ("unset env var", _raw(storage="postgresql+psycopg://u:${HPSEARCH_TEST_UNSET}@h/db"), r"storage: environment variable HPSEARCH_TEST_UNSET is not set"),
    ("bad gpu list", _raw(workers={"gpus": "0,x"}), r"workers.gpus: gpus must be 'all', 'none' or a list"),
]


@pytest.mark.parametrize("raw, pattern", [(raw, pat) for _, raw, pat in BAD_FILES], ids=[b[0] for b in BAD_FILES])
def test_bad_study_is_one_clear_line(raw: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern) as info:
        build_config(raw, source="bad.yaml")
    message = str(info.value)
    assert message.startswith("bad.yaml: ")
    assert "\n" not in message


YAML_FILES = [
    ("syntax error", "name: x\nspace: {lr: [1, 2\n", r"line \d+: YAML syntax error"),
    ("python object tag", "name: !!python/object/apply:os.system ['echo hacked']\n", r"unsupported YAML tag"),
    ("python name tag", "name: x\nseed: !!python/name:os.system\n", r"unsupported YAML tag"),
    ("empty file", "", r"the study file is empty"),
    ("a list, not a mapping", "- name: x\n", r"must be a mapping of keys"),
    ("tabs for indentation", "name: x\nspace:\n\tlr: 1\n", r"YAML syntax error"),
]


@pytest.mark.parametrize("text, pattern", [(t, p) for _, t, p in YAML_FILES], ids=[y[0] for y in YAML_FILES])
def test_bad_yaml_is_one_clear_line(tmp_path: Path, text: str, pattern: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such study file"):
        load_config(tmp_path / "nope.yaml")
