"""Multihead and regression studies end to end through `hpsearch run`: metrics, checkpoints, resume, `predict` and
the export's predict(); models and data that do not fit the task are refused before any trial."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState

from hpsearch import engine
from cli_fixtures import csv_rows, export_module, one_error_line
from hpsearch.cli import main
from hpsearch.data import load_dataset
from hpsearch.signals import StopRequested

DB = Path("runs/tiny/study.db")
MULTIHEAD: dict[str, Any] = {
    "task": "multihead", "n_trials": 2, "data": {"dataset": "digit_strings", "max_length": 3, "val_split": 0.25},
    "model": {"name": "seednet", "args": {"width": 4, "heads": 3}}, "train": {"epochs": 2, "batch_size": 64},
}
REGRESSION: dict[str, Any] = {
    "task": "regression", "metric": "val_mse", "n_trials": 2, "data": {"dataset": "diabetes", "val_split": 0.25},
    "train": {"epochs": 3, "batch_size": 32},
}


def _study() -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{DB}")


def test_a_multihead_study_scores_whole_strings_and_predicts_them(write_study: Callable[..., Path],
                                                                  workdir: Path) -> None:
    path = write_study(**{**MULTIHEAD, "n_trials": 1})
    assert main(["run", str(path)]) == 0
    best = _study().best_trial
    history = best.user_attrs["history"]
    assert set(history[0]) >= {"train_loss", "train_accuracy", "train_char_accuracy", "val_loss", "val_accuracy",
                               "val_char_accuracy"}
    assert best.value == max(h["val_accuracy"] for h in history)
    assert best.user_attrs["inputs"]["task"] == "multihead" and best.user_attrs["inputs"]["blank"] == 10
    out = workdir / "val.csv"
    assert main(["predict", str(path), "--input", "val", "--out", str(out)]) == 0
    pool = load_dataset("digit_strings", task="multihead", max_length=3, seed=0)
    truth = ["".join(str(d) for d in row if d != 10) for row in pool.y.tolist()]
    rows = csv_rows(out)
    assert len(rows) == 750 and all(set(r["prediction"]) <= set("0123456789") for r in rows)
    right = sum(r["prediction"] == truth[int(r["input"])] for r in rows)
    assert right / len(rows) == best.value  # the CSV's strings are what the trial scored, exactly
    module = export_module(workdir, path, "load_model_multihead")
    x = pool.x[[int(r["input"]) for r in rows[:16]]]
    assert module.predict(x).shape == (16, 3)
    assert module.predict_text(x) == [r["prediction"] for r in rows[:16]]


def test_a_regression_study_reports_and_predicts_in_the_targets_units(write_study: Callable[..., Path],
                                                                      workdir: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(**REGRESSION)
    assert main(["run", str(path)]) == 0
    study = _study()
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    best = study.best_trial
    history = best.user_attrs["history"]
    assert set(history[0]) >= {"train_loss", "val_loss", "val_mse", "val_mae", "val_r2"}
    assert best.value == min(h["val_mse"] for h in history)
    out = workdir / "val.csv"
    assert main(["predict", str(path), "--input", "val", "--out", str(out)]) == 0
    pool = load_dataset("diabetes", task="regression")
    rows = csv_rows(out)
    index = [int(r["input"]) for r in rows]
    predicted = torch.tensor([float(r["prediction"]) for r in rows], dtype=torch.float64)
    mse = (predicted - pool.y[index, 0].double()).square().mean().item()
    assert mse == pytest.approx(best.value, rel=1e-6)  # the data's units (a target std of 77, not 1); float32 CSV
    module = export_module(workdir, path, "load_model_regression")
    values = module.predict(pool.x[index[:8]])
    assert values.shape == (8, 1)
    assert values.flatten().tolist() == pytest.approx(predicted[:8].tolist(), rel=1e-6)
    capsys.readouterr()
    assert main(["predict", str(path), "--input", "val", "--tta", "2", "--out", str(workdir / "tta.csv")]) == 2
    assert "--tta 2: tta = 2 needs image inputs (C, H, W), but samples have shape (10,)" in one_error_line(capsys)


@pytest.mark.parametrize("raw", [MULTIHEAD, REGRESSION], ids=["multihead", "regression"])
def test_a_stopped_trial_of_each_task_resumes_where_it_stopped(raw: dict[str, Any], write_study: Callable[..., Path],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_study(**{**raw, "n_trials": 1, "train": {**raw["train"], "epochs": 3}})
    real = engine.Trainer.run_epoch
    calls: list[int] = []

    def stop_second(self: engine.Trainer) -> dict[str, float]:
        calls.append(self.epoch)
        if len(calls) == 2:
            raise StopRequested("SIGTERM")
        return real(self)

    monkeypatch.setattr(engine.Trainer, "run_epoch", stop_second)
    assert main(["run", str(path)]) == 130  # epoch 1 saved, then stopped
    monkeypatch.setattr(engine.Trainer, "run_epoch", real)
    assert main(["run", str(path)]) == 0
    first, resumed = _study().trials
    assert first.state == TrialState.FAIL and resumed.state == TrialState.COMPLETE
    assert resumed.user_attrs["resumed_from"] == {"trial": 0, "epoch": 1}
    history = resumed.user_attrs["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[0] == first.user_attrs["history"][0]  # its first epoch, carried over


@pytest.mark.parametrize("changes, expected", [
    ({"model": {"name": "mlp"}}, "model: mlp returns (2, 11) for 2 inputs; it must return one score per class and "
                                 "position, (2, 3, 11), for task multihead: set model.args.heads: 3"),
    ({"model": {"name": "seednet", "args": {"heads": 4}}}, "seednet returns (2, 4, 11)"),
    ({"task": "classification"}, "data.dataset: dataset 'digit_strings' holds digit strings"),
    ({"metric": "val_mse"}, "metric: task multihead does not report 'val_mse'"),
])
def test_a_multihead_study_that_cannot_work_exits_2_before_any_trial(
        changes: dict[str, Any], expected: str, write_study: Callable[..., Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(write_study(**{**MULTIHEAD, **changes}))]) == 2
    assert expected in one_error_line(capsys)
    assert not DB.exists()


CUSTOM = '''
import torch
from torch import nn


def floats(root=None):
    return torch.rand(40, 5), torch.rand(40) * 3


def rows(root=None):
    return torch.rand(40, 5), torch.randint(0, 4, (40, 2))


def blank_inside(root=None):
    from hpsearch.data import ArrayData
    y = torch.randint(0, 4, (40, 2))
    return ArrayData(torch.rand(40, 5), y, 4, (0.0,) * 40, (1.0,) * 40, blank=1)


def factory(input_shape, num_classes, dropout, num_positions):
    return nn.Sequential(nn.Flatten(), nn.Linear(5, num_positions * num_classes), nn.Unflatten(1, (num_positions,
                                                                                                  num_classes)))


def regressor(input_shape, num_classes, dropout, num_outputs):
    return nn.Linear(5, num_outputs)


def bright(root=None):
    # Images (uint8 digits) with two float targets: the digit and the mean brightness of the left half.
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = torch.from_numpy(digits.images.astype("uint8")).unsqueeze(1)[:400]
    y = torch.stack([torch.from_numpy(digits.target[:400]).float(), x[:, 0, :, :4].float().mean((1, 2))], 1)
    return x, y
'''


@pytest.fixture
def custom(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (workdir / "taskdata.py").write_text(textwrap.dedent(CUSTOM))
    monkeypatch.syspath_prepend(str(workdir))
    sys.modules.pop("taskdata", None)
    return "taskdata"


@pytest.mark.parametrize("task, dataset, expected", [
    ("classification", "floats", "returned float labels; task classification needs integer class indices: set task: "
                                 "regression"),
    ("classification", "rows", "returned labels of shape (40, 2); task classification needs (N,) class indices: set "
                               "task: multihead"),
    ("regression", "rows", "returned integer labels (torch.int64); task regression needs float targets"),
    ("multihead", "floats", "returned float labels of shape (40,); task multihead needs integer class indices"),
    ("multihead", "blank_inside", "the blank class 1 lies inside the real classes (0..3)"),
])
def test_custom_data_that_does_not_fit_the_task_exits_2(task: str, dataset: str, expected: str, custom: str,
                                                        write_study: Callable[..., Path],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    metric = {"regression": "val_mse"}.get(task, "val_accuracy")
    path = write_study(task=task, metric=metric, data={"dataset": f"{custom}:{dataset}", "val_split": 0.25})
    assert main(["run", str(path)]) == 2
    line = one_error_line(capsys)
    assert f"data.dataset: dataset '{custom}:{dataset}'" in line and expected in line, line
    assert not DB.exists()


@pytest.mark.parametrize("task, dataset, model, metric", [
    ("multihead", "rows", "factory", "val_char_accuracy"), ("regression", "floats", "regressor", "val_r2")])
def test_custom_factories_get_the_tasks_arguments(task: str, dataset: str, model: str, metric: str, custom: str,
                                                  write_study: Callable[..., Path]) -> None:
    path = write_study(task=task, metric=metric, n_trials=1, data={"dataset": f"{custom}:{dataset}", "val_split": 0.25},
                       model={"name": f"{custom}:{model}"}, train={"epochs": 1, "batch_size": 8})
    assert main(["run", str(path)]) == 0
    trial = _study().best_trial
    assert metric in trial.user_attrs["history"][0]


def test_regression_with_tta_reproduces_its_validation_mse_through_predict_and_the_export(
        custom: str, write_study: Callable[..., Path], workdir: Path) -> None:
    path = write_study(task="regression", metric="val_mse", n_trials=1,
                       data={"dataset": f"{custom}:bright", "val_split": 0.25},
                       train={"epochs": 2, "batch_size": 32, "augment": ["hflip", "crop"], "tta_val": 3})
    assert main(["run", str(path)]) == 0
    best = _study().best_trial
    out = workdir / "val.csv"
    assert main(["predict", str(path), "--input", "val", "--tta", "3", "--out", str(out)]) == 0
    x, y = sys.modules[custom].bright()
    rows = csv_rows(out)
    index = [int(r["input"]) for r in rows]
    assert len(rows) == 100
    predicted = torch.tensor([[float(v) for v in r["prediction"].split()] for r in rows], dtype=torch.float64)
    mse = (predicted - y[index].double()).square().mean().item()  # the mean over both outputs, in their units
    assert mse == pytest.approx(best.value, rel=1e-6)
    plain = workdir / "plain.csv"
    assert main(["predict", str(path), "--input", "val", "--out", str(plain)]) == 0
    assert [r["prediction"] for r in csv_rows(plain)] != [r["prediction"] for r in rows]  # the views did count
    module = export_module(workdir, path, "load_model_regression_tta")
    exported = module.predict(x[index[:8]], tta=3).double()
    assert exported.flatten().tolist() == pytest.approx(predicted[:8].flatten().tolist(), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("train, key", [({"augment": ["hflip"], "tta_val": 2}, "train.tta_val"),
                                        ({"augment": ["crop"]}, "train.augment")])
def test_tta_and_augmentation_of_data_without_images_exit_2_before_any_trial(
        train: dict[str, Any], key: str, write_study: Callable[..., Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(**{**REGRESSION, "train": {**REGRESSION["train"], **train}})
    assert main(["run", str(path)]) == 2
    line = one_error_line(capsys)
    assert f"study.yaml: {key}" in line and "dataset 'diabetes'" in line and "shape (10,)" in line, line
    assert not DB.exists()


def _write_label_folder(root: Path, count: int = 60) -> list[str]:
    """Digit strings written as PNG files plus the competition's labels.json; the label strings in file order."""
    from PIL import Image

    pool = load_dataset("digit_strings", task="multihead", max_length=3, seed=1)
    root.mkdir(parents=True)
    labels, strings = {}, []
    for i in range(count):
        name = f"{i:06d}.png"
        pixels = pool.x[i, 0].numpy() * 16  # digits' 0..16 levels as 8-bit grey
        Image.fromarray(pixels.clip(0, 255).astype("uint8")).convert("RGB").save(root / name)
        digits = [d for d in pool.y[i].tolist() if d != 10]
        labels[name] = {"label": digits}
        strings.append("".join(map(str, digits)))
    (root / "labels.json").write_text(__import__("json").dumps(labels))
    return strings


