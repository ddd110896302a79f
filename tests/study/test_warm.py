"""warm_start: a previous study's finished trials join the sampler's history once; misfits are refused, exit 2."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import create_trial

from hpsearch.config import build_config
from hpsearch.errors import ConfigError
from hpsearch import records
from hpsearch.cli import main
from hpsearch.study import open_study

SPACE = {"lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}}


def _previous(url: str, dist: Any = FloatDistribution(1e-4, 1.0, log=True), values: tuple[float, ...] = (0.01, 0.02),
              metric: str = "val_accuracy") -> None:
    study = optuna.create_study(study_name="first", storage=url, direction="maximize")
    study.set_user_attr(records.STUDY_METRIC, metric)
    for index, lr in enumerate(values):
        study.add_trial(create_trial(value=0.5 + index / 10, params={"lr": lr}, distributions={"lr": dist}))


def _cfg(tmp_path: Path, url: str, **warm: Any) -> Any:
    return build_config({"name": "second", "output_dir": str(tmp_path / "second"), "train": {"batch_size": 8},
                         "space": SPACE, "warm_start": {"study": "first", "storage": url, **warm}},
                        source="second.yaml")


def test_finished_trials_are_added_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'first.db'}"
    _previous(url, values=(0.01, 0.02, 0.5))  # 0.5 lies outside this space's lr range: left out
    study = open_study(_cfg(tmp_path, url))
    assert [t.params["lr"] for t in study.trials] == [0.01, 0.02]
    assert study.user_attrs[records.STUDY_WARM_START] == [f"{url}#first"]
    assert len(open_study(_cfg(tmp_path, url)).trials) == 2  # a rerun does not add them again


@pytest.mark.parametrize(("prepare", "message"), [
    (lambda url: None, r"^second.yaml: warm_start: no study 'first' in sqlite:///.*first.db; check warm_start.study$"),
    (lambda url: _previous(url, dist=IntDistribution(1, 10), values=(3,)),
     r"^second.yaml: warm_start: study 'first' does not fit this space \(lr: int \[1, 10\] there, float "
     r"\[0.001, 0.1\] log here\); align the spaces or drop warm_start$"),
    (lambda url: _previous(url, metric="val_loss"),
     r"^second.yaml: warm_start: study 'first' maximizes val_loss, this file maximizes val_accuracy"),
])
def test_a_misfit_is_refused_before_anything_is_written(tmp_path: Path, prepare: Any, message: str) -> None:
    url = f"sqlite:///{tmp_path / 'first.db'}"
    optuna.create_study(study_name="other", storage=url)
    prepare(url)
    with pytest.raises(ConfigError, match=message):
        open_study(_cfg(tmp_path, url))
    assert not (tmp_path / "second").exists()


def test_a_missing_storage_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"warm_start: (storage|no study).*check warm_start"):
        open_study(_cfg(tmp_path, f"sqlite:///{tmp_path / 'nothing.db'}"))
    assert not (tmp_path / "nothing.db").exists()


def test_exactly_one_source() -> None:
    with pytest.raises(ConfigError, match="warm_start needs either study: .* or study_file:"):
        build_config({"name": "s", "train": {"batch_size": 8}, "space": SPACE, "warm_start": {"storage": "x"}})


def _contents(url: str) -> list[tuple[str, dict[str, Any], int]]:
    summaries = optuna.get_all_study_summaries(url)
    return [(x.study_name, x.user_attrs, x.n_trials) for x in sorted(summaries, key=lambda x: x.study_name)]


@pytest.mark.parametrize(("prepare", "message"), [
    (lambda url: None, r"second.yaml: warm_start: no study 'first' in sqlite:///.*first.db; check warm_start.study"),
    (lambda url: _previous(url, dist=IntDistribution(1, 10), values=(3,)),
     r"second.yaml: warm_start: study 'first' does not fit this space \(lr: int \[1, 10\] there"),
    (lambda url: _previous(url, metric="val_loss"),
     r"second.yaml: warm_start: study 'first' maximizes val_loss, this file maximizes val_accuracy"),
])
def test_validate_refuses_a_misfit_as_run_does_and_writes_nothing(
        write_study: Callable[..., Path], workdir: Path, capsys: pytest.CaptureFixture[str], prepare: Any,
        message: str) -> None:
    url = f"sqlite:///{workdir / 'first.db'}"
    optuna.create_study(study_name="other", storage=url)
    prepare(url)
    before = _contents(url)
    path = write_study("second.yaml", name="second", warm_start={"study": "first", "storage": url})
    for flags in ([], ["--config-only"]):
        assert main(["validate", str(path), *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(message, err[0]), err
    assert _contents(url) == before and not (workdir / "runs").exists()


def test_validate_refuses_a_missing_warm_start_storage_without_creating_it(
        write_study: Callable[..., Path], workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{workdir / 'nothing.db'}"
    path = write_study("second.yaml", name="second", warm_start={"study": "first", "storage": url})
    assert main(["validate", str(path), "--config-only"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(r"second.yaml: warm_start: (storage|no study).*check warm_start", err[0]), err
    assert not (workdir / "nothing.db").exists() and not (workdir / "runs").exists()


def test_validate_says_what_a_warm_start_will_add(write_study: Callable[..., Path], workdir: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{workdir / 'first.db'}"
    _previous(url, values=(0.002, 0.005, 0.5))  # 0.5 lies outside the file's lr range [0.001, 0.01]
    path = write_study("second.yaml", name="second", warm_start={"study": "first", "storage": url})
    assert main(["validate", str(path), "--config-only"]) == 0
    assert f"# warm_start: 2 finished trials of {url}#first fit this space\n" in capsys.readouterr().out
    assert not (workdir / "runs").exists()
