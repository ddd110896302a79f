"""Fine-tuning: weights from the torch hub cache or a file, what fits is loaded, the backbone frozen or slowed."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import optuna
import pytest
import torch
from torch import nn

from hpsearch import pretrained
from hpsearch.cli import main
from hpsearch.config import StudyConfig
from hpsearch.data import DeviceData, load_dataset
from hpsearch.engine import Trainer, TrainSettings, load_checkpoint, save_checkpoint
from hpsearch.errors import ModelError
from hpsearch.models import build_model
from hpsearch.pretrained import apply_pretrained, head_parameters, imagenet_file, load_state, resolve_source

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits() -> DeviceData:
    return DeviceData.place(load_dataset("digits"), CPU)


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def _mlp() -> nn.Module:
    return build_model("mlp", (1, 8, 8), 10, width=16, depth=1)


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_imagenet_is_torchvisions_file_in_the_hub_cache(torch_home: Path) -> None:
    assert imagenet_file() == torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"


def test_imagenet_weights_load_from_the_hub_cache_and_the_stem_and_head_stay_fresh(torch_home: Path) -> None:
    from torchvision.models import resnet18

    torch.manual_seed(1)
    imagenet_file().parent.mkdir(parents=True)
    torch.save(resnet18(weights=None).state_dict(), imagenet_file())  # the real file's names and shapes, random values
    model = build_model("resnet18", (3, 16, 16), 10)
    fresh = copy.deepcopy(model.state_dict())
    source = resolve_source("imagenet", "resnet18")
    record = apply_pretrained(model, load_state(source), "imagenet")
    saved = torch.load(source, weights_only=True)
    assert record["skipped"] == ["conv1.weight", "fc.1.weight", "fc.1.bias"]  # 3x3 stem, Sequential(dropout, fc)
    assert record["loaded"] == len(model.state_dict()) - 3 and record["unused"] == 3  # conv1, fc.weight, fc.bias
    assert torch.equal(model.state_dict()["layer4.1.conv2.weight"], saved["layer4.1.conv2.weight"])
    assert torch.equal(model.state_dict()["fc.1.weight"], fresh["fc.1.weight"])


def test_missing_imagenet_file_names_where_it_goes_and_how_to_get_it(torch_home: Path) -> None:
    with pytest.raises(ModelError) as info:
        resolve_source("imagenet", "resnet18")
    message = str(info.value)
    assert str(imagenet_file()) in message and "resnet18-f37072fd.pth" in message
    assert "download.pytorch.org" in message and "model.download: true" in message


def test_the_file_is_read_once_per_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "w.pt"
    torch.save(_mlp().state_dict(), path)
    reads: list[Any] = []
    real = torch.load
    monkeypatch.setattr(pretrained.torch, "load", lambda *a, **k: reads.append(a) or real(*a, **k))
    assert load_state(path) is load_state(path)
    assert len(reads) == 1


def test_a_file_that_fits_nothing_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"x.weight": torch.zeros(3)}, path)
    with pytest.raises(ModelError, match="no tensor of .* fits the model"):
        apply_pretrained(_mlp(), load_state(path), str(path))


def test_the_head_is_fc_or_the_last_linear() -> None:
    model = build_model("resnet18", (3, 8, 8), 10)
    assert [p.shape for p in head_parameters(model)] == [(10, 512), (10,)]
    assert [p.shape for p in head_parameters(_mlp())] == [(10, 16), (10,)]
    with pytest.raises(ModelError, match="has no head"):
        head_parameters(nn.Sequential(nn.Conv2d(1, 2, 3)))


def _trainer(data: DeviceData, **settings: Any) -> Trainer:
    torch.manual_seed(0)
    values = {"epochs": 3, "lr": 0.05, "batch_size": 64, "optimizer": "sgd", "scheduler": "cosine", **settings}
    return Trainer(_mlp(), data, torch.arange(0, 600), torch.arange(600, 800), TrainSettings(**values), seed=3)


def test_backbone_trains_at_the_scaled_rate_and_not_at_all_while_frozen(digits: DeviceData) -> None:
    trainer = _trainer(digits, freeze_epochs=1, backbone_lr_scale=0.1)
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train_epoch()
    head = {id(p) for p in head_parameters(trainer.model)}
    for name, p in trainer.model.named_parameters():
        assert torch.equal(p, start[name]) != (id(p) in head), name  # the backbone bit for bit, the head moved
    rates = {g["backbone"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert rates[True] == 0.0 and rates[False] > 0
    trainer.train_epoch()
    rates = {g["backbone"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert rates[True] == pytest.approx(0.1 * rates[False])  # the schedule applies to both groups


class BatchNormNet(nn.Module):
    """A conv backbone with BatchNorm and an fc head: what a freeze must hold still, running statistics included."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _bn_trainer(data: DeviceData, **settings: Any) -> Trainer:
    torch.manual_seed(0)
    values = {"epochs": 3, "lr": 0.01, "batch_size": 64, "optimizer": "adamw", "weight_decay": 0.01,
              "scheduler": "cosine", "freeze_epochs": 1, "augment": ("crop",), **settings}
    return Trainer(BatchNormNet(), data, torch.arange(0, 600), torch.arange(600, 800), TrainSettings(**values),
                   seed=3)


