"""The train/validate core: learning, schedules, optimizer groups, accumulation, resume, stopping."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from hpsearch.data import ArrayData, DeviceData, load_dataset, split_folds
from hpsearch.engine import (
    EarlyStopping,
    Trainer,
    TrainSettings,
    amp_dtype,
    build_optimizer,
    channels_last_for,
    class_weights_for,
    evaluate,
    grad_scaler_for,
    load_checkpoint,
    lr_at,
    save_checkpoint,
    seed_everything,
    train_one_epoch,
)
from hpsearch.errors import ConfigError
from hpsearch.models import build_model
from hpsearch import engine, steps
from hpsearch.steps import EvalStep, GraphPlan, TrainStep, plan_graphs
from torch_fixtures import DEVICES

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits() -> ArrayData:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def placed(digits: ArrayData) -> DeviceData:
    return DeviceData.place(digits, CPU)


@pytest.fixture(scope="module")
def split(digits: ArrayData) -> tuple[torch.Tensor, torch.Tensor]:
    return split_folds(digits.y, val_split=0.2, cv_folds=None, seed=0)[0]


def _trainer(placed: DeviceData, split, seed: int = 0, model: str = "mlp", dropout: float = 0.0, **settings) -> Trainer:
    seed_everything(seed)
    net = build_model(model, placed.input_shape, placed.num_classes, dropout=dropout, **({"width": 64} if model == "mlp" else {}))
    defaults = {"epochs": 10, "lr": 3e-3, "batch_size": 64}
    return Trainer(net, placed, split[0], split[1], TrainSettings(**{**defaults, **settings}), seed=seed)


def _without_time(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k != "epoch_time"} for row in history]


def test_mlp_learns_digits(placed: DeviceData, split) -> None:
    trainer = _trainer(placed, split, weight_decay=1e-4, scheduler="cosine")
    history = [trainer.run_epoch() for _ in range(10)]
    assert [row["epoch"] for row in history] == list(range(1, 11))
    assert history[-1]["train_loss"] < history[0]["train_loss"] / 3
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert history[-1]["val_accuracy"] >= 0.9
    row = history[-1]
    assert set(row) == {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_time"}
    assert all(type(v) in (int, float) for v in row.values())
    assert row["lr"] < 1e-4  # cosine has annealed to ~0 by the last epoch


def test_same_seed_same_history(placed: DeviceData, split) -> None:
    settings = {"epochs": 3, "augment": ("crop", "hflip"), "dropout": 0.2}
    a = [_trainer(placed, split, seed=5, **settings).run_epoch() for _ in range(1)]
    runs = []
    for _ in range(2):
        trainer = _trainer(placed, split, seed=5, **settings)
        runs.append([trainer.run_epoch() for _ in range(3)])
    assert _without_time(runs[0]) == _without_time(runs[1])
    assert _without_time(a) == _without_time(runs[0][:1])
    other = _trainer(placed, split, seed=6, **settings)
    assert _without_time([other.run_epoch()]) != _without_time(runs[0][:1])


def test_one_host_sync_per_epoch(placed: DeviceData, split, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = _trainer(placed, split, epochs=1)
    calls = []
    real_tolist, real_item = torch.Tensor.tolist, torch.Tensor.item

    def no_item(self: torch.Tensor) -> float:
        # torch.optim reads its own step counters, which live on the host by design (no sync).
        if f"torch{os.sep}optim{os.sep}" not in sys._getframe(1).f_code.co_filename:
            raise AssertionError(".item() inside the epoch loop")
        return real_item(self)

    def counted_tolist(self: torch.Tensor):
        calls.append(self.shape)
        return real_tolist(self)

    monkeypatch.setattr(torch.Tensor, "item", no_item)
    monkeypatch.setattr(torch.Tensor, "tolist", counted_tolist)
    trainer.train_epoch()
    assert len(calls) == 1
    trainer.validate()
    assert len(calls) == 2


# ---------------------------------------------------------------- schedules


def test_lr_constant_and_warmup() -> None:
    s = TrainSettings(epochs=5, lr=0.1, batch_size=8)
    assert {lr_at(i, 50, s, 10) for i in range(50)} == {0.1}
    w = TrainSettings(epochs=5, lr=0.1, batch_size=8, scheduler="cosine", warmup_epochs=1)
    warm = [lr_at(i, 50, w, 10) for i in range(10)]
    assert warm[0] == pytest.approx(0.01) and warm[-1] == pytest.approx(0.1)
    assert all(a < b for a, b in zip(warm, warm[1:]))


def test_cosine_is_monotone_to_zero() -> None:
    s = TrainSettings(epochs=4, lr=0.2, batch_size=8, scheduler="cosine")
    lrs = [lr_at(i, 40, s, 10) for i in range(40)]
    assert lrs[0] == pytest.approx(0.2)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert lrs[20] == pytest.approx(0.1)
    assert 0 < lrs[-1] < 0.002
    assert lr_at(17, 40, s, 10) == lr_at(17, 40, s, 10)  # pure


def test_step_and_exponential() -> None:
    s = TrainSettings(epochs=6, lr=1.0, batch_size=8, scheduler="step", step_size=2, gamma=0.5)
    assert [lr_at(i * 10, 60, s, 10) for i in range(6)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    assert lr_at(19, 60, s, 10) == 1.0 and lr_at(20, 60, s, 10) == 0.5
    assert TrainSettings(epochs=1, lr=1.0, batch_size=8, scheduler="step").decay_factor == 0.1
    e = TrainSettings(epochs=6, lr=1.0, batch_size=8, scheduler="exponential")
    assert e.decay_factor == 0.9
    assert lr_at(10, 60, e, 10) == pytest.approx(0.9) and lr_at(20, 60, e, 10) == pytest.approx(0.81)
    e2 = TrainSettings(epochs=6, lr=1.0, batch_size=8, scheduler="exponential", gamma=0.5)
    assert lr_at(10, 60, e2, 10) == pytest.approx(0.5)


def test_onecycle_peaks_at_thirty_percent() -> None:
    s = TrainSettings(epochs=10, lr=0.4, batch_size=8, scheduler="onecycle")
    lrs = [lr_at(i, 100, s, 10) for i in range(100)]
    peak = max(range(100), key=lrs.__getitem__)
    assert peak == 30 and lrs[peak] == pytest.approx(0.4)
    assert lrs[0] == pytest.approx(0.4 / 25)
    assert all(a < b for a, b in zip(lrs[:30], lrs[1:31]))
    assert all(a >= b for a, b in zip(lrs[30:], lrs[31:]))
    assert lrs[-1] == pytest.approx(0.4 / 25 / 1e4)


def test_settings_validation() -> None:
    with pytest.raises(ConfigError, match="train.optimizer = 'rmsprop'"):
        TrainSettings(epochs=1, lr=0.1, batch_size=8, optimizer="rmsprop")
    with pytest.raises(ConfigError, match="train.amp = 'fp8'"):  # checked once, where amp_dtype's mode comes from
        TrainSettings(epochs=1, lr=0.1, batch_size=8, amp="fp8")


def test_amp_is_off_on_cpu() -> None:
    for mode in ("auto", "bf16", "fp16", "off"):
        assert amp_dtype(CPU, mode) is None


# ---------------------------------------------------------------- optimizer, loss, accumulation


def _bn_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_weight_decay_only_on_weights(optimizer: str) -> None:
    model = _bn_net()
    opt = build_optimizer(model, TrainSettings(epochs=1, lr=0.1, batch_size=8, optimizer=optimizer, weight_decay=0.01))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[4].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias), id(model[4].bias)}
    if optimizer == "adamw":  # a zero-gradient step shrinks weights only
        before = copy.deepcopy(model)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        assert torch.allclose(model[0].weight, before[0].weight * (1 - 0.1 * 0.01))
        assert torch.equal(model[0].bias, before[0].bias) and torch.equal(model[1].weight, before[1].weight)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_accumulation_matches_double_batch(optimizer: str) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(64, 5, dtype=torch.float64), torch.randint(0, 3, (64,))
    base = nn.Linear(5, 3).double()
    settings = TrainSettings(epochs=1, lr=0.05, batch_size=8, optimizer=optimizer, momentum=0.9, weight_decay=0.01)
    small = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 64, 8)]
    big = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    results = []
    for batches, accum in ((small, 2), (big, 1)):
        model = copy.deepcopy(base)
        step = _train_step(model, settings, accum)
        out = train_one_epoch(step, batches, [0.05 / (1 + s) for s in range(4)])
        assert out["steps"] == 4 and step.optimizer.param_groups[0]["lr"] == pytest.approx(0.05 / 4)
        results.append((model, out))
    (a, out_a), (b, out_b) = results
    assert torch.allclose(a.weight, b.weight, atol=1e-12) and torch.allclose(a.bias, b.bias, atol=1e-12)
    assert out_a["loss"] == pytest.approx(out_b["loss"]) and out_a["accuracy"] == out_b["accuracy"]


def test_trailing_partial_accumulation_still_steps() -> None:
    model = nn.Linear(2, 2)
    step = _train_step(model, TrainSettings(epochs=1, lr=0.1, batch_size=4, optimizer="sgd"), accum=2)
    batches = [(torch.randn(4, 2), torch.randint(0, 2, (4,))) for _ in range(5)]
    out = train_one_epoch(step, batches, [0.1, 0.2, 0.3])
    assert out["steps"] == 3 and step.optimizer.param_groups[0]["lr"] == 0.3  # the third step ran at the third rate
    assert all(p.grad is None for p in model.parameters())


def _train_step(model: nn.Module, settings: TrainSettings, accum: int,
                static: tuple[torch.Tensor, torch.Tensor] | None = None) -> TrainStep:
    lr = torch.full((1,), settings.lr, dtype=torch.float32)
    optimizer = build_optimizer(model, settings, lr=lr if static is not None else None)
    return TrainStep(model, optimizer, loss_fn=nn.CrossEntropyLoss(), amp=None, scaler=None, lr=lr,
                     steps_per_epoch=64, accum_steps=accum, static=static)


def test_class_weights(placed: DeviceData, split) -> None:
    assert class_weights_for(torch.tensor([0, 0, 0, 1]), 3) == pytest.approx((4 / 9, 4 / 3, 0.0))
    digits_w = class_weights_for(placed.y[split[0]], 10)
    assert min(digits_w) > 0.9 and max(digits_w) < 1.1
    trainer = _trainer(placed, split, class_weights=(1.0,) * 9 + (5.0,), label_smoothing=0.1, epochs=1)
    assert trainer.loss_fn.weight.tolist() == [1.0] * 9 + [5.0]
    assert trainer.loss_fn.label_smoothing == 0.1
    assert trainer.eval_loss_fn.weight is None and trainer.eval_loss_fn.label_smoothing == 0.0
    logits, y = torch.randn(6, 10), torch.tensor([9, 9, 1, 2, 3, 4])
    plain = nn.functional.cross_entropy(logits, y, weight=trainer.loss_fn.weight)
    assert trainer.loss_fn.__class__(weight=trainer.loss_fn.weight)(logits, y) == pytest.approx(plain.item())
    row = trainer.run_epoch()
    assert math.isfinite(row["train_loss"]) and math.isfinite(row["val_loss"])


def test_fast_path_agrees_with_plain_loop(placed: DeviceData, split) -> None:
    """The resident-batch engine computes what a textbook fp32 loop computes on the same batches."""
    trainer = _trainer(placed, split, model="seednet", optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, batch_size=128, epochs=2)
    plain = copy.deepcopy(trainer.model)
    opt = torch.optim.SGD(plain.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    gen = torch.Generator().manual_seed(0)  # the Trainer's generator, replayed
    batches = list(placed.batches(split[0], 128, shuffle=True, generator=gen, drop_last=True))
    engine = trainer.train_epoch()
    correct = 0
    plain.train()
    for x, y in batches:
        opt.zero_grad()
        out = plain(x)
        nn.functional.cross_entropy(out, y).backward()
        opt.step()
        correct += int((out.argmax(1) == y).sum())
    assert engine["accuracy"] == correct / (len(batches) * 128)
    for p, q in zip(trainer.model.parameters(), plain.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)
    val = trainer.validate()
    plain.eval()
    with torch.no_grad():
        x = (placed.x[split[1]].float() - placed.x.float().mean()) / placed.x.float().std(unbiased=False)
        expected = (plain(x).argmax(1) == placed.y[split[1]]).float().mean().item()
    assert val["accuracy"] == pytest.approx(expected, abs=1 / len(split[1]))


def test_streaming_trainer_matches_resident(digits: ArrayData, placed: DeviceData, split) -> None:
    streamed = DeviceData.place(digits, CPU, force_streaming=True)
    a = _trainer(placed, split, augment=("crop",), epochs=2)
    b = _trainer(streamed, split, augment=("crop",), epochs=2)
    assert _without_time([a.run_epoch(), a.run_epoch()]) == _without_time([b.run_epoch(), b.run_epoch()])


# ---------------------------------------------------------------- checkpoints, resume, early stopping


def test_checkpoint_round_trip_and_exact_resume(placed: DeviceData, split, tmp_path: Path) -> None:
    settings = {"epochs": 4, "dropout": 0.3, "augment": ("crop", "hflip"), "optimizer": "sgd", "scheduler": "cosine", "accum_steps": 2}
    original = _trainer(placed, split, seed=1, **settings)
    original.run_epoch()
    original.run_epoch()
    path = tmp_path / "deep" / "er" / "trial.pt"
    save_checkpoint(path, {"trainer": original.state_dict(), "params": {"lr": 3e-3, "tags": ["a", 1]}})
    assert [p.name for p in path.parent.iterdir()] == ["trial.pt"]  # no temporary file left behind
    snapshot = copy.deepcopy(original.model).eval()
    nxt_a = original.run_epoch()  # dropout uses the global RNG: run it before the restore resets it

    restored = _trainer(placed, split, seed=99, **settings)  # different init, different generator
    payload = load_checkpoint(path)
    assert payload["params"] == {"lr": 3e-3, "tags": ["a", 1]}
    restored.load_state_dict(payload["trainer"])
    assert restored.epoch == 2
    probe = placed.x[:32].float()
    restored.model.eval()
    assert torch.equal(snapshot(probe), restored.model(probe))

    nxt_b = restored.run_epoch()
    assert nxt_a["epoch"] == nxt_b["epoch"] == 3
    assert _without_time([nxt_a]) == _without_time([nxt_b])
    for p, q in zip(original.model.parameters(), restored.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_early_stopping_max_min_delta_and_nan() -> None:
    stop = EarlyStopping(patience=2)
    assert [stop.step(v) for v in (0.5, 0.6, 0.6, 0.59)] == [False, False, False, True]
    assert stop.best == 0.6 and stop.best_epoch == 2 and stop.bad_epochs == 2
    delta = EarlyStopping(patience=2, min_delta=0.01)
    assert [delta.step(v) for v in (0.5, 0.505, 0.52, 0.525, 0.529)] == [False, False, False, False, True]
    low = EarlyStopping(patience=1, mode="min")
    assert [low.step(v) for v in (1.0, 0.9)] == [False, False]
    assert low.step(float("nan")) is True
    restored = EarlyStopping(patience=2)
    restored.load_state_dict(stop.state_dict())
    assert restored.best == 0.6 and restored.bad_epochs == 2
    with pytest.raises(ConfigError):
        EarlyStopping(patience=0)


def test_evaluate_empty_is_nan() -> None:
    out = evaluate(EvalStep(nn.Linear(2, 2), loss_fn=nn.CrossEntropyLoss(), amp=None, device=CPU), [])
    assert math.isnan(out["loss"]) and math.isnan(out["accuracy"])


# ---------------------------------------------------------------- device switches (CPU and CUDA)


@pytest.mark.parametrize("device", DEVICES)
def test_device_switches(digits: ArrayData, split, device: str) -> None:
    """Each CUDA-only switch is on with CUDA and off on the CPU; everything else is the same path."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    placed = DeviceData.place(digits, dev)
    assert placed.resident and placed.x.dtype == torch.uint8 and placed.x.device.type == dev.type
    conv = _trainer(placed, split, model="seednet", epochs=1)
    assert conv.use_channels_last is cuda and channels_last_for(conv.model, dev) is cuda
    assert conv.model[3].weight.is_contiguous(memory_format=torch.channels_last) is cuda  # 32 -> 32 channels
    assert conv.amp == amp_dtype(dev, "auto") and (conv.amp is not None) is cuda
    assert (conv.scaler is not None) is (conv.amp == torch.float16)
    assert conv.optimizer.defaults["fused"] is True  # on every device
    assert torch.backends.cudnn.benchmark is True or not cuda
    assert _trainer(placed, split, model="mlp", epochs=1).use_channels_last is False
    fp16 = _trainer(placed, split, amp="fp16", epochs=1)
    assert fp16.amp == (torch.float16 if cuda else None)
    assert isinstance(fp16.scaler, torch.amp.GradScaler) is cuda
    assert grad_scaler_for(torch.bfloat16) is None and grad_scaler_for(None) is None
    row = conv.run_epoch()
    assert math.isfinite(row["train_loss"]) and 0.0 <= row["val_accuracy"] <= 1.0


