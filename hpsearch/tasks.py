"""What a model learns, one class per task: its training loss, its device-side metric sums, the output shape it
needs and how its outputs become predictions.

- ``classification``: (N, C) logits, cross-entropy with class weights and label smoothing; loss and accuracy.
- ``multihead``: (N, L, C) logits, one class per character position padded with a blank class; the loss is the
  sum over positions of each position's cross-entropy (class weights and label smoothing per position);
  ``accuracy`` is whole-sequence exact match, ``char_accuracy`` the share of positions right (blanks count).
- ``regression``: (N, k) outputs that learn targets normalised per output (mean 0, std 1), MSE; ``mse``, ``mae``
  and ``r2`` (the mean over outputs of each one's coefficient of determination) in the data's own units.

The engine and the steps stay task-agnostic: a :class:`Trainer` asks its task (:func:`task_from_record`, from the
data's inputs record) for the losses, the sums and the label buffers. Sums live on the device and are read
once per epoch; nothing in a loss or an ``add`` syncs with the host, so CUDA graphs capture them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from hpsearch.names import MODELS
from hpsearch.steps import EpochSums

__all__ = ["Classification", "Multihead", "Regression", "Sums", "Task", "task_arguments", "task_from_record"]


class Sums(Protocol):
    """An epoch's metric sums on the device: reset, add a batch without a host sync, read once."""

    def reset(self) -> None: ...

    def add(self, loss: Tensor, logits: Tensor, y: Tensor) -> None: ...

    def read(self, seen: int) -> dict[str, float]: ...


class Task:
    """Classification: one class per sample, (N, C) logits. The base of the other tasks."""

    name = "classification"
    train_keys: tuple[str, ...] = ("loss", "accuracy")  # what the training epoch reports, as train_<key>

    def __init__(self, num_classes: int, class_names: Sequence[str], class_weights: Sequence[float] | None = None,
                 label_smoothing: float = 0.0) -> None:
        self.num_classes = num_classes
        self.class_names = [str(n) for n in class_names]
        self.class_weights = None if class_weights is None else tuple(class_weights)
        self.label_smoothing = label_smoothing

    def _weight(self, device: torch.device) -> Tensor | None:
        if self.class_weights is None:
            return None
        return torch.tensor(self.class_weights, dtype=torch.float32, device=device)

    def train_loss(self, device: torch.device) -> nn.Module:
        """The training loss: cross-entropy with the class weights and label smoothing."""
        return nn.CrossEntropyLoss(weight=self._weight(device), label_smoothing=self.label_smoothing)

    def eval_loss(self, device: torch.device) -> nn.Module:
        """The reported validation loss: plain cross-entropy, so trials with other weights stay comparable."""
        return nn.CrossEntropyLoss()

    def sums(self, device: torch.device) -> Sums:
        return EpochSums(device)

    def label_buffer(self, n: int, device: torch.device) -> Tensor:
        """A static labels buffer of ``n`` samples (CUDA graphs read their batch from fixed addresses)."""
        return torch.empty(n, dtype=torch.int64, device=device)

    def output_shape(self, n: int) -> tuple[int, ...]:
        return (n, self.num_classes)

    def shape_problem(self, out: Any, n: int, model: str) -> str | None:
        """Why ``out`` (the model's output for ``n`` inputs) does not fit the task, with the fix; None if it fits."""
        if isinstance(out, Tensor) and tuple(out.shape) == self.output_shape(n):
            return None
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        return f"{model} returns {shape} for {n} inputs; it must {self._needs(n)}"

    def _needs(self, n: int) -> str:
        return f"return one score per class, {self.output_shape(n)}"

    def predict(self, outputs: Tensor) -> Tensor:
        """Class indices (int64, one per sample)."""
        return outputs.argmax(dim=1)

    def rows(self, outputs: Tensor) -> list[str]:
        """What a CSV row says for each output: the name of the predicted class."""
        return [self.class_names[i] for i in self.predict(outputs).tolist()]


Classification = Task