def test_a_label_folder_in_the_competition_format_trains_and_predicts(write_study: Callable[..., Path],
                                                                     workdir: Path) -> None:
    strings = _write_label_folder(workdir / "photos")
    path = write_study(task="multihead", n_trials=1,
                       data={"dataset": "label_folder", "root": "photos", "max_length": 3, "image_size": [8, 24],
                             "val_split": 0.25},
                       model={"name": "seednet", "args": {"width": 4, "heads": 3}},
                       train={"epochs": 15, "batch_size": 16, "augment": ["crop"], "tta_val": 2})
    assert main(["run", str(path)]) == 0
    best = _study().best_trial
    inputs = best.user_attrs["inputs"]
    assert inputs["task"] == "multihead" and inputs["blank"] == 10 and inputs["input_shape"] == [3, 8, 24]
    out = workdir / "photos.csv"
    assert main(["predict", str(path), "--input", str(workdir / "photos"), "--out", str(out)]) == 0
    rows = csv_rows(out)
    assert [r["input"] for r in rows] == [f"{i:06d}.png" for i in range(60)]
    assert all(set(r["prediction"]) <= set("0123456789") and len(r["prediction"]) <= 3 for r in rows)
    # The validation split through the CLI, rows named by file, scores what the trial recorded (over 2 TTA views).
    assert main(["predict", str(path), "--input", "val", "--tta", "2", "--out", str(out)]) == 0
    rows, truth = csv_rows(out), {f"{i:06d}.png": s for i, s in enumerate(strings)}
    assert len(rows) == 15 and all(r["input"] in truth for r in rows)
    assert sum(r["prediction"] == truth[r["input"]] for r in rows) / len(rows) == best.value  # exactly


@pytest.mark.parametrize("data, key", [({"dataset": "digits", "labels": "x.json"}, "labels"),
                                       ({"dataset": "digits", "image_size": [8, 16]}, "image_size"),
                                       ({"dataset": "label_folder", "image_size": [8]}, "image_size")])
def test_label_folder_keys_are_refused_elsewhere(write_study: Callable[..., Path], workdir: Path,
                                                 capsys: pytest.CaptureFixture[str], data: dict[str, Any],
                                                 key: str) -> None:
    path = write_study(task="multihead" if data["dataset"] == "label_folder" else "classification", data=data)
    assert main(["run", str(path)]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"hpsearch: error: {path}: data") and key in line
    assert not DB.exists()