@pytest.mark.parametrize("device", DEVICES)
def test_exact_resume_on_device(digits: ArrayData, split, device: str, tmp_path: Path) -> None:
    """State saved on the device, read back through a CPU checkpoint, continues the same run."""
    placed = DeviceData.place(digits, torch.device(device))
    settings = {"epochs": 4, "augment": ("crop", "hflip"), "dropout": 0.2, "optimizer": "adamw", "weight_decay": 1e-3}
    original = _trainer(placed, split, seed=3, **settings)
    original.run_epoch()
    save_checkpoint(tmp_path / "state.pt", original.state_dict())
    expected = original.run_epoch()
    restored = _trainer(placed, split, seed=4, **settings)
    restored.load_state_dict(load_checkpoint(tmp_path / "state.pt"))
    got = restored.run_epoch()
    tolerance = 0.0 if device == "cpu" else 1e-5  # CUDA kernels may reorder sums between runs
    for key, value in _without_time([expected])[0].items():
        assert got[key] == pytest.approx(value, rel=tolerance, abs=tolerance), key
    for p, q in zip(original.model.parameters(), restored.model.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=tolerance, atol=tolerance)


@pytest.mark.gpu
def test_cuda_epoch_syncs_with_the_host_once(digits: ArrayData, split) -> None:
    """No host sync inside the epoch on CUDA: torch's sync debug mode flags each one."""
    placed = DeviceData.place(digits, torch.device("cuda"))
    for graphs in ("on", "off"):
        trainer = _trainer(placed, split, model="seednet", epochs=3, augment=("crop", "hflip"), cuda_graphs=graphs)
        trainer.run_epoch()  # warm-up: cuDNN autotuning, optimizer state, graph capture (it syncs) happen here
        torch.cuda.synchronize()
        found = {}
        for run in (trainer.train_epoch, trainer.validate):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    run()
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            # Where each sync came from (the Python line that called the op), so a failure says what to fix.
            found[run.__name__] = [f"{Path(w.filename).name}:{w.lineno}: {w.message}" for w in caught
                                   if "synchroniz" in str(w.message)]
        assert all(len(syncs) <= 1 for syncs in found.values()), (graphs, found)  # the epoch's metrics, once
        trainer.close()