def _backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's parameters and BatchNorm buffers (running_mean, running_var, num_batches_tracked)."""
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith("features.")}


def test_a_frozen_epoch_leaves_the_backbone_and_its_batchnorm_statistics_bit_identical(digits: DeviceData) -> None:
    trainer = _bn_trainer(digits)
    start, head = _backbone_state(trainer.model), trainer.model.fc.weight.clone()
    trainer.train_epoch()
    after = _backbone_state(trainer.model)
    assert {k for k in start if "running" in k} == {"features.1.running_mean", "features.1.running_var"}
    for key, value in start.items():
        assert torch.equal(after[key], value), key  # bit for bit: weights, running statistics and the batch count
    assert not torch.equal(trainer.model.fc.weight, head)
    assert all(p.grad is None for p in trainer.model.features.parameters())  # never computed, not just unused
    trainer.validate()
    trainer.train_epoch()  # thawed: everything trains, BatchNorm in training mode again
    thawed = _backbone_state(trainer.model)
    assert [k for k in start if torch.equal(thawed[k], start[k])] == []
    trainer.close()
    assert all(p.requires_grad for p in trainer.model.parameters())  # what the trial's costs and export see


@pytest.mark.parametrize("stop", [1, 2, 3], ids=["inside-the-freeze", "as-it-ends", "after-it"])
def test_a_trial_resumed_inside_or_after_the_freeze_trains_as_uninterrupted(digits: DeviceData, stop: int,
                                                                            tmp_path: Path) -> None:
    straight = _bn_trainer(digits, freeze_epochs=2, epochs=4)
    expected = [straight.run_epoch() for _ in range(4)][stop:]
    first = _bn_trainer(digits, freeze_epochs=2, epochs=4)
    for _ in range(stop):
        first.run_epoch()
    save_checkpoint(tmp_path / "state.pt", first.state_dict())
    resumed = _bn_trainer(digits, freeze_epochs=2, epochs=4)
    torch.manual_seed(7)  # the restore sets every RNG itself
    resumed.load_state_dict(load_checkpoint(tmp_path / "state.pt"))
    got = [resumed.run_epoch() for _ in range(4 - stop)]
    assert [{k: v for k, v in r.items() if k != "epoch_time"} for r in got] == [
        {k: v for k, v in r.items() if k != "epoch_time"} for r in expected]
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


