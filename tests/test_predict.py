"""`hpsearch predict` end to end on a tiny digits study: the CSV, TTA, the export's predict, and bad input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml
from PIL import Image
from sklearn.datasets import load_digits

from conftest import TINY_STUDY
from cli_fixtures import csv_rows, export_module, one_error_line
from hpsearch.cli import main
from hpsearch.data import load_test_split
from torch_fixtures import skip_md5_checks, write_cifar10, write_mnist


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two trials trained with crop augmentation and validation scored over 3 TTA views (output_dir absolute)."""
    root = tmp_path_factory.mktemp("predict")
    raw = {**TINY_STUDY, "n_trials": 2, "output_dir": str(root / "runs"),
           "train": {"epochs": 2, "batch_size": 64, "augment": ["crop"], "tta_val": 3}}
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["run", str(path)]) == 0
    return path


def _trials(study: Path) -> list[optuna.trial.FrozenTrial]:
    url = f"sqlite:///{study.parent / 'runs' / 'study.db'}"
    return optuna.load_study(study_name="tiny", storage=url).get_trials()


@pytest.mark.parametrize("number", [None, 0])
def test_predicting_the_validation_split_reproduces_the_recorded_accuracy(study: Path, tmp_path: Path,
                                                                        number: int | None) -> None:
    trials = _trials(study)
    trial = max(trials, key=lambda t: (t.value, -t.number)) if number is None else trials[number]
    out = tmp_path / "val.csv"
    flags = [] if number is None else ["--trial", str(number)]
    assert main(["predict", str(study), "--input", "val", "--out", str(out), "--tta", "3", *flags]) == 0
    rows, labels = csv_rows(out), load_digits().target
    assert len(rows) == 450  # a quarter of the 1797 digits: the trial's own hold-out
    correct = sum(int(r["prediction"]) == labels[int(r["input"])] for r in rows)
    assert correct / len(rows) == trial.value  # exactly: same split, normalisation, batches and views


def test_an_array_and_a_folder_of_the_same_images_predict_the_same_and_match_the_export(
        study: Path, tmp_path: Path) -> None:
    images = load_digits().images[:12].astype(np.uint8)
    np.save(tmp_path / "x.npy", images[:, None])
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image, mode="L").save(folder / f"img{i:02d}.png")
    assert main(["predict", str(study), "--input", str(tmp_path / "x.npy"), "--out", str(tmp_path / "a.csv"),
                 "--tta", "2"]) == 0
    assert main(["predict", str(study), "--input", str(folder), "--out", str(tmp_path / "b.csv"), "--tta", "2"]) == 0
    by_array, by_folder = csv_rows(tmp_path / "a.csv"), csv_rows(tmp_path / "b.csv")
    assert [r["input"] for r in by_folder] == [f"img{i:02d}.png" for i in range(12)]
    assert [r["prediction"] for r in by_array] == [r["prediction"] for r in by_folder]
    module = export_module(tmp_path, study, "load_model_tta")
    exported = module.predict(torch.from_numpy(images[:, None].copy()), tta=2)
    assert [module.class_names()[i] for i in exported.tolist()] == [r["prediction"] for r in by_array]


@pytest.mark.parametrize("flags, expected", [
    (["--trial", "7"], "--trial 7: the study has no trial 7"),
    (["--input", "nowhere"], "--input nowhere: not a folder of images, a .npy file, 'test' or 'val'"),
    (["--input", "test"], "--input test: dataset 'digits' has no test split"),
    (["--out", "missing/p.csv"], "--out: missing/p.csv cannot be written (no such folder)"),
    (["--tta", "0"], "--tta: must be a positive integer"),
])
def test_bad_input_is_one_line_and_exit_2(study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str], flags: list[str], expected: str) -> None:
    monkeypatch.chdir(tmp_path)
    args = {"--input": "val", "--out": "p.csv"}
    for flag, value in zip(flags[::2], flags[1::2]):
        args[flag] = value
    assert main(["predict", str(study), *[item for pair in args.items() for item in pair]]) == 2
    assert expected in one_error_line(capsys)
    assert not (tmp_path / "p.csv").exists()