@pytest.mark.gpu
def test_cuda_fast_path_matches_fp32_accuracy(digits: ArrayData, split) -> None:
    cuda = torch.device("cuda")
    placed = DeviceData.place(digits, cuda)
    results = {}
    for amp, channels_last in (("bf16", True), ("fp16", True), ("off", False)):
        trainer = _trainer(placed, split, model="seednet", amp=amp, channels_last=channels_last, epochs=15, lr=3e-3, batch_size=64, augment=("crop",))
        assert trainer.amp == {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]
        assert trainer.use_channels_last is channels_last
        history = [trainer.run_epoch() for _ in range(15)]
        results[amp] = history[-1]["val_accuracy"]
    assert results["off"] > 0.85
    assert abs(results["bf16"] - results["off"]) < 0.05
    assert abs(results["fp16"] - results["off"]) < 0.05


# ---------------------------------------------------------------- static buffers (what CUDA graphs replay)


def test_batches_written_into_static_buffers_are_the_same_batches(placed: DeviceData, split) -> None:
    def draw(out):
        gen = torch.Generator().manual_seed(3)
        return [(x.clone(), y.clone(), x is (out or (None,))[0])
                for x, y in placed.batches(split[1], 64, shuffle=True, augment=(), generator=gen, out=out)]

    static = (torch.empty(64, *placed.input_shape), torch.empty(64, dtype=torch.int64))
    fresh, written = draw(None), draw(static)
    assert len(fresh) == len(written) == math.ceil(len(split[1]) / 64)
    for (x, y, _), (sx, sy, is_static) in zip(fresh, written):
        assert torch.equal(x, sx) and torch.equal(y, sy)
        assert is_static == (x.shape[0] == 64)  # full batches land in the buffers, the last partial one does not