@pytest.mark.gpu
def test_the_freeze_holds_and_ends_under_cuda_graphs() -> None:
    """The graphs captured while frozen skip the backbone; the thaw captures new ones that train it."""
    placed = DeviceData.place(load_dataset("digits"), torch.device("cuda"))
    histories = {}
    for mode in ("on", "off"):
        trainer = _bn_trainer(placed, cuda_graphs=mode, amp="off", freeze_epochs=2, epochs=4)
        start = _backbone_state(trainer.model)
        histories[mode] = [trainer.run_epoch() for _ in range(2)]
        for key, value in _backbone_state(trainer.model).items():
            assert torch.equal(value, start[key]), (mode, key)
        histories[mode] += [trainer.run_epoch() for _ in range(2)]
        thawed = _backbone_state(trainer.model)
        assert all(not torch.equal(thawed[k], start[k]) for k in start), mode
        assert trainer.graphs == ("on" if mode == "on" else "off (train.cuda_graphs: off)")
        trainer.close()
    for on, off in zip(histories["on"], histories["off"]):
        assert on["train_loss"] == pytest.approx(off["train_loss"], rel=1e-3)
        assert on["val_loss"] == pytest.approx(off["val_loss"], rel=1e-3)


def _study(write_study: Callable[..., Path], weights: str, **train: Any) -> Path:
    return write_study(n_trials=1, model={"name": "mlp", "args": {"width": 16, "depth": 1}, "pretrained": weights},
                       train={"epochs": 2, "batch_size": 64, "lr": 0.01, **train}, space={})


def test_a_trial_starts_from_the_file_and_records_what_it_loaded(write_study: Callable[..., Path],
                                                                 workdir: Path) -> None:
    torch.manual_seed(7)
    torch.save(_mlp().state_dict(), workdir / "start.pt")
    assert main(["run", str(_study(write_study, "start.pt", freeze_epochs=5))]) == 0
    trial = optuna.load_study(study_name="tiny", storage="sqlite:///runs/tiny/study.db").best_trial
    assert trial.user_attrs["pretrained"] == {"source": "start.pt", "loaded": 4, "skipped": [], "unused": 0}
    trained = load_checkpoint(trial.user_attrs["checkpoint"])["model"]
    start = torch.load(workdir / "start.pt", weights_only=True)
    assert torch.equal(trained["1.weight"], start["1.weight"]) and torch.equal(trained["1.bias"], start["1.bias"])
    assert not torch.equal(trained["4.weight"], start["4.weight"])  # the head trained


def test_a_missing_weights_file_is_one_line_and_exit_2_before_any_trial(
        write_study: Callable[..., Path], workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(_study(write_study, "nowhere/w.pt"))]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"hpsearch: error: {workdir / 'study.yaml'}: model.pretrained: weights file nowhere/w.pt")
    assert "torch.save" in line
    assert not (workdir / "runs" / "tiny" / "study.db").exists()


def test_missing_imagenet_weights_through_the_cli_name_the_hub_cache(
        write_study: Callable[..., Path], workdir: Path, torch_home: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(n_trials=1, model={"name": "resnet18", "pretrained": "imagenet"},
                       train={"epochs": 1, "batch_size": 64, "lr": 0.01}, space={})
    assert main(["run", str(path)]) == 2
    line = _one_error_line(capsys)
    where = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert line.startswith(f"hpsearch: error: {path}: model.pretrained: imagenet weights not found at {where}")
    assert "download.pytorch.org" in line and "model.download: true" in line
    assert not (workdir / "runs").exists()


def test_the_schema_checks_the_new_keys() -> None:
    base = {"name": "s", "train": {"lr": 0.1, "batch_size": 8}}
    with pytest.raises(Exception, match="imagenet exists for resnet18 only"):
        StudyConfig(**base, model={"name": "mlp", "pretrained": "imagenet"})
    with pytest.raises(Exception, match="download: true fetches pretrained: imagenet only"):
        StudyConfig(**base, model={"name": "mlp", "pretrained": "w.pt", "download": True})
    with pytest.raises(Exception, match="augment is empty"):
        StudyConfig(name="s", train={"lr": 0.1, "batch_size": 8, "tta_val": 2})
    cfg = StudyConfig(name="s", train={"lr": 0.1, "batch_size": 8},
                      space={"freeze_epochs": {"type": "int", "low": 0, "high": 2},
                             "backbone_lr_scale": {"type": "float", "low": 0.01, "high": 1.0, "log": True}})
    assert set(cfg.space) == {"freeze_epochs", "backbone_lr_scale"}
