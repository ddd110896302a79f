"""The shared train/validate core: optimizer, LR schedule, epochs, checkpoints. Knows nothing of Optuna.

What ``lr`` means: the peak learning rate of one optimizer step, for the effective batch
``batch_size * accum_steps``. It is not rescaled when the batch size changes; schedules only
multiply it by a factor in [0, 1].
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hpsearch.checkpoints import load_checkpoint, save_checkpoint  # re-exported: their documented home
from hpsearch.data import DeviceData
from hpsearch.errors import ConfigError, DeviceError

__all__ = [
    "EarlyStopping",
    "TrainSettings",
    "Trainer",
    "amp_dtype",
    "build_optimizer",
    "channels_last_for",
    "class_weights_for",
    "evaluate",
    "grad_scaler_for",
    "load_checkpoint",
    "lr_at",
    "save_checkpoint",
    "seed_everything",
    "train_one_epoch",
    "tune_backend",
]

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "step", "cosine", "exponential", "onecycle")
AMP_MODES = ("auto", "bf16", "fp16", "off")
ONECYCLE_PCT_START = 0.3
ONECYCLE_DIV_FACTOR = 25.0  # start at lr / 25, as torch.optim.lr_scheduler.OneCycleLR
ONECYCLE_FINAL_DIV_FACTOR = 1e4  # end at lr / 25 / 1e4


@dataclass(frozen=True)
class TrainSettings:
    """Everything that shapes one training run (one trial on one split).

    ``lr`` is the peak per-step LR for the effective batch ``batch_size * accum_steps``.
    ``weight_decay`` applies only to parameters with ndim >= 2 (weights, not biases or norms).
    ``warmup_epochs`` is a linear warmup used by none/step/cosine/exponential (onecycle has its
    own 30 % warmup). ``gamma`` is the step-decay factor every ``step_size`` epochs (default 0.1)
    or the per-epoch factor of ``exponential`` (default 0.9); None picks that default.
    ``amp`` only acts on CUDA; the CPU always trains in fp32.
    """

    epochs: int
    lr: float
    batch_size: int
    optimizer: str = "adamw"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    scheduler: str = "none"
    warmup_epochs: float = 0.0
    step_size: int = 10
    gamma: float | None = None
    accum_steps: int = 1
    label_smoothing: float = 0.0
    class_weights: tuple[float, ...] | None = None
    augment: tuple[str, ...] = ()
    amp: str = "auto"
    channels_last: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, f"one of {', '.join(OPTIMIZERS)}"),
            (self.scheduler in SCHEDULERS, "scheduler", self.scheduler, f"one of {', '.join(SCHEDULERS)}"),
            (self.amp in AMP_MODES, "amp", self.amp, f"one of {', '.join(AMP_MODES)}"),
            (self.epochs >= 1, "epochs", self.epochs, "at least 1"),
            (self.batch_size >= 1, "batch_size", self.batch_size, "at least 1"),
            (self.accum_steps >= 1, "accum_steps", self.accum_steps, "at least 1"),
            (self.step_size >= 1, "step_size", self.step_size, "at least 1"),
            (self.lr > 0 and math.isfinite(self.lr), "lr", self.lr, "a positive number"),
            (self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0"),
            (self.warmup_epochs >= 0, "warmup_epochs", self.warmup_epochs, ">= 0"),
            (0 <= self.label_smoothing < 1, "label_smoothing", self.label_smoothing, "in [0, 1)"),
            (self.gamma is None or self.gamma > 0, "gamma", self.gamma, "a positive number"),
        ]
        for ok, key, value, want in checks:
            if not ok:
                raise ConfigError(f"train.{key} = {value!r} is invalid; it must be {want}")
        object.__setattr__(self, "augment", tuple(self.augment))
        if self.class_weights is not None:
            object.__setattr__(self, "class_weights", tuple(float(w) for w in self.class_weights))

    @property
    def decay_factor(self) -> float:
        """``gamma`` with its per-scheduler default filled in."""
        if self.gamma is not None:
            return self.gamma
        return 0.9 if self.scheduler == "exponential" else 0.1


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def class_weights_for(y: Tensor, num_classes: int) -> tuple[float, ...]:
    """Balanced class weights ``n / (k * count_c)``; 0.0 for classes absent from ``y``."""
    counts = torch.bincount(y.cpu(), minlength=num_classes).to(torch.float64)
    weights = torch.where(counts > 0, y.numel() / (num_classes * counts.clamp_min(1)), torch.zeros_like(counts))
    return tuple(weights.tolist())


def lr_at(step: int, total_steps: int, settings: TrainSettings, steps_per_epoch: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based) out of ``total_steps``: a pure function."""
    peak = settings.lr
    if settings.scheduler == "onecycle":
        return _onecycle(step, total_steps, peak)
    warmup = round(settings.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return peak * (step + 1) / warmup
    if settings.scheduler == "cosine":
        progress = (step - warmup) / max(1, total_steps - warmup)
        return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if settings.scheduler == "step":
        return peak * settings.decay_factor ** (step // (settings.step_size * steps_per_epoch))
    if settings.scheduler == "exponential":
        return peak * settings.decay_factor ** ((step - warmup) / steps_per_epoch)
    return peak


def _onecycle(step: int, total_steps: int, peak: float) -> float:
    start = peak / ONECYCLE_DIV_FACTOR
    end = start / ONECYCLE_FINAL_DIV_FACTOR
    up = max(1, int(ONECYCLE_PCT_START * total_steps))
    if step < up:
        return start + (peak - start) * step / up
    progress = min(1.0, (step - up) / max(1, total_steps - 1 - up))
    return end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """Optimizer with two groups: weight decay on params with ndim >= 2, none on biases and norms."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": settings.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    # Fused kernels on every device: one launch for all parameters on CUDA, fewer dispatches per
    # step on the CPU too (ops per step and the quickstart's speedup: bench/RESULTS.md).
    if settings.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=settings.lr, momentum=settings.momentum,
                               nesterov=settings.nesterov and settings.momentum > 0, fused=True)
    cls = torch.optim.Adam if settings.optimizer == "adam" else torch.optim.AdamW
    return cls(groups, lr=settings.lr, fused=True)


def amp_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """Autocast dtype for ``device``: None (fp32) on the CPU or with ``off``; bf16 or fp16 on CUDA."""
    if amp not in AMP_MODES:
        raise ConfigError(f"train.amp = {amp!r} is invalid; use one of {', '.join(AMP_MODES)}")
    if torch.device(device).type != "cuda" or amp == "off":
        return None
    if amp == "fp16":
        return torch.float16
    bf16 = torch.cuda.is_bf16_supported()
    if amp == "bf16" and not bf16:
        raise DeviceError("train.amp = 'bf16' but this GPU does not support bfloat16; use amp: fp16 or auto")
    return torch.bfloat16 if bf16 else torch.float16


def grad_scaler_for(dtype: torch.dtype | None) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 autocast, else None (bf16 has fp32's exponent range; fp32 needs none)."""
    # fp16 gradients underflow to zero without loss scaling.
    return torch.amp.GradScaler("cuda") if dtype == torch.float16 else None


def channels_last_for(model: nn.Module, device: torch.device, enabled: bool = True) -> bool:
    """Whether to train ``model`` in channels_last: conv nets on CUDA (NHWC feeds tensor cores directly)."""
    return torch.device(device).type == "cuda" and enabled and _has_conv(model)


def tune_backend(device: torch.device) -> None:
    """Per-process backend switches for ``device``: cuDNN autotuning on CUDA, nothing on the CPU."""
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed batch shapes (drop_last): autotuned kernels pay off


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    lr_for_step: Callable[[int], float],
    start_step: int,
    accum_steps: int,
    amp: torch.dtype | None,
    scaler: torch.amp.GradScaler | None = None,
    between_batches: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Train over ``batches`` once; return {"loss", "accuracy", "lr", "steps"}.

    An optimizer step every ``accum_steps`` micro-batches (and one for a trailing partial group),
    each micro-batch loss scaled by 1/accum_steps. The LR of optimizer step ``start_step + i`` is
    ``lr_for_step(start_step + i)``. Metrics stay on the device until one sync at the end.
    ``between_batches`` is called before every batch (it may raise to stop the epoch there).
    """
    model.train()
    device = _device_of(model)
    totals = _Totals()
    micro = 0
    step = start_step
    lr = lr_for_step(step)
    for x, y in batches:
        if between_batches is not None:
            between_batches()
        if micro == 0:
            lr = _set_lr(optimizer, lr_for_step(step))
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(x)
            loss = loss_fn(logits, y)
        scaled = loss / accum_steps if accum_steps > 1 else loss
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        micro += 1
        if micro == accum_steps:
            _optimizer_step(optimizer, scaler)
            micro, step = 0, step + 1
        totals.add(loss, logits, y)
    if micro:
        _optimizer_step(optimizer, scaler)
        step += 1
    return {**totals.means(), "lr": lr, "steps": float(step - start_step)}


class _Totals:
    """Each batch's mean loss and correct count, kept on the device until one transfer at the end."""

    def __init__(self) -> None:
        self.losses: list[Tensor] = []
        self.correct: list[Tensor] = []
        self.sizes: list[int] = []

    def add(self, loss: Tensor, logits: Tensor, y: Tensor) -> None:
        # Appending launches nothing; a running sum on the device would add two kernels per step.
        self.losses.append(loss.detach())
        self.correct.append((logits.detach().argmax(1) == y).sum())
        self.sizes.append(int(y.shape[0]))

    def means(self) -> dict[str, float]:
        """{"loss", "accuracy"} over all samples (nan when there were none): the epoch's one host sync."""
        seen = sum(self.sizes)
        if not seen:
            return {"loss": math.nan, "accuracy": math.nan}
        values = torch.cat([torch.stack(self.losses).double(), torch.stack(self.correct).double()]).tolist()
        losses, correct = values[: len(self.sizes)], values[len(self.sizes) :]
        return {"loss": math.fsum(v * n for v, n in zip(losses, self.sizes)) / seen, "accuracy": sum(correct) / seen}


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def _optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    amp: torch.dtype | None,
    between_batches: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` over ``batches``, in inference mode, one host sync."""
    model.eval()
    device = _device_of(model)
    totals = _Totals()
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        for x, y in batches:
            if between_batches is not None:
                between_batches()
            logits = model(x)
            totals.add(loss_fn(logits.float(), y), logits, y)
    return totals.means()


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d | nn.Conv3d) for m in model.modules())


class Trainer:
    """One model being trained on one split; the caller drives it epoch by epoch.

    The training loss is CrossEntropyLoss with ``class_weights`` and ``label_smoothing``; the
    reported validation loss is plain, unweighted cross-entropy so trials stay comparable.
    Shuffling and augmentation draw from a ``torch.Generator`` on the data's device seeded with
    ``seed``; dropout draws from torch's global RNG (seed it before building the model).
    ``between_batches`` is called before every training and validation batch (a stop check).
    """

    def __init__(
        self,
        model: nn.Module,
        data: DeviceData,
        train_idx: Tensor,
        val_idx: Tensor,
        settings: TrainSettings,
        seed: int,
        between_batches: Callable[[], None] | None = None,
    ) -> None:
        self.device = data.device
        self.between_batches = between_batches
        self.data = data
        self.settings = settings
        self.use_channels_last = channels_last_for(model, self.device, settings.channels_last)
        self.model = model.to(self.device)
        if self.use_channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        tune_backend(self.device)
        self.train_idx = train_idx.to(self.device)
        self.val_idx = val_idx.to(self.device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.amp = amp_dtype(self.device, settings.amp)
        self.scaler = grad_scaler_for(self.amp)
        self.optimizer = build_optimizer(self.model, settings)
        weight = None
        if settings.class_weights is not None:
            weight = torch.tensor(settings.class_weights, dtype=torch.float32, device=self.device)
        self.loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=settings.label_smoothing)
        self.eval_loss_fn = nn.CrossEntropyLoss()
        n_train = int(self.train_idx.shape[0])
        # Full batches only (when there is at least one): a last batch of 1 breaks BatchNorm.
        self.drop_last = n_train >= settings.batch_size
        batches = data.num_batches(n_train, settings.batch_size, self.drop_last)
        self.steps_per_epoch = max(1, math.ceil(batches / settings.accum_steps))
        self.total_steps = settings.epochs * self.steps_per_epoch
        self.epoch = 0

    def _batches(self, indices: Tensor, batch_size: int, train: bool) -> Iterator[tuple[Tensor, Tensor]]:
        batches = self.data.batches(
            indices,
            batch_size,
            shuffle=train,
            augment=self.settings.augment if train else (),
            generator=self.generator,
            drop_last=self.drop_last if train else False,
        )
        if not self.use_channels_last:
            return batches
        return ((x.contiguous(memory_format=torch.channels_last), y) for x, y in batches)

    def train_epoch(self) -> dict[str, float]:
        """Train one epoch (no validation); returns train_one_epoch's metrics."""
        lr_for_step = partial(lr_at, total_steps=self.total_steps, settings=self.settings, steps_per_epoch=self.steps_per_epoch)
        metrics = train_one_epoch(
            self.model,
            self._batches(self.train_idx, self.settings.batch_size, train=True),
            self.optimizer,
            loss_fn=self.loss_fn,
            lr_for_step=lr_for_step,
            start_step=self.epoch * self.steps_per_epoch,
            accum_steps=self.settings.accum_steps,
            amp=self.amp,
            scaler=self.scaler,
            between_batches=self.between_batches,
        )
        self.epoch += 1
        return metrics

    def validate(self) -> dict[str, float]:
        """Loss and accuracy on the validation indices."""
        # Inference keeps no activations for backward, so twice the batch fits.
        batches = self._batches(self.val_idx, 2 * self.settings.batch_size, train=False)
        return evaluate(self.model, batches, loss_fn=self.eval_loss_fn, amp=self.amp, between_batches=self.between_batches)

    def run_epoch(self) -> dict[str, float]:
        """Train one epoch then validate; losses may be nan/inf (the caller decides what to do)."""
        start = time.perf_counter()
        train = self.train_epoch()
        val = self.validate()
        return {
            "epoch": self.epoch,
            "train_loss": train["loss"],
            "train_accuracy": train["accuracy"],
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "lr": train["lr"],
            "epoch_time": time.perf_counter() - start,
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: weights, optimizer, scaler, epoch and RNG states.

        Like ``nn.Module.state_dict`` it references live tensors: save it (or deep-copy it) before
        training on.
        """
        rng: dict[str, Any] = {"torch": torch.get_rng_state(), "generator": self.generator.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch,
            "rng": rng,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the next :meth:`run_epoch` continues where it left off."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        self.generator.set_state(rng["generator"].cpu())
        if self.device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"].cpu(), self.device)


class EarlyStopping:
    """Stop when the metric has not improved by more than ``min_delta`` for ``patience`` epochs."""

    def __init__(self, patience: int, min_delta: float = 0.0, mode: str = "max") -> None:
        if mode not in ("max", "min"):
            raise ConfigError(f"early stopping mode {mode!r} is invalid; use 'max' or 'min'")
        if patience < 1:
            raise ConfigError(f"train.early_stopping.patience = {patience} is invalid; it must be at least 1")
        self.patience = patience
        self.min_delta = abs(min_delta)
        self.mode = mode
        self.best: float | None = None
        self.best_epoch = 0
        self.bad_epochs = 0
        self.epochs = 0

    def _improves(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def step(self, value: float) -> bool:
        """Record one epoch's metric; True when it is time to stop."""
        self.epochs += 1
        if self._improves(value):
            self.best, self.best_epoch, self.bad_epochs = float(value), self.epochs, 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state, for checkpoints."""
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs, "epochs": self.epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.best = state["best"]
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        self.epochs = int(state["epochs"])
