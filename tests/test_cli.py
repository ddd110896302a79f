"""The command line end to end, in process through `main(argv)`, on tiny digits studies."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import optuna
import pytest
import torch

from hpsearch.cli import main
from hpsearch.engine import load_checkpoint
from hpsearch.models import build_model

STUDIES = sorted((Path(__file__).parent.parent / "studies").glob("*.yaml"))
DB = Path("runs/tiny/study.db")


def _load(name: str = "tiny", url: str = "sqlite:///runs/tiny/study.db") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_run_finishes_and_optuna_reads_it(write_study: Callable[..., Path]) -> None:
    path = write_study()
    assert main(["run", str(path)]) == 0
    study = _load()
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 4
    best = study.best_trial
    history = best.user_attrs["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert set(history[0]) >= {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_time"}
    assert sorted(best.intermediate_values) == [1, 2]
    assert best.value == max(h["val_accuracy"] for h in history)
    for key in ("seed", "device", "hpsearch_version", "worker", "checkpoint", "best_epoch"):
        assert key in best.user_attrs
    assert best.user_attrs["device"] == "cpu"
    assert study.user_attrs["metric"] == "val_accuracy"


def test_checkpoint_loads_back_into_the_model(write_study: Callable[..., Path]) -> None:
    assert main(["run", str(write_study())]) == 0
    best = _load().best_trial
    ckpt = load_checkpoint(best.user_attrs["checkpoint"])
    spec = ckpt["model_spec"]
    model = build_model(spec["name"], tuple(spec["input_shape"]), spec["num_classes"], dropout=spec["dropout"],
                        **spec["kwargs"])
    model.load_state_dict(ckpt["model"])
    assert ckpt["epoch"] == best.user_attrs["best_epoch"]
    assert ckpt["params"] == best.params
    assert ckpt["metric"]["value"] == pytest.approx(best.value)
    assert "state" in ckpt["optimizer"]
    for trial in _load().trials:  # every best checkpoint carries what a prediction needs
        inputs = load_checkpoint(trial.user_attrs["checkpoint"])["inputs"]
        assert inputs["input_shape"] == [1, 8, 8] and inputs["dtype"] == "uint8" and inputs["num_classes"] == 10
        assert inputs["class_names"] == list("0123456789") and len(inputs["mean"]) == len(inputs["std"]) == 1
        assert 4.0 < inputs["mean"][0] < 5.5 and inputs == trial.user_attrs["inputs"]


def test_rerun_continues_to_the_total(write_study: Callable[..., Path]) -> None:
    path = write_study(n_trials=2)
    assert main(["run", str(path)]) == 0
    assert main(["run", str(path)]) == 0
    assert len(_load().trials) == 2
    assert main(["run", str(path), "--n-trials", "3"]) == 0
    assert [t.number for t in _load().trials] == [0, 1, 2]


def test_pruning_is_observed(write_study: Callable[..., Path]) -> None:
    path = write_study(n_trials=2, pruner={"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
                       train={"epochs": 3, "batch_size": 64, "optimizer": "sgd"},
                       enqueue=[{"lr": 1.0e-2}, {"lr": 1.0e-3, "dropout": 0.3}],
                       space={"lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
                              "dropout": {"type": "float", "low": 0.0, "high": 0.3}})
    assert main(["run", str(path)]) == 0
    pruned = _load().trials[1]
    assert pruned.state == optuna.trial.TrialState.PRUNED
    assert pruned.user_attrs["stop_reason"] == "pruned"
    assert pruned.user_attrs["epochs_run"] < 3


def test_kfold_reports_the_mean_over_folds(write_study: Callable[..., Path]) -> None:
    path = write_study(n_trials=1, data={"dataset": "digits", "cv_folds": 3})
    assert main(["run", str(path)]) == 0
    trial = _load().trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.value == max(h["val_accuracy"] for h in trial.user_attrs["history"])
    assert trial.value == sum(trial.user_attrs["split_values"]) / 3  # each fold's value at the best epoch


def test_bootstrap_reports_the_mean_over_its_out_of_bag_splits(write_study: Callable[..., Path]) -> None:
    path = write_study(n_trials=1, data={"dataset": "digits", "bootstrap": 2})
    assert main(["run", str(path)]) == 0
    trial = _load().trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE
    history = trial.user_attrs["history"]
    assert trial.value == max(h["val_accuracy"] for h in history)
    splits = trial.user_attrs["split_values"]  # each split's val_accuracy at the best epoch
    assert len(splits) == 2 and all(0.0 <= v <= 1.0 for v in splits)
    assert trial.value == sum(splits) / len(splits)
    best = load_checkpoint(trial.user_attrs["checkpoint"], map_location="cpu")
    assert len(best["fold_models"]) == 2  # one model per split, trained side by side
    assert not all(torch.equal(a, b) for a, b in zip(best["fold_models"][0].values(), best["fold_models"][1].values()))


def test_early_stopping_stops_before_the_epoch_budget(write_study: Callable[..., Path]) -> None:
    path = write_study(n_trials=1, metric="val_loss", enqueue=[{"lr": 1.0e-2, "dropout": 0.0}],
                       train={"epochs": 40, "batch_size": 64, "early_stopping": {"patience": 1, "min_delta": 0.05}})
    assert main(["run", str(path)]) == 0
    trial = _load().trials[0]
    assert trial.user_attrs["stop_reason"] == "early_stopped"
    assert trial.user_attrs["epochs_run"] < 40


def test_diverging_loss_is_pruned_not_crashed(write_study: Callable[..., Path]) -> None:
    path = write_study(n_trials=1, train={"epochs": 3, "batch_size": 64, "optimizer": "sgd", "momentum": 0.99},
                       space={"lr": {"type": "float", "low": 1.0e6, "high": 1.0e7, "log": True}})
    assert main(["run", str(path)]) == 0
    trial = _load().trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.user_attrs["stop_reason"] == "diverged"
    assert not all(math.isfinite(h["train_loss"]) for h in trial.user_attrs["history"])


def test_same_seed_reproduces_a_trial_exactly(write_study: Callable[..., Path]) -> None:
    first = write_study("a.yaml", name="rep-a", n_trials=1)
    second = write_study("b.yaml", name="rep-b", n_trials=1)
    assert main(["run", str(first)]) == 0 and main(["run", str(second)]) == 0
    a = _load("rep-a", "sqlite:///runs/rep-a/study.db").trials[0]
    b = _load("rep-b", "sqlite:///runs/rep-b/study.db").trials[0]
    strip = lambda t: [{k: v for k, v in h.items() if k != "epoch_time"} for h in t.user_attrs["history"]]  # noqa: E731
    assert a.params == b.params and a.user_attrs["seed"] == b.user_attrs["seed"]
    assert strip(a) == strip(b)


def test_failing_user_code_stops_the_study_after_repeats(write_study: Callable[..., Path], workdir: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "broken_model.py").write_text(
        "import torch\n"
        "class Broken(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(64, 10)\n"
        "    def forward(self, x):\n"
        "        if self.training:\n"
        "            raise RuntimeError('boom in user code')\n"
        "        return self.fc(x.flatten(1))\n"
        "def build(input_shape, num_classes, dropout=0.0):\n"
        "    return Broken()\n")
    monkeypatch.syspath_prepend(str(workdir))
    path = write_study(n_trials=10, model={"name": "broken_model:build"})
    assert main(["run", str(path)]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("hpsearch: error: the last 3 trials all failed with RuntimeError: boom in user code")
    failed = _load().get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert len(failed) == 3
    assert "RuntimeError: boom in user code" in failed[0].user_attrs["error"]


def test_a_trial_failing_mid_training_leaves_its_history_and_best_weights_as_artifacts(
        write_study: Callable[..., Path], workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (workdir / "late_break.py").write_text(
        "import torch\n"
        "class LateBreak(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(64, 10)\n"
        "        self.epochs = 0\n"
        "    def train(self, mode=True):\n"
        "        self.epochs += bool(mode)\n"
        "        return super().train(mode)\n"
        "    def forward(self, x):\n"
        "        if self.training and self.epochs > 1:\n"
        "            raise RuntimeError('breaks in its second epoch')\n"
        "        return self.fc(x.flatten(1))\n"
        "def build(input_shape, num_classes, dropout=0.0):\n"
        "    return LateBreak()\n")
    monkeypatch.syspath_prepend(str(workdir))
    path = write_study(n_trials=1, model={"name": "late_break:build"}, train={"epochs": 3, "batch_size": 64})
    assert main(["run", str(path)]) == 1  # every trial fails the same way: the study stops after three
    study = _load()
    failed = study.trials[0]
    assert failed.state == optuna.trial.TrialState.FAIL and failed.user_attrs["stop_reason"] == "error"
    store = optuna.artifacts.FileSystemArtifactStore(workdir / "runs/tiny/artifacts")
    metas = optuna.artifacts.get_all_artifact_meta(failed, storage=study._storage)
    names = {meta.filename: meta.artifact_id for meta in metas}
    assert set(names) == {"history.json", "trial_00000.pt"}
    with store.open_reader(names["history.json"]) as f:
        assert [row["epoch"] for row in json.load(f)] == [1]


@pytest.mark.parametrize("path", STUDIES, ids=[p.name for p in STUDIES])
def test_validate_accepts_every_shipped_study(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(path)]) == 0
    assert f"{path}: valid" in capsys.readouterr().out


def test_status_and_best(write_study: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(n_trials=2)
    assert main(["run", str(path)]) == 0
    capsys.readouterr()
    assert main(["status", str(path)]) == 0
    assert "finished 2 of 2 trials" in capsys.readouterr().out
    assert main(["best", str(path), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["number"] == _load().best_trial.number
    assert Path(record["checkpoint"]).is_file()


# ------------------------------------------------------------------ bad input: exit 2, one line, nothing written

def test_bad_file_exits_2_and_writes_nothing(write_study: Callable[..., Path],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(space={"lr": {"type": "float", "low": 0.1, "high": 0.01}})
    assert main(["run", str(path)]) == 2
    line = _one_error_line(capsys)
    assert str(path) in line and "space.lr" in line and "swap them" in line
    assert not DB.exists()


def test_an_sqlite_file_whose_folder_cannot_exist_names_the_folder_not_a_server(
        write_study: Callable[..., Path], workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "plain-file").write_text("not a folder")
    path = write_study(storage="sqlite:///plain-file/study.db", n_trials=1)
    assert main(["run", str(path)]) == 2
    line = _one_error_line(capsys)
    assert "storage: cannot open 'sqlite:///plain-file/study.db'" in line
    assert "check that the file's folder exists (or can be created) and is writable" in line
    assert "server" not in line


def test_unreachable_database_exits_2_without_echoing_password(write_study: Callable[..., Path],
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(storage="postgresql+psycopg://user:s3cr3t@127.0.0.1:1/nowhere")
    assert main(["run", str(path)]) == 2
    line = _one_error_line(capsys)
    assert "storage" in line and "s3cr3t" not in line and "***" in line


def test_missing_dataset_offline_exits_2(write_study: Callable[..., Path], workdir: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(data={"dataset": "cifar10", "root": str(workdir / "nodata"), "download": False})
    assert main(["run", str(path)]) == 2
    line = _one_error_line(capsys)
    assert "cifar10" in line and "nodata" in line
    assert not DB.exists()


def test_bad_flag_exits_2(write_study: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(write_study()), "--n-trials", "0"]) == 2
    assert "--n-trials" in _one_error_line(capsys)


def test_unknown_model_callable_exits_2_before_any_trial(write_study: Callable[..., Path],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(write_study(model={"name": "no_such_pkg.mod:factory"}))]) == 2
    assert "no_such_pkg" in _one_error_line(capsys)
    assert not DB.exists()


def test_status_of_unknown_study_exits_2(write_study: Callable[..., Path],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", str(write_study())]) == 2
    assert "no study 'tiny'" in _one_error_line(capsys)


def test_other_direction_in_same_storage_is_refused(write_study: Callable[..., Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(write_study(n_trials=1))]) == 0
    capsys.readouterr()
    assert main(["run", str(write_study(n_trials=2, metric="val_loss"))]) == 2
    assert "direction" in _one_error_line(capsys)
    assert len(_load().trials) == 1


def test_asking_for_missing_gpus_names_the_visible_ones(write_study: Callable[..., Path],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(device="auto")
    assert main(["run", str(path), "--gpus", "0,1"]) == 2
    line = _one_error_line(capsys)
    assert "--gpus" in line and "visible" in line
    assert not DB.exists()


def test_bad_data_stops_a_multi_worker_run_before_the_study_is_touched(write_study: Callable[..., Path],
                                                                      workdir: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(data={"dataset": "mnist", "root": str(workdir / "none")})
    assert main(["run", str(path), "--workers", "2"]) == 2
    assert "mnist" in _one_error_line(capsys)
    assert not DB.exists()


def test_report_export_and_best_export_verbs(write_study: Callable[..., Path], workdir: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(n_trials=2)
    assert main(["run", str(path)]) == 0
    assert main(["report", str(path), "--out", "r.html"]) == 0
    html = (workdir / "r.html").read_text()
    assert "tiny" in html and "plotly" in html.lower()
    assert main(["export", str(path), "--format", "json"]) == 0
    exported = json.loads((workdir / "runs/tiny/trials.json").read_text())
    assert len(exported) == 2
    capsys.readouterr()
    assert main(["best", str(path), "--json", "--export", "best"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert set(record["exported"]) == {"params", "weights", "loader"}
    assert "enqueue:" in (workdir / "best/params.yaml").read_text()
    assert (workdir / "best/weights.pt").stat().st_size > 0


@pytest.mark.parametrize("files", [1, 2])
def test_a_storage_damaged_while_report_reads_it_is_one_line(write_study: Callable[..., Path], workdir: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str], files: int) -> None:
    """The studies open, then the database fails as the report reads their trials: one line, exit 2, no file."""
    import os

    from hpsearch.results import html

    first = write_study("a.yaml", n_trials=1, name="a", storage="sqlite:///one.db")
    second = write_study("b.yaml", n_trials=1, name="b", storage=f"sqlite:///{'one' if files == 1 else 'two'}.db")
    assert main(["run", str(first)]) == 0 and main(["run", str(second)]) == 0
    write = html.write_report

    def damage_then_write(*args, **kwargs):  # garbage over the schema pages of every file, as a failing disk would
        for db in workdir.glob("*.db*"):
            with open(db, "r+b") as f:
                f.seek(0)
                f.write(os.urandom(8 * 1024))
        return write(*args, **kwargs)

    monkeypatch.setattr(html, "write_report", damage_then_write)
    capsys.readouterr()
    assert main(["report", str(first), str(second), "--out", "r.html"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    if files == 1:
        assert err[0].startswith(f"hpsearch: error: {first}: storage: 'sqlite:///one.db' is damaged (")
    else:
        assert err[0].startswith(f"hpsearch: error: {first}, {second}: storage: reading one of 'sqlite:///one.db', "
                                 f"'sqlite:///two.db' failed (")
        assert err[0].endswith(f"check each (`hpsearch status {first}`, `hpsearch status {second}`), then rerun")
    assert not (workdir / "r.html").exists()


FACTORIES = ("import torch\n"
             "def fixed(input_shape, num_classes, dropout=0.0, width=8):\n"
             "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, width), torch.nn.Linear(width, num_classes))\n"
             "def open_ended(input_shape, num_classes, dropout=0.0, **kwargs):\n"
             "    return fixed(input_shape, num_classes, dropout, kwargs.get('width', 8))\n")
MODEL_ARG_MISMATCHES = [
    ("searched", {"args": {}}, {"depth": {"type": "int", "low": 1, "high": 3}}, "space.depth", "depth"),
    ("fixed", {"args": {"depth": 2}}, {}, "model.args.depth", "depth"),
]


@pytest.mark.parametrize("model, space, where, name", [m[1:] for m in MODEL_ARG_MISMATCHES],
                         ids=[m[0] for m in MODEL_ARG_MISMATCHES])
def test_model_argument_the_factory_does_not_take_exits_2_before_the_study(
        write_study: Callable[..., Path], workdir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], model: dict, space: dict, where: str, name: str) -> None:
    (workdir / "factories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(workdir))
    lr = {"lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True}}
    path = write_study(model={"name": "factories:fixed", **model}, space={**lr, **space})
    assert main(["run", str(path)]) == 2
    line = _one_error_line(capsys)
    assert line == (f"hpsearch: error: {path}: {where}: model factory 'factories:fixed' takes no argument '{name}' "
                    f"(it accepts: width); add it to the factory's parameters or remove {where}")
    assert not DB.exists()


def test_factory_with_kwargs_takes_any_searched_argument(write_study: Callable[..., Path], workdir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    (workdir / "factories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(workdir))
    path = write_study(n_trials=1, model={"name": "factories:open_ended", "args": {"depth": 2}},
                       space={"lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
                              "width": {"type": "categorical", "choices": [4, 8]}})
    assert main(["run", str(path)]) == 0
    assert set(_load().trials[0].params) == {"lr", "width"}


MISFIT_MODELS = (
    "import torch\n"
    "def first_layer_too_small(input_shape, num_classes, dropout=0.0):\n"
    "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(5, num_classes))\n"
    "def wrong_outputs(input_shape, num_classes, dropout=0.0):\n"
    "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))\n"
)


@pytest.mark.parametrize(("factory", "says"), [
    ("first_layer_too_small", "fails on a batch of the data, inputs of shape (2, 1, 8, 8) (RuntimeError: mat1 and mat2"),
    ("wrong_outputs", "returns (2, 3) for 2 inputs; it must return one score per class, (2, 10)"),
])
def test_a_model_that_does_not_fit_the_data_is_refused_before_any_trial(write_study: Callable[..., Path],
                                                                        workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture[str],
                                                                        factory: str, says: str) -> None:
    (workdir / "misfit_models.py").write_text(MISFIT_MODELS)
    monkeypatch.syspath_prepend(str(workdir))
    path = write_study(model={"name": f"misfit_models:{factory}"})
    assert main(["run", str(path)]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"hpsearch: error: {path}: model: misfit_models:{factory} ") and says in line, line
    assert not DB.exists()  # refused before the study was touched: no failed trials at all
