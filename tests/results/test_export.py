"""Export: trials as CSV / JSON (round trip) and the best trial as params.yaml + weights + loader."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution

import study_fixtures as sf
from hpsearch.cli import main
from hpsearch.config import build_config
from hpsearch.errors import HpsearchError
from hpsearch.results.export import export_best, export_trials
from conftest import python_env
from mounts import tmpfs

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def study(tmp_path: Path) -> optuna.Study:
    return sf.make_study(f"sqlite:///{tmp_path / 'e.db'}", "exp", 14, epochs=5, fail_every=6, running=1,
                         checkpoint_dir=str(tmp_path / "ckpt"))


def _number(text: str) -> float | None:
    return float(text) if text != "" else None


def test_csv_round_trip(study: optuna.Study, tmp_path: Path) -> None:
    out = export_trials(study, tmp_path / "out" / "trials.csv", "csv")
    assert out == tmp_path / "out" / "trials.csv"
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    trials = study.get_trials()
    assert [int(r["number"]) for r in rows] == [t.number for t in trials]
    header = list(rows[0])
    assert header[:6] == ["number", "state", "value", "datetime_start", "datetime_complete", "duration_s"]
    assert {"params_lr", "params_batch_size", "params_optimizer", "params_momentum",
            "user_attrs_seed", "user_attrs_worker", "user_attrs_slot", "user_attrs_stop_reason",
            "user_attrs_epochs_run", "user_attrs_train_time", "user_attrs_checkpoint"} <= set(header)
    assert "user_attrs_history" not in header  # per-epoch data goes to the second file
    for r, t in zip(rows, trials):
        assert r["state"] == t.state.name
        assert _number(r["value"]) == t.value  # floats written exactly
        assert float(r["params_lr"]) == t.params["lr"] and int(r["params_batch_size"]) == t.params["batch_size"]
        assert r["params_momentum"] == ("" if "momentum" not in t.params else repr(t.params["momentum"]))
        assert int(r["user_attrs_seed"]) == t.user_attrs["seed"] and r["user_attrs_worker"] == t.user_attrs["worker"]
        assert r["datetime_start"] == t.datetime_start.isoformat()
        if t.datetime_complete is None:
            assert r["duration_s"] == ""
        else:
            assert float(r["duration_s"]) == pytest.approx((t.datetime_complete - t.datetime_start).total_seconds())
    failed = next(r for r in rows if r["state"] == "FAIL")
    assert failed["user_attrs_error"].startswith("Traceback") and "\n" in failed["user_attrs_error"]

    epochs_file = tmp_path / "out" / "trials_epochs.csv"
    with epochs_file.open(newline="") as f:
        erows = list(csv.DictReader(f))
    assert list(erows[0]) == ["trial", "state", "epoch", "intermediate_value", "train_loss", "train_accuracy",
                              "val_loss", "val_accuracy", "lr", "epoch_time"]
    assert len(erows) == sum(len(t.user_attrs["history"]) for t in trials)
    for t in trials:
        mine = [r for r in erows if int(r["trial"]) == t.number]
        assert [int(r["epoch"]) for r in mine] == [h["epoch"] for h in t.user_attrs["history"]]
        assert [float(r["val_accuracy"]) for r in mine] == [h["val_accuracy"] for h in t.user_attrs["history"]]
        assert [float(r["intermediate_value"]) for r in mine] == [t.intermediate_values[h["epoch"]]
                                                                   for h in t.user_attrs["history"]]


def test_json_round_trip(study: optuna.Study, tmp_path: Path) -> None:
    out = export_trials(study, tmp_path / "trials.json", "JSON")
    records = json.loads(out.read_text())
    trials = study.get_trials()
    assert isinstance(records, list) and len(records) == len(trials)
    for rec, t in zip(records, trials):
        assert rec["number"] == t.number and rec["state"] == t.state.name and rec["value"] == t.value
        assert rec["params"] == t.params
        assert rec["user_attrs"] == t.user_attrs  # history included, exactly
        assert {int(k): v for k, v in rec["intermediate_values"].items()} == t.intermediate_values
        assert rec["datetime_start"] == t.datetime_start.isoformat()
    assert not (tmp_path / "trials_epochs.csv").exists()


def test_json_is_strict_even_for_diverged_trials(tmp_path: Path) -> None:
    study = sf.new_study(f"sqlite:///{tmp_path / 'n.db'}", "nan")
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.COMPLETE, value=0.1, params={"lr": 0.3},
        distributions={"lr": FloatDistribution(1e-4, 0.3, log=True)},
        intermediate_values={1: 0.1, 2: float("nan")},
        user_attrs={"history": [{"epoch": 1, "train_loss": float("inf")}], "stop_reason": "diverged"}))
    text = export_trials(study, tmp_path / "t.json", "json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    rec = json.loads(text)[0]
    assert rec["intermediate_values"] == {"1": 0.1, "2": None}
    assert rec["user_attrs"]["history"] == [{"epoch": 1, "train_loss": None}]
    csv_text = export_trials(study, tmp_path / "t.csv", "csv").with_name("t_epochs.csv").read_text()
    assert "nan" in csv_text and "inf" in csv_text  # CSV keeps them (float("nan") reads them back)


def test_bad_format(study: optuna.Study, tmp_path: Path) -> None:
    with pytest.raises(HpsearchError, match=r"export format 'xlsx' is not supported; use one of: csv, json"):
        export_trials(study, tmp_path / "t.xlsx", "xlsx")


def _space_config(enqueue: list[dict]) -> dict:
    cfg = sf.study_config("exp", 5)
    return {"name": "exp-next", "metric": "val_accuracy", "n_trials": 4, "data": {"dataset": "digits"},
            "model": {"name": "mlp"}, "train": {"epochs": 5}, "space": cfg["space"], "enqueue": enqueue}


def _write_checkpoint(path: Path, dropout: float) -> None:
    torch = pytest.importorskip("torch")
    from hpsearch.engine import save_checkpoint
    from hpsearch.models import build_model

    spec = {"name": "mlp", "input_shape": [1, 8, 8], "num_classes": 10, "dropout": dropout, "kwargs": {}}
    model = build_model(spec["name"], tuple(spec["input_shape"]), 10, dropout=dropout)
    save_checkpoint(path, {"model": model.state_dict(), "optimizer": {}, "epoch": 3, "params": {},
                           "metric": {"name": "val_accuracy", "value": 0.9}, "model_spec": spec,
                           "hpsearch_version": "0.1.0"})
    assert torch.load(path, weights_only=True)["epoch"] == 3


def test_export_best_writes_params_weights_and_a_working_loader(study: optuna.Study, tmp_path: Path) -> None:
    best = study.best_trial
    ckpt = Path(best.user_attrs["checkpoint"])
    _write_checkpoint(ckpt, dropout=float(best.params["dropout"]))

    paths = export_best(study, tmp_path / "best")
    assert set(paths) == {"params", "weights", "loader"}
    assert paths["weights"].read_bytes() == ckpt.read_bytes()

    text = paths["params"].read_text()
    assert f"trial {best.number}" in text and repr(best.value) in text and str(ckpt) in text
    loaded = yaml.safe_load(text)
    assert list(loaded) == ["enqueue"] and loaded["enqueue"] == [best.params]
    cfg = build_config(_space_config(loaded["enqueue"]))  # the study file accepts it as is
    assert cfg.enqueue == [best.params]

    source = paths["loader"].read_text()
    compile(source, str(paths["loader"]), "exec")
    env = python_env()
    run = subprocess.run([sys.executable, str(paths["loader"])], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "loaded weights.pt" in run.stdout and "parameters" in run.stdout
    assert "no input normalisation recorded" in run.stdout  # an older checkpoint still loads
    code = "import numpy; from load_model import predict; predict(numpy.zeros((2, 1, 8, 8)))"
    refused = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                             env=python_env(paths["loader"].parent), cwd=tmp_path, timeout=120)
    assert refused.returncode == 1 and "no record of the input normalisation" in refused.stderr


def test_export_best_missing_checkpoint_file(study: optuna.Study, tmp_path: Path) -> None:
    missing = study.best_trial.user_attrs["checkpoint"]
    with pytest.raises(HpsearchError, match=r"checkpoint of best trial \d+ not found") as e:
        export_best(study, tmp_path / "best")
    assert missing in str(e.value) and "params were written" in str(e.value)
    assert (tmp_path / "best" / "params.yaml").is_file() and not (tmp_path / "best" / "weights.pt").exists()


def test_export_best_without_checkpoint_attr(tmp_path: Path) -> None:
    study = sf.make_study(f"sqlite:///{tmp_path / 'n.db'}", "nockpt", 5)
    paths = export_best(study, tmp_path / "best")
    assert set(paths) == {"params"}
    assert yaml.safe_load(paths["params"].read_text())["enqueue"] == [study.best_trial.params]


def test_export_best_needs_a_completed_trial(tmp_path: Path) -> None:
    study = sf.new_study(f"sqlite:///{tmp_path / 'p.db'}", "x")
    sf.add_trials(study, sf.synthetic_trials(3, prune_every=1))
    with pytest.raises(HpsearchError, match=r"^study 'x' has no completed trial yet; run it first$"):
        export_best(study, tmp_path / "best")
    assert not (tmp_path / "best").exists()


def test_minimize_exports_the_lowest(tmp_path: Path) -> None:
    study = sf.make_study(f"sqlite:///{tmp_path / 'm.db'}", "low", 8, direction="minimize")
    paths = export_best(study, tmp_path / "best")
    lowest = min((t for t in study.get_trials() if t.value is not None and t.state.name == "COMPLETE"),
                 key=lambda t: t.value)
    assert yaml.safe_load(paths["params"].read_text())["enqueue"] == [lowest.params]
    assert "minimize" in paths["params"].read_text()
    assert not math.isnan(lowest.value)


def test_export_and_dashboard_do_not_import_torch() -> None:
    code = ("import sys, hpsearch.results.export, hpsearch.results.dashboard; "
            "bad = [m for m in ('torch', 'torchvision') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                   env=python_env())


PREDICT_VAL = """
import json, sys
import torch
from sklearn.datasets import load_digits
from hpsearch.data import split_folds
from load_model import class_names, predict