def test_an_array_of_the_wrong_shape_is_refused(study: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "bad.npy", np.zeros((3, 5, 5), dtype=np.uint8))
    assert main(["predict", str(study), "--input", str(tmp_path / "bad.npy"), "--out", str(tmp_path / "p.csv")]) == 2
    line = one_error_line(capsys)
    assert "bad.npy" in line and "expected (N, 1, 8, 8)" in line


def test_a_trial_without_a_checkpoint_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = {**TINY_STUDY, "n_trials": 1, "output_dir": str(tmp_path / "runs"),
           "train": {"epochs": 1, "batch_size": 64, "checkpoint": False}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["run", str(path)]) == 0
    capsys.readouterr()
    assert main(["predict", str(path), "--input", "val", "--out", str(tmp_path / "p.csv")]) == 2
    assert "trial 0 has no checkpoint" in one_error_line(capsys)


@pytest.mark.parametrize("dataset, image_size", [("mnist", 16), ("cifar10", None)])
def test_the_test_split_of_a_torchvision_set_is_predicted_one_row_per_sample_as_the_export_does(
        write_study: Callable[..., Path], workdir: Path, monkeypatch: pytest.MonkeyPatch, dataset: str,
        image_size: int | None) -> None:
    # The real formats (idx files, pickle batches): 40 or 50 training images, 10 in the test split.
    write_mnist(workdir / "data", n=40) if dataset == "mnist" else write_cifar10(workdir / "data", per_batch=10)
    skip_md5_checks(monkeypatch)
    data = {"dataset": dataset, "root": "data", "val_split": 0.25, "image_size": image_size}
    path = write_study(n_trials=1, data={k: v for k, v in data.items() if v is not None},
                       train={"epochs": 1, "batch_size": 8})
    assert main(["run", str(path)]) == 0
    out = workdir / "test.csv"
    assert main(["predict", str(path), "--input", "test", "--out", str(out)]) == 0
    rows = csv_rows(out)
    test = load_test_split(dataset, workdir / "data", image_size=image_size)
    assert len(test) == 10 and [r["input"] for r in rows] == [str(i) for i in range(10)]
    module = export_module(workdir, path, f"load_model_{dataset}_test")
    assert [r["prediction"] for r in rows] == [module.class_names()[i] for i in module.predict(test.x).tolist()]


def test_with_bootstrap_the_validation_rows_score_the_first_split_and_a_note_says_so(
        write_study: Callable[..., Path], workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(n_trials=1, data={"dataset": "digits", "bootstrap": 3}, train={"epochs": 2, "batch_size": 64})
    assert main(["run", str(path)]) == 0
    trial = optuna.load_study(study_name="tiny", storage="sqlite:///runs/tiny/study.db").best_trial
    splits = trial.user_attrs["split_values"]
    assert len(splits) == 3 and trial.value == pytest.approx(sum(splits) / 3)
    capsys.readouterr()
    out = workdir / "val.csv"
    assert main(["predict", str(path), "--input", "val", "--out", str(out)]) == 0
    rows, labels = csv_rows(out), load_digits().target
    assert sum(int(r["prediction"]) == labels[int(r["input"])] for r in rows) / len(rows) == splits[0]
    note = capsys.readouterr().err.strip().splitlines()
    assert note == ["note: data.bootstrap: 3: the rows are bootstrap split 1's validation samples, whose model the "
                    "checkpoint holds; they score the trial's split_values[0], its value is the mean over the 3 "
                    "bootstrap splits"]


def test_a_folder_named_like_a_keyword_is_named_in_the_message(study: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("test", "val"):
        (tmp_path / name).mkdir()
        Image.fromarray(load_digits().images[0].astype(np.uint8)).save(tmp_path / name / "a.png")
    assert main(["predict", str(study), "--input", "test", "--out", "p.csv"]) == 2
    assert one_error_line(capsys).endswith("(for the folder test/ here, write --input ./test)")
    assert main(["predict", str(study), "--input", "./test", "--out", "p.csv"]) == 0
    assert [r["input"] for r in csv_rows(tmp_path / "p.csv")] == ["a.png"]
    capsys.readouterr()
    assert main(["predict", str(study), "--input", "val", "--out", "p.csv"]) == 0
    assert "note: --input val is the trial's validation split (for the folder val/ here, write --input ./val)" in (
        capsys.readouterr().err)
    assert len(csv_rows(tmp_path / "p.csv")) == 450