class PositionLoss(nn.Module):
    """Sum over positions of each position's cross-entropy (its own weighted mean over the batch)."""

    def __init__(self, weight: Tensor | None, label_smoothing: float) -> None:
        super().__init__()
        self.weight = weight
        self.ce = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing, reduction="none")

    def forward(self, logits: Tensor, y: Tensor) -> Tensor:
        per = self.ce(logits.transpose(1, 2), y)  # (N, L): positions as the K extra dimension
        if self.weight is None:
            return per.mean(0).sum()
        # Weighted mean per position (what CrossEntropyLoss's mean is), then the sum over positions.
        return (per.sum(0) / self.weight[y].sum(0)).sum()


class MultiheadSums:
    """Loss, whole-sequence and per-position correct counts of an epoch, on the device."""

    def __init__(self, device: torch.device, positions: int) -> None:
        self.positions = positions
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.counts = torch.zeros(2, dtype=torch.int64, device=device)  # sequences right, positions right

    def reset(self) -> None:
        self.loss.zero_()
        self.counts.zero_()

    def add(self, loss: Tensor, logits: Tensor, y: Tensor) -> None:
        self.loss.add_(loss.detach(), alpha=int(y.shape[0]))
        right = logits.detach().argmax(-1) == y
        self.counts.add_(torch.stack([right.all(1).sum(), right.sum()]))

    def read(self, seen: int) -> dict[str, float]:
        if not seen:
            return {"loss": math.nan, "accuracy": math.nan, "char_accuracy": math.nan}
        loss, sequences, chars = torch.cat([self.loss.view(1), self.counts.double()]).tolist()
        return {"loss": loss / seen, "accuracy": sequences / seen, "char_accuracy": chars / (seen * self.positions)}


class Multihead(Task):
    """Rows of L class indices padded with ``blank`` (the last class); (N, L, C) logits."""

    name = "multihead"
    train_keys = ("loss", "accuracy", "char_accuracy")

    def __init__(self, num_classes: int, class_names: Sequence[str], positions: int, blank: int,
                 class_weights: Sequence[float] | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__(num_classes, class_names, class_weights, label_smoothing)
        self.positions, self.blank = positions, blank

    def train_loss(self, device: torch.device) -> nn.Module:
        return PositionLoss(self._weight(device), self.label_smoothing)

    def eval_loss(self, device: torch.device) -> nn.Module:
        return PositionLoss(None, 0.0)

    def sums(self, device: torch.device) -> Sums:
        return MultiheadSums(device, self.positions)

    def label_buffer(self, n: int, device: torch.device) -> Tensor:
        return torch.empty((n, self.positions), dtype=torch.int64, device=device)

    def output_shape(self, n: int) -> tuple[int, ...]:
        return (n, self.positions, self.num_classes)

    def _needs(self, n: int) -> str:
        return (f"return one score per class and position, {self.output_shape(n)}, for task multihead: set "
                f"model.args.heads: {self.positions} (seednet, resnet18), or make the factory return "
                f"(N, num_positions, num_classes)")

    def predict(self, outputs: Tensor) -> Tensor:
        """Class indices per position, (N, L) int64 (the blank included)."""
        return outputs.argmax(dim=-1)

    def rows(self, outputs: Tensor) -> list[str]:
        """The predicted string of each sample: its positions' class names, blanks dropped."""
        return ["".join(self.class_names[c] for c in row if c != self.blank) for row in self.predict(outputs).tolist()]


class RegressionLoss(nn.Module):
    """MSE between the outputs and the targets normalised per output: ``(y - mean) / std``."""

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, outputs: Tensor, y: Tensor) -> Tensor:
        return nn.functional.mse_loss(outputs.float(), (y - self.mean) / self.std)