def test_a_step_reading_static_buffers_trains_like_one_on_fresh_tensors(placed: DeviceData, split) -> None:
    settings = TrainSettings(epochs=1, lr=0.05, batch_size=64, optimizer="adamw", weight_decay=0.01)
    results = []
    for use_static in (False, True):
        seed_everything(0)
        model = build_model("mlp", placed.input_shape, placed.num_classes, dropout=0.1, width=32)
        static = (torch.empty(64, *placed.input_shape), torch.empty(64, dtype=torch.int64)) if use_static else None
        step = _train_step(model, settings, accum=1, static=static)  # static: the graph-ready step, run eagerly
        gen = torch.Generator().manual_seed(1)
        batches = placed.batches(split[0], 64, shuffle=True, generator=gen, drop_last=True, out=static)
        seed_everything(5)
        lrs = [0.05 / (1 + i) for i in range(len(split[0]) // 64)]
        out = train_one_epoch(step, batches, lrs)
        results.append((out, [p.detach().clone() for p in model.parameters()]))
        if use_static:
            assert step.lr.item() == pytest.approx(lrs[-1]) and int(step.step_index) == len(lrs)
            assert all(not p.grad.any() for p in model.parameters())  # zeroed in place, where graphs accumulate
    (a, pa), (b, pb) = results
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6) and a["accuracy"] == b["accuracy"]
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(pa, pb))  # float32 device rate vs Python float


