"""Each task's loss, metric sums (against a direct computation), output-shape check and decoding."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hpsearch.data import DeviceData, from_arrays, inputs_record, multihead_data, regression_data
from hpsearch.engine import Trainer, class_weights_for, evaluate
from hpsearch.models import build_model
from hpsearch.settings import settings_from
from hpsearch.steps import EvalStep
from hpsearch.tasks import Multihead, Regression, Task, task_from_record

CPU = torch.device("cpu")


def _multihead(weights: tuple[float, ...] | None = None, smoothing: float = 0.0) -> Multihead:
    return Multihead(4, ["a", "b", "c", "-"], positions=3, blank=3, class_weights=weights, label_smoothing=smoothing)


@pytest.mark.parametrize("weights", [None, (1.0, 2.0, 0.5, 0.25)])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_multihead_loss_is_the_sum_of_each_positions_cross_entropy(weights: tuple[float, ...] | None,
                                                                   smoothing: float) -> None:
    torch.manual_seed(0)
    logits, y = torch.randn(6, 3, 4), torch.randint(0, 4, (6, 3))
    weight = None if weights is None else torch.tensor(weights)
    direct = sum(nn.CrossEntropyLoss(weight=weight, label_smoothing=smoothing)(logits[:, i], y[:, i]) for i in range(3))
    assert _multihead(weights, smoothing).train_loss(CPU)(logits, y).item() == pytest.approx(float(direct), rel=1e-6)
    plain = sum(nn.CrossEntropyLoss()(logits[:, i], y[:, i]) for i in range(3))
    assert _multihead(weights, smoothing).eval_loss(CPU)(logits, y).item() == pytest.approx(float(plain), rel=1e-6)


def test_multihead_sums_count_whole_strings_and_positions() -> None:
    torch.manual_seed(1)
    task = _multihead()
    sums = task.sums(CPU)
    batches = [(torch.randn(5, 3, 4), torch.randint(0, 4, (5, 3))) for _ in range(3)]
    batches.append((nn.functional.one_hot(batches[0][1], 4).float(), batches[0][1]))  # all right
    for logits, y in batches:
        sums.add(task.eval_loss(CPU)(logits, y), logits, y)
    logits, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    right = logits.argmax(-1) == y
    got = sums.read(20)
    assert got["accuracy"] == pytest.approx(right.all(1).float().mean().item())
    assert got["char_accuracy"] == pytest.approx(right.float().mean().item())
    losses = [task.eval_loss(CPU)(lg, yy).item() * 5 for lg, yy in batches]
    assert got["loss"] == pytest.approx(sum(losses) / 20)
    sums.reset()
    assert all(math.isnan(v) for v in sums.read(0).values())


def test_regression_sums_are_the_metrics_in_the_datas_units() -> None:
    torch.manual_seed(2)
    mean, std = (10.0, -3.0), (4.0, 0.5)
    task = Regression(2, ["u", "v"], mean, std)
    y = torch.randn(40, 2) * torch.tensor(std) + torch.tensor(mean)
    outputs = torch.randn(40, 2)  # in normalised units, as the model learns them
    sums = task.sums(CPU)
    for part in range(0, 40, 16):
        out, target = outputs[part:part + 16], y[part:part + 16]
        sums.add(task.eval_loss(CPU)(out, target), out, target)
    got = sums.read(40)
    predicted = task.predict(outputs).double()
    err = predicted - y.double()
    assert got["mse"] == pytest.approx(err.square().mean().item(), rel=1e-5)
    assert got["mae"] == pytest.approx(err.abs().mean().item(), rel=1e-5)
    r2 = [1 - err[:, j].square().sum() / (y[:, j].double() - y[:, j].double().mean()).square().sum() for j in range(2)]
    assert got["r2"] == pytest.approx(float(sum(r2) / 2), rel=1e-5)
    z = (y - torch.tensor(mean)) / torch.tensor(std)
    assert got["loss"] == pytest.approx(nn.functional.mse_loss(outputs, z).item(), rel=1e-5)


def test_decoding_per_task() -> None:
    assert Task(3, ["cat", "dog", "owl"]).rows(torch.tensor([[0.1, 2.0, 0.0], [3.0, 0.0, 0.0]])) == ["dog", "cat"]
    logits = nn.functional.one_hot(torch.tensor([[1, 0, 3], [3, 3, 3], [2, 3, 1]]), 4).float()
    assert _multihead().rows(logits) == ["ba", "", "c" + "b"]  # blanks dropped wherever they are
    assert _multihead().predict(logits).tolist() == [[1, 0, 3], [3, 3, 3], [2, 3, 1]]
    task = Regression(1, ["y"], (100.0,), (10.0,))
    assert task.predict(torch.tensor([[0.5], [-1.0]])).flatten().tolist() == [105.0, 90.0]
    assert task.rows(torch.tensor([[0.5]])) == ["105.0"]


def test_shape_problems_name_the_shapes_and_the_fix() -> None:
    assert Task(10, [str(i) for i in range(10)]).shape_problem(torch.zeros(2, 10), 2, "m") is None
    assert _multihead().shape_problem(torch.zeros(2, 3, 4), 2, "m") is None
    problem = _multihead().shape_problem(torch.zeros(2, 4), 2, "mlp")
    assert problem is not None and "mlp returns (2, 4) for 2 inputs" in problem and "(2, 3, 4)" in problem
    assert "model.args.heads: 3" in problem
    problem = Regression(1, ["y"], (0.0,), (1.0,)).shape_problem(torch.zeros(2), 2, "f")
    assert problem is not None and "(2, 1)" in problem and "task regression" in problem


def test_the_task_comes_from_the_inputs_record() -> None:
    plain = from_arrays(torch.zeros(4, 3), torch.tensor([0, 1, 0, 1]))
    assert type(task_from_record(inputs_record(plain))) is Task and "task" not in inputs_record(plain)
    strings = multihead_data(torch.zeros(4, 3), torch.tensor([[0, 2], [1, 2], [0, 1], [2, 2]]), 3, None, None, "s")
    record = inputs_record(strings)
    assert (record["task"], record["blank"], record["max_length"]) == ("multihead", 2, 2)
    assert isinstance(task_from_record(record), Multihead)
    values = regression_data(torch.zeros(4, 3), torch.tensor([1.0, 2.0, 3.0, 4.0]), None, "r")
    record = inputs_record(values)
    assert record["task"] == "regression" and record["target_mean"] == [2.5]
    assert record["target_std"] == [pytest.approx(math.sqrt(1.25))]


def test_class_weights_count_every_position() -> None:
    weights = class_weights_for(torch.tensor([[0, 2], [0, 2], [1, 2]]), 3)
    assert weights == pytest.approx((6 / (3 * 2), 6 / (3 * 1), 6 / (3 * 3)))


def test_a_multihead_trainer_learns_and_reports_its_metrics() -> None:
    torch.manual_seed(0)
    y = torch.randint(0, 3, (96, 2))
    x = nn.functional.one_hot(y, 3).float().reshape(96, 6) * 4  # the labels, readable by a linear model
    data = DeviceData.place(multihead_data(x, torch.where(y == 2, 3, y), 4, None, None, "toy"), CPU)
    model = nn.Sequential(nn.Linear(6, 8), nn.Unflatten(1, (2, 4)))
    settings = settings_from({"epochs": 20, "lr": 0.05, "batch_size": 32, "label_smoothing": 0.05}, {})
    trainer = Trainer(model, data, torch.arange(64), torch.arange(64, 96), settings, seed=0)
    records = [trainer.run_epoch() for _ in range(20)]
    assert list(records[0]) == ["epoch", "train_loss", "train_accuracy", "train_char_accuracy", "val_loss",
                                "val_accuracy", "val_char_accuracy", "lr", "epoch_time"]
    assert records[-1]["val_accuracy"] == 1.0 and records[-1]["val_char_accuracy"] == 1.0
    assert records[-1]["val_loss"] < records[0]["val_loss"]


def test_a_regression_trainer_reports_metrics_in_the_datas_units() -> None:
    torch.manual_seed(0)
    x = torch.randn(128, 3)
    y = 50.0 + 20.0 * x[:, 0] - 5.0 * x[:, 1]
    data = DeviceData.place(regression_data(x, y, ["y"], "toy"), CPU)
    model = build_model("mlp", (3,), 1, width=16, depth=1)
    settings = settings_from({"epochs": 30, "lr": 0.02, "batch_size": 32}, {})
    trainer = Trainer(model, data, torch.arange(96), torch.arange(96, 128), settings, seed=0)
    records = [trainer.run_epoch() for _ in range(30)]
    assert list(records[0]) == ["epoch", "train_loss", "val_loss", "val_mse", "val_mae", "val_r2", "lr", "epoch_time"]
    last = records[-1]
    assert last["val_r2"] > 0.9
    with torch.no_grad():  # the reported MSE is the model's, in y's units
        predicted = trainer.task.predict(model.eval()(trainer.data.batches(torch.arange(96, 128), 32, shuffle=False)
                                                       .__next__()[0])).flatten()
    assert last["val_mse"] == pytest.approx((predicted - y[96:]).square().mean().item(), rel=1e-4)
    step = EvalStep(model, loss_fn=trainer.eval_loss_fn, amp=None, device=CPU, sums=trainer.task.sums(CPU))
    again = evaluate(step, trainer.data.batches(torch.arange(96, 128), 8, shuffle=False))
    assert again["mse"] == pytest.approx(last["val_mse"], rel=1e-5)  # batch size does not change the sums
