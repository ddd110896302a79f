"""The study file contract: valid files resolve, every bad file gets one clear ConfigError."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import TINY_STUDY
from hpsearch.cli import main
from hpsearch.config import CategoricalParam, FloatParam, build_config, load_config, with_overrides
from hpsearch.config.search import auto_sampler_type, default_min_resource
from hpsearch.errors import ConfigError

STUDIES = sorted((Path(__file__).parents[2] / "studies").glob("*.yaml"))


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
    assert resolved["sampler"]["type"] == "tpe" and resolved["pruner"]["type"] == "successive_halving"


def test_default_pairing_scales_with_the_space_and_the_epochs() -> None:
    space = {"lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
             "width": {"type": "int", "low": 8, "high": 64}, "optimizer": {"type": "categorical", "choices": ["sgd"]}}
    cfg = build_config({"name": "x", "train": {"batch_size": 32, "epochs": 20}, "model": {"name": "mlp"},
                        "space": space})
    assert cfg.resolved()["sampler"] == {"type": "tpe", "n_startup_trials": 3, "multivariate": True, "group": True,
                                         "constant_liar": True}
    assert cfg.resolved()["pruner"] == {"type": "successive_halving", "min_resource": 3, "reduction_factor": 3}
    assert [default_min_resource(e) for e in (1, 9, 10, 12, 20, 100)] == [1, 1, 2, 2, 3, 12]
    assert with_overrides(cfg, epochs=12).pruner.min_resource == 2  # chosen again for the new epochs
    assert set(cfg.chosen) == {"sampler", "pruner"}
    assert not build_config(_raw(sampler={"type": "random"}, pruner={"type": "none"})).chosen


def test_sampler_auto_rule() -> None:
    floats = {"lr": FloatParam(type="float", low=1e-4, high=0.1, log=True)}
    cat = {**floats, "optimizer": CategoricalParam(type="categorical", choices=["sgd", "adamw"])}
    assert auto_sampler_type(floats, 50) == "gp"
    assert auto_sampler_type(floats, 101) == "tpe"  # a GP fit grows with the cube of the trials
    assert auto_sampler_type(cat, 50) == "tpe"
    assert auto_sampler_type({f"p{i}": floats["lr"] for i in range(9)}, 50) == "tpe"
    assert auto_sampler_type(floats, 50, "successive_halving") == "tpe"  # GP would fit only the unpruned trials
    cfg = build_config(_raw(sampler="auto"))
    assert cfg.sampler.type == auto_sampler_type(cfg.space, cfg.n_trials, cfg.pruner.type) and cfg.sampler_auto
    assert build_config(_raw(sampler="auto", pruner={"type": "none"})).sampler.type == "gp"
    unpruned = {k: v for k, v in _raw(sampler="auto").items() if k != "pruner"}
    assert build_config(unpruned).sampler.type == "tpe"  # the default pruner prunes
    assert with_overrides(cfg, n_trials=500).sampler.type == "tpe"  # auto is chosen again


def test_pruner_min_resource_above_the_epochs_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"pruner.min_resource: min_resource \(5\) exceeds train.epochs \(2\)"):
        build_config(_raw(pruner={"type": "successive_halving", "min_resource": 5}, train={"epochs": 2,
                                                                                          "batch_size": 8}))


def test_tpe_group_is_off_unless_asked_and_parses() -> None:
    assert build_config(_raw(sampler={"type": "tpe"})).sampler.group is False
    assert build_config(_raw(sampler={"type": "tpe", "group": True})).sampler.group is True


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
    ("tpe group without multivariate", _raw(sampler={"type": "tpe", "multivariate": False, "group": True}),
     r"sampler: group: true needs multivariate: true"),
    ("unknown dataset", _raw(data={"dataset": "cifar"}), r"data.dataset: unknown dataset 'cifar' \(did you mean 'cifar10'\?\)"),
    ("unknown model", _raw(model={"name": "resnet"}), r"model.name: unknown model 'resnet'"),
    ("unknown metric", _raw(metric="accuracy"), r"metric: unknown metric 'accuracy'"),
    ("unknown task", _raw(task="segmentation"), r"task: .*'classification', 'multihead' or 'regression'"),
    ("metric of another task", _raw(metric="val_mse"),
     r"metric: task classification does not report 'val_mse' \(did you mean 'val_loss'\?\); use one of val_accuracy, "
     r"val_loss$"),
    ("regression metric misspelt", _raw(task="regression", metric="val_rmse"),
     r"metric: unknown metric 'val_rmse' \(did you mean 'val_mse'\?\); use one of val_mse, val_mae, val_r2, val_loss"),
    ("class weights in regression", _raw(task="regression", metric="val_mae", train={"class_weighting": True}),
     r"train.class_weighting: task regression has no classes to weight; remove it"),
    ("label smoothing searched in regression", _raw(task="regression", metric="val_r2", space=_space(
        label_smoothing={"type": "float", "low": 0.0, "high": 0.2})), r"space.label_smoothing: task regression has no"),
    ("max_length of a dataset without strings", _raw(data={"dataset": "digits", "max_length": 4}),
     r"data: max_length is for datasets of digit strings \(digit_strings, label_folder\), not 'digits'; remove it"),
    ("max_length too long", _raw(data={"dataset": "digit_strings", "max_length": 99}), r"data.max_length: .*32"),
    ("heads for mlp", _raw(model={"name": "mlp", "args": {"heads": 3}}), r"model.*takes no argument 'heads'"),
    ("task key misspelt", _raw(tsak="multihead"), r"tsak"),
    ("metric vs direction", _raw(metric="val_loss", direction="maximize"), r"direction: 'maximize' contradicts metric 'val_loss'"),
    ("zero epochs", _raw(train={"epochs": 0, "batch_size": 64}), r"train.epochs: .*greater than or equal to 1"),
    ("negative trials", _raw(n_trials=-2), r"n_trials: .*greater than or equal to 1"),
    ("zero trials", _raw(n_trials=0), r"n_trials: .*greater than or equal to 1"),
    ("missing name", {k: v for k, v in TINY_STUDY.items() if k != "name"}, r"name: required key is missing"),
    ("both splits", _raw(data={"dataset": "digits", "val_split": 0.2, "cv_folds": 5}), r"data: val_split and cv_folds are both set"),
    ("bootstrap and cv_folds", _raw(data={"dataset": "digits", "cv_folds": 5, "bootstrap": 4}),
     r"data: cv_folds and bootstrap are both set; keep one \(val_split: hold-out, cv_folds: k-fold, bootstrap: out-of-bag\)$"),
    ("bootstrap and val_split", _raw(data={"dataset": "digits", "val_split": 0.2, "bootstrap": 4}),
     r"data: val_split and bootstrap are both set"),
    ("all three splits", _raw(data={"dataset": "digits", "val_split": 0.2, "cv_folds": 3, "bootstrap": 4}),
     r"data: val_split and cv_folds and bootstrap are all set"),
    ("bootstrap of 1", _raw(data={"dataset": "digits", "bootstrap": 1}),
     r"data.bootstrap: bootstrap is the number of out-of-bag splits, between 2 and 50 .*got 1; set a count"),
    ("bootstrap of 51", _raw(data={"dataset": "digits", "bootstrap": 51}), r"data.bootstrap: .*between 2 and 50 .*got 51"),
    ("bootstrap not a count", _raw(data={"dataset": "digits", "bootstrap": 2.5}), r"data.bootstrap: .*valid integer"),
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


# ------------------------------------------------------------------ space values obey the rules of what they override

NO_BATCH = {"epochs": 2}  # batch_size searched, so not fixed in train:
MLP_DEPTH_ONLY = {"name": "mlp", "args": {"depth": 1}}  # width free to be searched


def _float(low: float, high: float, **more: Any) -> dict[str, Any]:
    return {"type": "float", "low": low, "high": high, **more}


def _int(low: int, high: int) -> dict[str, Any]:
    return {"type": "int", "low": low, "high": high}


def _choices(*values: Any) -> dict[str, Any]:
    return {"type": "categorical", "choices": list(values)}


BAD_SPACES = [
    ("lr low below 0", _raw(space=_space(lr=_float(-1.0, 0.1))),
     r"space\.lr\.low: -1\.0 is not a valid lr \(must be > 0\); raise low above 0$"),
    ("lr choice 0", _raw(space=_space(lr=_choices(0.0, 0.1))),
     r"space\.lr\.choices: 0\.0 is not a valid lr \(must be > 0\); remove it from choices$"),
    ("batch_size 0", _raw(train=NO_BATCH, space=_space(batch_size=_choices(0, 64))),
     r"space\.batch_size\.choices: 0 is not a valid batch_size \(must be >= 1\)"),
    ("batch_size 0.5", _raw(train=NO_BATCH, space=_space(batch_size=_choices(64, 0.5))),
     r"space\.batch_size\.choices: 0\.5 is not a valid batch_size \(must be an integer\)"),
    ("batch_size 'abc'", _raw(train=NO_BATCH, space=_space(batch_size=_choices("abc"))),
     r"space\.batch_size\.choices: 'abc' is not a valid batch_size \(must be an integer\)"),
    ("batch_size '64' (no coercion)", _raw(train=NO_BATCH, space=_space(batch_size=_choices("64"))),
     r"space\.batch_size\.choices: '64' is not a valid batch_size"),
    ("batch_size int range from 0", _raw(train=NO_BATCH, space=_space(batch_size=_int(0, 64))),
     r"space\.batch_size\.low: 0 is not a valid batch_size \(must be >= 1\); raise low to 1 or more$"),
    ("batch_size as float", _raw(train=NO_BATCH, space=_space(batch_size=_float(16, 64))),
     r"space\.batch_size\.type: batch_size takes integers, so it cannot be searched as type: float"),
    ("accum_steps as float", _raw(space=_space(accum_steps=_float(1, 4))), r"space\.accum_steps\.type: .*integers"),
    ("optimizer lbfgs", _raw(space=_space(optimizer=_choices("sgd", "lbfgs"))),
     r"space\.optimizer\.choices: 'lbfgs' is not a valid optimizer \(must be one of 'sgd', 'adam' or 'adamw'\)"),
    ("optimizer as a range", _raw(space=_space(optimizer=_int(0, 2))),
     r"space\.optimizer\.type: optimizer takes named values.*use type: categorical with choices from sgd, adam, adamw"),
    ("scheduler unknown", _raw(space=_space(scheduler=_choices("cosine", "plateau"))),
     r"space\.scheduler\.choices: 'plateau' is not a valid scheduler"),
    ("nesterov as int range", _raw(space=_space(nesterov=_int(0, 1))),
     r"space\.nesterov\.type: nesterov is true or false.*choices: \[true, false\]"),
    ("nesterov choices 0/1", _raw(space=_space(nesterov=_choices(0, 1))),
     r"space\.nesterov\.choices: 0 is not a valid nesterov \(must be true or false\)"),
    ("dropout high 1.0", _raw(space=_space(dropout=_float(0.0, 1.0))),
     r"space\.dropout\.high: 1\.0 is not a valid dropout \(must be < 1\); lower high below 1$"),
    ("dropout negative", _raw(space=_space(dropout=_float(-0.1, 0.5))), r"space\.dropout\.low: -0\.1 .*must be >= 0"),
    ("momentum high 1.0", _raw(space=_space(momentum=_float(0.8, 1.0))), r"space\.momentum\.high: 1\.0 .*must be < 1"),
    ("gamma low 0", _raw(space=_space(gamma=_float(0.0, 0.5))), r"space\.gamma\.low: 0\.0 .*must be > 0"),
    ("label_smoothing as a string", _raw(space=_space(label_smoothing=_choices("0.1"))),
     r"space\.label_smoothing\.choices: '0\.1' .*must be a number"),
    ("width -3", _raw(model=MLP_DEPTH_ONLY, space=_space(width=_int(-3, 8))),
     r"space\.width\.low: -3 is not a valid width for model 'mlp' \(must be >= 1\)"),
    ("width 0.5", _raw(model=MLP_DEPTH_ONLY, space=_space(width=_choices(8, 0.5))),
     r"space\.width\.choices: 0\.5 is not a valid width for model 'mlp' \(must be an integer\)"),
    ("width as float", _raw(model=MLP_DEPTH_ONLY, space=_space(width=_float(8, 64))),
     r"space\.width\.type: width for model 'mlp' takes integers"),
    ("model.args width -3", _raw(model={"name": "seednet", "args": {"width": -3}}),
     r"model\.args\.width: -3 is not a valid width for model 'seednet' \(must be >= 1\); use a value >= 1$"),
    ("model.args width 0.5", _raw(model={"name": "mlp", "args": {"width": 0.5}}),
     r"model\.args\.width: 0\.5 is not a valid width for model 'mlp' \(must be an integer\); use an integer$"),
    ("model.args depth a list", _raw(model={"name": "mlp", "args": {"depth": [1, 2]}}),
     r"model\.args\.depth: \[1, 2\] is not a valid depth"),
    ("NaN low", _raw(space=_space(lr=_float(math.nan, 0.1))), r"space\.lr\.low: nan is not allowed; use a finite number$"),
    ("inf high", _raw(space=_space(dropout=_float(0.0, math.inf))), r"space\.dropout\.high: inf is not allowed"),
    ("-inf choice", _raw(space=_space(lr=_choices(0.1, -math.inf))), r"space\.lr\.choices\[1\]: -inf is not allowed"),
    ("NaN in train", _raw(train={"epochs": 2, "batch_size": 64, "weight_decay": math.nan}),
     r"train\.weight_decay: nan is not allowed"),
    ("inf seed", _raw(seed=math.inf), r"seed: inf is not allowed"),
    ("inf threshold", _raw(pruner={"type": "threshold", "upper": math.inf}), r"pruner\.upper: inf is not allowed"),
    ("NaN in enqueue", _raw(enqueue=[{"lr": math.nan}]), r"enqueue\[0\]\.lr: nan is not allowed"),
    ("enqueue non-integer for an int param", _raw(model=MLP_DEPTH_ONLY, space=_space(width=_int(4, 8)),
                                                   enqueue=[{"width": 5.5}]),
     r"enqueue\[0\]\.width: 5\.5 is outside space\.width \(integers in \[4, 8\]\)"),
    ("enqueue too long", _raw(enqueue=[{"lr": 0.005}] * 10_001),
     r"enqueue: 10,001 points; at most 10,000 can be queued"),
]


@pytest.mark.parametrize("raw, pattern", [(raw, pat) for _, raw, pat in BAD_SPACES], ids=[b[0] for b in BAD_SPACES])
def test_bad_space_value_is_one_clear_line(raw: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern) as info:
        build_config(raw, source="bad.yaml")
    assert str(info.value).startswith("bad.yaml: ") and "\n" not in str(info.value)


GOOD_SPACES = [
    ("bool and literal settings as categoricals", _space(nesterov=_choices(True, False), scheduler=_choices("none", "cosine"),
                                                         optimizer=_choices("sgd", "adam"))),
    ("integer settings as int ranges", _space(accum_steps=_int(1, 4), step_size=_int(1, 10))),
    ("float settings from ints", _space(warmup_epochs=_int(0, 3), weight_decay=_choices(0, 1.0e-4))),
    ("open bounds just inside", _space(dropout=_float(0.0, 0.99), momentum=_float(0.0, 0.999), gamma=_float(1e-3, 1.0))),
]


@pytest.mark.parametrize("space", [s for _, s in GOOD_SPACES], ids=[g[0] for g in GOOD_SPACES])
def test_valid_space_values_pass(space: dict[str, Any]) -> None:
    assert set(build_config(_raw(space=space)).space) == set(space)


def test_model_argument_ranges_pass_for_builtins() -> None:
    cfg = build_config(_raw(model=MLP_DEPTH_ONLY, space=_space(width=_int(8, 64))))
    assert cfg.space["width"].low == 8
    assert build_config(_raw(model={"name": "seednet", "args": {"width": 8}})).model.args == {"width": 8}


def test_a_long_choice_list_is_cut_short_in_the_message() -> None:
    with pytest.raises(ConfigError) as info:
        build_config(_raw(model={"name": "mlp", "args": {"depth": [1] * 100_000}}), source="bad.yaml")
    assert len(str(info.value)) < 300


VALIDATE_BAD = [
    ("negative lr", {"space": _space(lr=_float(-1.0, 0.1))}, "space.lr.low"),
    ("batch size 0", {"train": NO_BATCH, "space": _space(batch_size=_choices(0, 64))}, "space.batch_size.choices"),
    ("unknown optimizer", {"space": _space(optimizer=_choices("lbfgs"))}, "space.optimizer.choices"),
    ("dropout 1.0", {"space": _space(dropout=_float(0.0, 1.0))}, "space.dropout.high"),
    ("NaN bound", {"space": _space(lr=_float(math.nan, 0.1))}, "space.lr.low"),
    ("width -3", {"model": MLP_DEPTH_ONLY, "space": _space(width=_int(-3, 8))}, "space.width.low"),
]


@pytest.mark.parametrize("changes, where", [(c, w) for _, c, w in VALIDATE_BAD], ids=[v[0] for v in VALIDATE_BAD])
def test_validate_exits_2_with_one_line_for_a_bad_space(write_study: Callable[..., Path], changes: dict[str, Any],
                                                       where: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(**changes)
    assert main(["validate", str(path)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hpsearch: error: {path}: {where}: "), lines
    assert captured.out == ""


def test_bootstrap_resolves_as_the_split(write_study: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    resolved = build_config(_raw(data={"dataset": "digits", "bootstrap": 5})).resolved()["data"]
    assert (resolved["val_split"], resolved["cv_folds"], resolved["bootstrap"]) == (None, None, 5)
    assert build_config(_raw()).resolved()["data"]["bootstrap"] is None


@pytest.mark.parametrize("bootstrap, why", [(1, "between 2 and 50"), (60, "between 2 and 50"), (True, "true is not a number")])
def test_run_with_a_bootstrap_out_of_range_exits_2_and_writes_nothing(
        write_study: Callable[..., Path], workdir: Path, capsys: pytest.CaptureFixture[str], bootstrap: int,
        why: str) -> None:
    path = write_study(data={"dataset": "digits", "bootstrap": bootstrap})
    assert main(["run", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hpsearch: error: {path}: data.bootstrap: ") and why in lines[0], lines
    assert not (workdir / "runs").exists()


def test_run_with_a_bad_space_writes_nothing(write_study: Callable[..., Path], workdir: Path) -> None:
    path = write_study(space=_space(dropout=_float(0.0, 1.0)))
    assert main(["run", str(path)]) == 2
    assert not (workdir / "runs").exists()


# ------------------------------------------------------------------ the YAML itself: duplicate keys, size

DUPLICATES = [
    ("top level", "name: a\nseed: 1\nname: b\n", 3, "name"),
    ("nested", "name: a\ntrain:\n  epochs: 2\n  lr: 0.1\n  lr: 0.2\n", 5, "lr"),
    ("in a flow mapping", "name: a\nspace: {lr: {type: float, low: 0.1, low: 0.2, high: 1}}\n", 2, "low"),
    ("inside a list item", "name: a\nenqueue:\n  - {lr: 0.1, lr: 0.2}\n", 3, "lr"),
    ("a quoted twin", "name: a\n'name': b\n", 2, "name"),
]


@pytest.mark.parametrize("text, line, key", [(t, n, k) for _, t, n, k in DUPLICATES], ids=[d[0] for d in DUPLICATES])
def test_duplicate_key_is_refused_with_its_line(tmp_path: Path, text: str, line: int, key: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: line {line}: duplicate key '{key}'; keep one"


def test_merge_keys_may_override_but_plain_keys_stay_single(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("name: a\nmodel: {name: mlp}\ntrain: &t {epochs: 3, batch_size: 8, lr: 0.1}\n"
                    "space:\n  dropout: {<<: {type: float, low: 0.0, high: 0.9}, high: 0.5}\n")
    cfg = load_config(path)
    assert (cfg.train.epochs, cfg.space["dropout"].high) == (3, 0.5)


def test_oversized_study_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("name: [unclosed\n" + "#" * (2 * 1024 * 1024))  # parsing it would be a syntax error
    with pytest.raises(ConfigError, match=r"the study file is 2\.0 MiB; study files are limited to 2 MiB"):
        load_config(path)


@pytest.mark.slow
def test_ten_thousand_starting_points_just_under_the_size_limit_validate(write_study: Callable[..., Path],
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    points = [{"lr": round(1e-3 + i * 9e-7, 9), "dropout": round(i % 300 / 1000, 3)} for i in range(10_000)]
    path = write_study(enqueue=points)
    padding = 2 * 1024 * 1024 - 100 - path.stat().st_size
    assert padding > 0, "the points alone exceed the limit"
    with path.open("a") as file:
        file.write(("# " + "x" * 97 + "\n") * (padding // 100))
    assert 2 * 1024 * 1024 - 200 < path.stat().st_size <= 2 * 1024 * 1024
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out.count("- lr: ") == 10_000