def test_the_graph_plan_is_made_once_from_mode_device_and_full_batches() -> None:
    cuda = torch.device("cuda")  # a device name: nothing runs on it
    assert plan_graphs("auto", cuda, True) == GraphPlan(capture=True, required=False)
    assert plan_graphs("on", cuda, True) == GraphPlan(capture=True, required=True)
    assert plan_graphs("on", CPU, True).status == "off (not on CUDA)"
    assert plan_graphs("off", cuda, True).status == "off (train.cuda_graphs: off)"
    assert plan_graphs("auto", cuda, False).status == "off (fewer training samples than one batch)"
    assert plan_graphs("auto", cuda, True).status == "on"


class _Replayed:
    """What a captured graph does when replayed: the same work (capture itself is CUDA-only)."""

    def __init__(self, fn) -> None:
        self.replay = fn

    def reset(self) -> None:
        pass


def _capture_fails_for(monkeypatch: pytest.MonkeyPatch, refuse) -> None:
    """Plan captures on the CPU; warm-ups run eagerly; a graph for which `refuse(graph)` holds cannot be captured."""
    monkeypatch.setattr(engine, "plan_graphs", lambda mode, device, full: GraphPlan(True, mode == "on"))
    monkeypatch.setattr(steps._Graphed, "_warm", lambda self: self.fn())

    def record(self: steps._Graphed) -> _Replayed:
        if refuse(self):
            raise RuntimeError("operation not permitted when stream is capturing")
        return _Replayed(self.fn)

    monkeypatch.setattr(steps._Graphed, "_record", record)