digits = load_digits()
y = torch.from_numpy(digits.target)
_, val = split_folds(y, val_split=float(sys.argv[1]), cv_folds=None, seed=int(sys.argv[2]))[0]
raw = digits.images[val.numpy()]  # float64 pixels 0..16, as sklearn gives them
predicted = predict(raw)
print(json.dumps({"correct": int((predicted == y[val]).sum()), "n": len(val), "names": class_names()}))
"""


def test_exported_predict_matches_the_trials_validation_accuracy(write_study, workdir: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from hpsearch.cli import main
    from hpsearch import records, trialsets

    path = write_study(n_trials=2)
    assert main(["run", str(path)]) == 0
    capsys.readouterr()
    assert main(["best", str(path), "--export", "best"]) == 0
    out = capsys.readouterr().out
    assert "predict(x)" in out and "(N, 1, 8, 8)" in out and "raw uint8 pixel values" in out
    assert "(N, 1, 8, 8)" in (workdir / "best" / "load_model.py").read_text()

    best = trialsets.best_trial(optuna.load_study(study_name="tiny", storage="sqlite:///runs/tiny/study.db"))
    assert records.inputs(best)["class_names"] == list("0123456789")
    (workdir / "predict_val.py").write_text(PREDICT_VAL)
    run = subprocess.run([sys.executable, str(workdir / "predict_val.py"), "0.25", "0"], capture_output=True,
                         text=True, check=False, env=python_env(workdir / "best"), cwd=workdir, timeout=120)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["correct"] / result["n"] == best.value  # the same weights, inputs, split: the same accuracy
    assert result["names"] == list("0123456789")


@pytest.fixture
def read_only_folder(workdir: Path) -> Iterator[Path]:
    """A read-only file system at runs/tiny (root writes through permissions; skips where mounting is refused)."""
    with tmpfs(workdir / "runs" / "tiny", "ro,size=1m") as folder:
        yield folder


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_outputs_that_cannot_be_written_are_one_line_naming_the_flag(
        write_study: Callable[..., Path], workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(n_trials=1)
    assert main(["run", str(path)]) == 0
    (workdir / "plain-file").write_text("not a folder")
    capsys.readouterr()
    assert main(["export", str(path), "--out", "plain-file/trials.csv"]) == 2
    line = _one_line_error(capsys)
    assert line.startswith("hpsearch: error: --out: plain-file cannot be written (a file, not a folder)")
    assert line.endswith("choose another --out (a folder you can write)")
    assert main(["best", str(path), "--export", "plain-file/best"]) == 2
    line = _one_line_error(capsys)
    assert line.startswith("hpsearch: error: --export: plain-file/best cannot be written (Not a directory)")
    assert main(["report", str(path), "--out", "plain-file/report.html"]) == 2
    assert _one_line_error(capsys).startswith("hpsearch: error: --out: plain-file cannot be written")
    assert main(["report", str(path), "--png", "plain-file/png"]) == 2
    line = _one_line_error(capsys)
    assert line.startswith("hpsearch: error: --png: plain-file/png cannot be written (Not a directory)")


def test_export_into_a_read_only_study_folder_names_out(write_study: Callable[..., Path], workdir: Path,
                                                       read_only_folder: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(n_trials=1, storage="sqlite:///elsewhere.db")
    with pytest.raises(OSError):
        (read_only_folder / "probe").write_text("")  # the file system refuses root too
    study = optuna.create_study(study_name="tiny", storage="sqlite:///elsewhere.db", direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.5))
    assert main(["export", str(path)]) == 2  # the default: runs/tiny/trials.csv
    line = _one_line_error(capsys)
    assert line.startswith("hpsearch: error: --out: runs/tiny/trials.csv cannot be written (Read-only file system)")
    assert main(["best", str(path), "--export", "runs/tiny/best"]) == 2
    assert "--export: runs/tiny/best cannot be written (Read-only file system)" in _one_line_error(capsys)
