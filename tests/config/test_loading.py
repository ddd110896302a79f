"""Hostile study files and `hpsearch validate`: refused fast, in one line, before anything is written.

The files are under tests/fixtures/hostile/; `validate` runs the checks `run` makes before it opens the study.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Annotated, Any, Callable, Union, get_args, get_origin

import pytest
import yaml
from pydantic import ValidationError

from conftest import TINY_STUDY, python_env, start_hpsearch
from hpsearch import config
from hpsearch.cli import main
from hpsearch.errors import ConfigError

HOSTILE = Path(__file__).parents[1] / "fixtures" / "hostile"


def _refused(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    """The one error line of a child that must exit 2 (killed, and the test failed, if it runs past `timeout`)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def _nothing_written(workdir: Path, *kept: str) -> None:
    assert sorted(p.name for p in workdir.iterdir()) == sorted(kept)


# ---------------------------------------------------------------- YAML aliases

@pytest.mark.parametrize("verb", ["validate", "run"])
def test_alias_bomb_is_refused_at_once(workdir: Path, verb: str) -> None:
    line = _refused(start_hpsearch(verb, str(HOSTILE / "alias_bomb.yaml"), cwd=workdir))
    assert line.endswith("alias_bomb.yaml: line 7: YAML aliases expand to over 100,000 values; study files may use "
                         "anchors and aliases, but not nest them this deep or inside themselves; write the values out")
    _nothing_written(workdir)


def test_alias_bomb_under_model_args_is_refused_with_the_same_line(workdir: Path) -> None:
    line = _refused(start_hpsearch("validate", str(HOSTILE / "alias_bomb_model_args.yaml"), cwd=workdir))
    assert "alias_bomb_model_args.yaml: line 16: YAML aliases expand to over 100,000 values" in line


def test_alias_inside_itself_is_refused(workdir: Path) -> None:
    line = _refused(start_hpsearch("validate", str(HOSTILE / "alias_recursive.yaml"), cwd=workdir))
    assert "alias_recursive.yaml: line 3: a YAML alias refers to a value that contains it" in line