def test_a_validation_step_that_cannot_be_captured_is_recorded(placed: DeviceData, split,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    trainers: list[Trainer] = []
    _capture_fails_for(monkeypatch, lambda graph: graph is trainers[0].eval_step._graph)
    trainers.append(_trainer(placed, split, epochs=2, batch_size=64))
    assert trainers[0].graphs == "on" and trainers[0].eval_step._graph is not None
    row = trainers[0].run_epoch()
    assert trainers[0].graphs == "off (validation: RuntimeError: operation not permitted when stream is capturing)"
    assert trainers[0].train_step.failed is None and row["val_accuracy"] > 0  # validation ran eagerly instead
    assert trainers[0].run_epoch()["epoch"] == 2


def test_a_training_capture_failure_comes_first(placed: DeviceData, split, monkeypatch: pytest.MonkeyPatch) -> None:
    _capture_fails_for(monkeypatch, lambda graph: True)
    trainer = _trainer(placed, split, epochs=1, batch_size=64)
    trainer.run_epoch()
    assert trainer.train_step.failed and trainer.eval_step.failed
    assert trainer.graphs == f"off ({trainer.train_step.failed})"
    strict = _trainer(placed, split, epochs=1, batch_size=64, cuda_graphs="on")
    with pytest.raises(RuntimeError, match="cuda_graphs is on, but the step cannot be captured"):
        strict.run_epoch()


def test_cuda_graphs_stay_off_off_cuda(placed: DeviceData, split) -> None:
    assert _trainer(placed, split, cuda_graphs="auto").graphs == "off (not on CUDA)"
    assert _trainer(placed, split, cuda_graphs="off").graphs == "off (train.cuda_graphs: off)"
    with pytest.raises(ConfigError, match="cuda_graphs"):
        TrainSettings(epochs=1, lr=0.1, batch_size=8, cuda_graphs="always")


@pytest.mark.gpu
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("accum_steps", [1, 2])
def test_cuda_graphs_train_like_eager_steps(digits: ArrayData, split, amp: str, accum_steps: int) -> None:
    """Replayed graphs and eager steps give the same losses over a few epochs (bf16/fp16 tolerance)."""
    placed = DeviceData.place(digits, torch.device("cuda"))
    histories = {}
    for mode in ("on", "off"):
        trainer = _trainer(placed, split, seed=2, model="seednet", amp=amp, cuda_graphs=mode, epochs=4, lr=3e-3,
                           batch_size=64, augment=("crop",), accum_steps=accum_steps, scheduler="cosine")
        histories[mode] = [trainer.run_epoch() for _ in range(4)]
        assert trainer.graphs == ("on" if mode == "on" else "off (train.cuda_graphs: off)")
        trainer.close()
    for on, off in zip(histories["on"], histories["off"]):
        assert on["train_loss"] == pytest.approx(off["train_loss"], rel=0.05)
        assert on["val_loss"] == pytest.approx(off["val_loss"], rel=0.05)
        assert on["lr"] == off["lr"]
    assert histories["on"][-1]["val_accuracy"] > 0.8


@pytest.mark.gpu
def test_a_model_that_cannot_be_captured_falls_back_to_eager_and_says_why(digits: ArrayData, split) -> None:
    class HostSync(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if float(x.abs().sum()) < 0:  # a host sync: not allowed while capturing
                raise AssertionError
            return self.fc(x.flatten(1))

    placed = DeviceData.place(digits, torch.device("cuda"))
    settings = TrainSettings(epochs=2, lr=3e-3, batch_size=64)
    trainer = Trainer(HostSync(), placed, split[0], split[1], settings, seed=0)
    history = [trainer.run_epoch() for _ in range(2)]
    assert trainer.graphs.startswith("off (") and "captur" in trainer.graphs.lower() or "sync" in trainer.graphs.lower()
    assert history[-1]["val_accuracy"] > 0.5
    strict = Trainer(HostSync(), placed, split[0], split[1], dataclasses.replace(settings, cuda_graphs="on"), seed=0)
    with pytest.raises(RuntimeError, match="cuda_graphs is on, but the step cannot be captured"):
        strict.run_epoch()