class RegressionSums:
    """Loss and per-output sums of squared and absolute errors and of the targets (normalised units), on the device."""

    def __init__(self, mean: Tensor, std: Tensor, host_std: Sequence[float]) -> None:
        self.mean, self.std, self.host_std = mean, std, list(host_std)
        device = mean.device
        self.loss = torch.zeros(1, dtype=torch.float64, device=device)
        self.per_output = torch.zeros((4, mean.shape[0]), dtype=torch.float64, device=device)  # sse, sae, sy, syy

    def reset(self) -> None:
        self.loss.zero_()
        self.per_output.zero_()

    def add(self, loss: Tensor, logits: Tensor, y: Tensor) -> None:
        self.loss.add_(loss.detach(), alpha=int(y.shape[0]))
        z = ((y - self.mean) / self.std).double()
        err = logits.detach().double() - z
        self.per_output.add_(torch.stack([err.square().sum(0), err.abs().sum(0), z.sum(0), z.square().sum(0)]))

    def read(self, seen: int) -> dict[str, float]:
        if not seen:
            return {"loss": math.nan, "mse": math.nan, "mae": math.nan, "r2": math.nan}
        rows = torch.cat([self.loss, self.per_output.flatten()]).tolist()  # the one host sync
        k = self.mean.shape[0]
        sse, sae, sy, syy = (rows[1 + i * k:1 + (i + 1) * k] for i in range(4))
        std = self.host_std
        r2 = [1.0 - e / (q - s * s / seen) if q - s * s / seen > 1e-12 else math.nan
              for e, s, q in zip(sse, sy, syy)]
        return {"loss": rows[0] / seen, "mse": sum(e * d * d for e, d in zip(sse, std)) / (k * seen),
                "mae": sum(a * d for a, d in zip(sae, std)) / (k * seen), "r2": sum(r2) / k}


class Regression(Task):
    """Float targets (N, k) with their per-output mean and std; (N, k) outputs in normalised units."""

    name = "regression"
    train_keys = ("loss",)

    def __init__(self, outputs: int, names: Sequence[str], mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__(outputs, names)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def _stats(self, device: torch.device) -> tuple[Tensor, Tensor]:
        return (torch.tensor(self.mean, dtype=torch.float32, device=device),
                torch.tensor(self.std, dtype=torch.float32, device=device))

    def train_loss(self, device: torch.device) -> nn.Module:
        return RegressionLoss(*self._stats(device))

    eval_loss = train_loss

    def sums(self, device: torch.device) -> Sums:
        return RegressionSums(*self._stats(device), self.std)

    def label_buffer(self, n: int, device: torch.device) -> Tensor:
        return torch.empty((n, self.num_classes), dtype=torch.float32, device=device)

    def _needs(self, n: int) -> str:
        return (f"return one value per target, {self.output_shape(n)}, for task regression: make the factory "
                f"return (N, num_outputs) (num_outputs={self.num_classes}, also passed as num_classes)")

    def predict(self, outputs: Tensor) -> Tensor:
        """Predictions in the data's own units, float32 (N, k)."""
        mean, std = self._stats(outputs.device)
        return outputs.float() * std + mean

    def rows(self, outputs: Tensor) -> list[str]:
        """Each sample's predicted values, space-separated, in the data's own units."""
        return [" ".join(repr(v) for v in row) for row in self.predict(outputs).tolist()]


def task_from_record(record: Mapping[str, Any], class_weights: Sequence[float] | None = None,
                     label_smoothing: float = 0.0) -> Task:
    """The task of data whose inputs record (``data.inputs_record``) is ``record``: a record without ``task`` is a
    classification one (checkpoints from before tasks existed)."""
    names = record.get("class_names") or [str(i) for i in range(int(record["num_classes"]))]
    kind = record.get("task", "classification")
    if kind == "multihead":
        return Multihead(int(record["num_classes"]), names, int(record["max_length"]), int(record["blank"]),
                         class_weights, label_smoothing)
    if kind == "regression":
        return Regression(int(record["num_classes"]), names, record["target_mean"], record["target_std"])
    return Task(int(record["num_classes"]), names, class_weights, label_smoothing)


def task_arguments(model: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """What the task adds to a model's arguments: a custom factory's num_positions (multihead) or num_outputs
    (regression); nothing for a builtin (whose heads come from model.args)."""
    if model in MODELS:
        return {}
    task = inputs.get("task")
    if task == "multihead":
        return {"num_positions": int(inputs["max_length"])}
    if task == "regression":
        return {"num_outputs": int(inputs["num_classes"])}
    return {}