def test_ordinary_anchors_and_merges_still_load(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text("name: tiny\ntrain: &t {epochs: 2, batch_size: 64, lr: 0.01}\n"
                    "space:\n  width: &w {type: categorical, choices: [16, 32]}\n  depth: {<<: *w, choices: [1, 2]}\n"
                    "enqueue: [&p {width: 16, depth: 1}, *p]\n")
    cfg = config.load_config(path)
    assert cfg.space["depth"].choices == [1, 2] and cfg.enqueue[0] == cfg.enqueue[1] == {"width": 16, "depth": 1}


def test_aliases_may_add_many_values_below_the_bound(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    aliases = ", ".join(["*p"] * (config.MAX_ENQUEUE - 1))  # 50,000 values more than the file holds
    path.write_text(yaml.safe_dump(TINY_STUDY) + f"enqueue: [&p {{lr: 0.005, dropout: 0.1}}, {aliases}]\n")
    cfg = config.load_config(path)
    assert len(cfg.enqueue) == config.MAX_ENQUEUE and cfg.enqueue[-1] == {"lr": 0.005, "dropout": 0.1}


def test_non_finite_check_walks_a_shared_list_once() -> None:
    shared: list[Any] = [1.0] * 10
    for _ in range(6):
        shared = [shared] * 10  # 10**7 values if walked through every reference
    assert config.loading._non_finite({"a": shared}) is None
    found = config.loading._non_finite({"a": shared, "b": [float("inf")]})
    assert found == ("b[0]", float("inf"))
    looped: list[Any] = [1.0]
    looped.append(looped)  # what `a: &a [1.0, *a]` builds, if it got past the loader
    assert config.loading._non_finite({"a": looped}) is None


# ---------------------------------------------------------------- Ctrl-C while loading

@pytest.mark.parametrize("verb", ["run", "validate"])
def test_ctrl_c_while_the_study_file_is_read_stops_at_once(workdir: Path, verb: str) -> None:
    """The file is a pipe whose writer never finishes: the load blocks until the signal ends it."""
    fifo = workdir / "study.yaml"
    os.mkfifo(fifo)
    # As from a terminal: a runner started in the background (`cmd &`) would hand the child SIGINT ignored.
    proc = subprocess.Popen([sys.executable, "-m", "hpsearch", verb, str(fifo)], cwd=workdir, env=python_env(),
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    writer = None
    try:
        while writer is None:  # opening the write end succeeds once the child has opened the read end
            try:
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                assert exc.errno == errno.ENXIO and proc.poll() is None, proc.communicate()
                time.sleep(0.05)
        os.write(writer, b"name: tiny\n")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)  # a safety net: on a busy machine the child's imports alone take long
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if writer is not None:
            os.close(writer)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "hpsearch: interrupted"


# ---------------------------------------------------------------- braces and ${VAR} in paths

@pytest.mark.parametrize(("fixture", "expected"), [
    ("braces_output_dir.yaml", "output_dir: 'runs/exp{1}' holds '{' or '}', which a folder of a study may not "
                               "(Optuna reads braces in a storage URL as a template, and the default database "
                               "lies in this folder); rename it, e.g. 'runs/exp1'"),
    ("braces_sqlite.yaml", "storage: 'sqlite:///runs/x/a{b}.db' holds '{' or '}', which an SQLite path may not "
                           "(Optuna reads braces in a storage URL as a template); rename the file or folder, "
                           "e.g. 'sqlite:///runs/x/ab.db'"),
    ("unset_var_output_dir.yaml", "output_dir: environment variable HPSEARCH_NO_SUCH_VAR is not set; export it or "
                                  "write the value"),
])
@pytest.mark.parametrize("verb", ["validate", "run"])
def test_braces_in_paths_are_refused_and_nothing_is_written(workdir: Path, fixture: str, expected: str,
                                                            verb: str) -> None:
    line = _refused(start_hpsearch(verb, str(HOSTILE / fixture), cwd=workdir))
    assert line.endswith(f"{fixture}: {expected}")
    _nothing_written(workdir)


def test_output_dir_flag_with_braces_is_refused(workdir: Path) -> None:
    line = _refused(start_hpsearch("run", str(Path(__file__).parents[2] / "studies" / "quickstart.yaml"),
                                   "--output-dir", "runs/a{b}", cwd=workdir))
    assert "output_dir: 'runs/a{b}' holds '{' or '}'" in line
    _nothing_written(workdir)


def test_env_var_in_output_dir_is_expanded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HP_RUNS", "/scratch/me")
    cfg = config.build_config({**TINY_STUDY, "output_dir": "${HP_RUNS}/tiny"})
    assert cfg.out_dir == "/scratch/me/tiny" and cfg.storage_url == "sqlite:////scratch/me/tiny/study.db"


# ---------------------------------------------------------------- numbers are never booleans

def _bool_probe(annotation: Any) -> Any:
    """A value holding `True` where `annotation` wants a number, or None where it takes no number or takes bool."""
    if get_origin(annotation) is Annotated:
        return _bool_probe(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        members = [member for member in get_args(annotation) if member is not type(None)]
        if bool in members:
            return None
        return next((probe for probe in map(_bool_probe, members) if probe is not None), None)
    if annotation in (int, float):
        return True
    if get_origin(annotation) is list:
        inner = _bool_probe(get_args(annotation)[0])
        return None if inner is None else [inner]
    if get_origin(annotation) is dict:
        inner = _bool_probe(get_args(annotation)[1])
        return None if inner is None else {"k": inner}
    return None


def _sections(cls: type) -> list[type]:
    return [cls] + [sub for child in cls.__subclasses__() for sub in _sections(child)]


NUMERIC_FIELDS = [(cls, name, probe) for cls in _sections(config.Strict) for name, field in cls.model_fields.items()
                  if (probe := _bool_probe(field.annotation)) is not None]


def test_the_schema_walk_finds_the_numbers() -> None:
    found = {f"{cls.__name__}.{name}" for cls, name, _ in NUMERIC_FIELDS}
    assert {"StudyConfig.n_trials", "StudyConfig.timeout", "StudyConfig.seed", "TrainConfig.epochs",
            "TrainConfig.batch_size", "FloatParam.low", "IntParam.step", "TpeSampler.n_startup_trials",
            "PercentilePruner.percentile", "WorkersConfig.gpus", "WorkersConfig.grace_period",
            "EarlyStoppingConfig.patience", "MlpArgs.width"} <= found
    assert len(found) > 40


@pytest.mark.parametrize(("cls", "name", "probe"), NUMERIC_FIELDS,
                         ids=[f"{cls.__name__}.{name}" for cls, name, _ in NUMERIC_FIELDS])
def test_no_number_in_the_schema_takes_a_boolean(cls: type[config.Strict], name: str, probe: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        cls.model_validate({name: probe})
    assert any(err["loc"][0] == name for err in caught.value.errors()), caught.value.errors()


def test_exponent_numbers_without_a_dot_are_floats_as_in_yaml_1_2(tmp_path: Path) -> None:
    """`lr: 1e-3` is a float (PyYAML's YAML 1.1 would read a string, which strict numbers refuse); 10 stays an int."""
    path = tmp_path / "study.yaml"
    text = ("name: tiny\ntimeout: 2e3\ndata: {dataset: digits}\n"
            "train: {epochs: 10, batch_size: 64, lr: 1e-3}\nspace: {dropout: {type: float, low: 0.0, high: 0.3}}\n")
    path.write_text(text)
    cfg = config.load_config(path)
    assert (cfg.train.lr, cfg.timeout, cfg.train.epochs) == (1e-3, 2000.0, 10)
    path.write_text(text.replace("lr: 1e-3", "lr: '1e-3'"))  # quoted: a string, as written
    with pytest.raises(ConfigError, match="train.lr"):
        config.load_config(path)


def test_n_trials_true_is_refused(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(HOSTILE / "n_trials_true.yaml")]) == 2
    assert capsys.readouterr().err.strip().endswith("n_trials_true.yaml: n_trials: true is not a number; "
                                                    "write an integer")
    with pytest.raises(ConfigError, match=r"train.epochs: Input should be a valid integer \(got 2.0\)"):
        config.build_config({**TINY_STUDY, "train": {"epochs": 2.0, "batch_size": 64}})


# ---------------------------------------------------------------- unknown keys

@pytest.mark.parametrize(("changes", "expected"), [
    ({"n_trails": 3}, "n_trails: unknown key 'n_trails' (did you mean 'n_trials'?)"),
    ({"train": {"epochs": 2, "batch_size": 64, "epoch": 3}},
     "train.epoch: unknown key 'epoch' (did you mean 'epochs'?)"),
    ({"train": {"epochs": 2, "batch_size": 64, "early_stopping": {"patiense": 2}}},
     "train.early_stopping.patiense: unknown key 'patiense' (did you mean 'patience'?)"),
    ({"data": {"dataset": "digits", "val_splt": 0.2}},
     "data.val_splt: unknown key 'val_splt' (did you mean 'val_split'?)"),
    ({"model": {"name": "mlp", "arg": {}}}, "model.arg: unknown key 'arg' (did you mean 'args'?)"),
    ({"sampler": {"type": "tpe", "n_startup_trial": 3}},
     "sampler.n_startup_trial: unknown key 'n_startup_trial' (did you mean 'n_startup_trials'?)"),
    ({"pruner": {"type": "median", "n_warmup_step": 3}},
     "pruner.n_warmup_step: unknown key 'n_warmup_step' (did you mean 'n_warmup_steps'?)"),
    ({"workers": {"heartbeat": 5}}, "workers.heartbeat: unknown key 'heartbeat' (did you mean 'heartbeat_interval'?)"),
    ({"space": {**TINY_STUDY["space"], "lr": {"type": "float", "low": 0.001, "high": 0.01, "logg": True}}},
     "space.lr.logg: unknown key 'logg' (did you mean 'log'?)"),
    ({"space": {**TINY_STUDY["space"], "width": {"type": "categorical", "choices": [8], "wen": {}}}},
     "space.width.wen: unknown key 'wen' (did you mean 'when'?)"),
    ({"zzz": 1}, "zzz: unknown key 'zzz'; remove it"),
])
def test_unknown_keys_get_a_did_you_mean_at_every_level(changes: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config.build_config({**TINY_STUDY, **changes}, "s.yaml")
    assert str(caught.value).startswith(f"s.yaml: {expected}")


def test_epoch_typo_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(HOSTILE / "epoch_typo.yaml")]) == 2
    assert "train.epoch: unknown key 'epoch' (did you mean 'epochs'?)" in capsys.readouterr().err


@pytest.mark.parametrize(("changes", "expected"), [
    ({"model": {"name": "mlp", "args": {"width": [[1]]}}},
     "model.args.width: must be true or false, an integer, a number, a string or a list of true/false values, "
     "integers, numbers or strings; change the value"),
    ({"workers": {"gpus": [0, True]}}, "workers.gpus: must be 'all', 'none' or a list of integers; change the value"),
])
def test_a_value_no_member_of_a_union_takes_is_named_in_words(changes: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config.build_config({**TINY_STUDY, **changes}, "s.yaml")
    assert str(caught.value) == f"s.yaml: {expected}"


# ---------------------------------------------------------------- validate runs run's checks

@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(HOSTILE))
    yield "hostile_plugins"
    sys.modules.pop("hostile_plugins", None)


@pytest.mark.parametrize(("changes", "expected"), [
    ({"model": {"name": "no_such_module_hps:make"}},
     "model.name: model 'no_such_module_hps:make': cannot import module 'no_such_module_hps'"),
    ({"model": {"name": "hostile_plugins:fixed_width", "args": {"width": 8}}},
     "model.args.width: model factory 'hostile_plugins:fixed_width' takes no argument 'width'"),
    ({"model": {"name": "hostile_plugins:wrong_inputs"}},
     "model: hostile_plugins:wrong_inputs fails on a batch of the data, inputs of shape (2, 1, 8, 8)"),
    ({"data": {"dataset": "no_such_module_hps:load"}},
     "data.dataset: dataset 'no_such_module_hps:load': cannot import module 'no_such_module_hps'"),
])
def test_validate_refuses_what_run_refuses_before_the_study(write_study: Callable[..., Path], workdir: Path,
                                                            plugins: str, changes: dict[str, Any], expected: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(**changes)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"hpsearch: error: {path}: {expected}"), err
    assert main(["validate", "--config-only", str(path)]) == 0  # the file alone is fine
    assert "custom code, data and model not checked (--config-only)" in capsys.readouterr().out
    _nothing_written(workdir, "study.yaml")


def test_validate_says_what_it_checked_and_writes_nothing(write_study: Callable[..., Path], workdir: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study()
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"# {path}: valid (data loaded, model built and run on two samples)")
    cifar = write_study("cifar.yaml", data={"dataset": "cifar10", "root": "./data", "download": True},
                        model={"name": "seednet"}, space={"lr": TINY_STUDY["space"]["lr"]})
    assert main(["validate", str(cifar)]) == 0
    assert capsys.readouterr().out.startswith(f"# {cifar}: valid (data not loaded: cifar10 is not under ./data yet "
                                              f"and validate downloads nothing (run will); model not built)")
    _nothing_written(workdir, "study.yaml", "cifar.yaml")


def test_validate_config_only_loads_no_torch() -> None:
    code = ("import sys; from hpsearch.cli import main; "
            "rc = main(['validate', '--config-only', 'studies/quickstart.yaml']); print('torch' in sys.modules, rc)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).parents[2], check=True)
    assert result.stdout.strip().splitlines()[-1] == "False 0"

