"""The shared train/validate core: `Trainer`, the epoch loops, early stopping and one small function per
CUDA-only switch (autocast dtype, loss scaling, channels_last, cuDNN). Knows nothing of Optuna.

The settings (`settings`), the optimizer and LR schedule (`optim`), the steps (`steps`) and checkpoint
files (`checkpoints`) have their own modules; the names they define that callers use are re-exported here.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hpsearch.checkpoints import load_checkpoint, save_checkpoint  # re-exported: their documented home
from hpsearch.data import DeviceData
from hpsearch.errors import ConfigError, DeviceError
from hpsearch.data.tta import tta_rows
from hpsearch.optim import backbone_factor, build_optimizer, lr_at, splits_backbone
from hpsearch.pretrained import Backbone, head_parameters
from hpsearch.settings import TrainSettings
from hpsearch.steps import EvalStep, TrainStep, plan_graphs
from hpsearch.tasks import task_from_record

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


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def class_weights_for(y: Tensor, num_classes: int) -> tuple[float, ...]:
    """Balanced class weights ``n / (k * count_c)``; 0.0 for classes absent from ``y`` (every position of (N, L) rows)."""
    y = y.reshape(-1)
    counts = torch.bincount(y.cpu(), minlength=num_classes).to(torch.float64)
    weights = torch.where(counts > 0, y.numel() / (num_classes * counts.clamp_min(1)), torch.zeros_like(counts))
    return tuple(weights.tolist())


def amp_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """Autocast dtype for ``device`` and a ``TrainSettings.amp`` mode: None (fp32) on the CPU or with ``off``."""
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


def train_one_epoch(
    step: TrainStep,
    batches: Iterable[tuple[Tensor, Tensor]],
    lrs: list[float],
    between_batches: Callable[[], None] | None = None,
    backbone: float = 1.0,
    held: Iterable[nn.Module] = (),
) -> dict[str, float]:
    """Train over ``batches`` once; return {"loss", "accuracy", "steps"}.

    An optimizer step every ``step.accum_steps`` micro-batches (and one for a trailing partial
    group), optimizer step i at learning rate ``lrs[i]`` (the backbone's groups at ``backbone`` times
    it). Metrics stay on the device until one sync at the end. ``between_batches`` is called before
    every batch (it may raise to stop there). The modules in ``held`` stay in eval mode (a frozen
    backbone's BatchNorms).
    """
    step.model.train()
    for module in held:
        module.eval()
    step.begin_epoch(lrs, backbone)
    seen = micro = steps = 0
    for x, y in batches:
        if between_batches is not None:
            between_batches()
        step.micro(x, y)
        seen += int(y.shape[0])
        micro += 1
        if micro == step.accum_steps:
            step.advance()
            micro, steps = 0, steps + 1
    if micro:
        step.advance()
        steps += 1
    return {**step.sums.read(seen), "steps": float(steps)}


def evaluate(
    step: EvalStep,
    batches: Iterable[tuple[Tensor, Tensor]],
    between_batches: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Mean loss and accuracy of ``step.model`` over ``batches``, without gradients, one host sync."""
    step.model.eval()
    step.sums.reset()
    seen = 0
    for x, y in batches:
        if between_batches is not None:
            between_batches()
        step(x, y)
        seen += int(y.shape[0])
    return step.sums.read(seen)


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d | nn.Conv3d) for m in model.modules())


class Trainer:
    """One model being trained on one split; the caller drives it epoch by epoch.

    The task (`hpsearch.tasks`, from the data's inputs record) owns the losses, the metric sums and the
    labels' shape: for classification the training loss is CrossEntropyLoss with ``class_weights`` and
    ``label_smoothing`` and the reported validation loss plain, unweighted cross-entropy so trials stay comparable.
    Shuffling and augmentation draw from a ``torch.Generator`` on the data's device seeded with
    ``seed``; dropout draws from torch's global RNG (seed it before building the model).
    ``between_batches`` is called before every training and validation batch (a stop check).
    On CUDA the steps run as CUDA graphs (``settings.cuda_graphs``); :attr:`graphs` says whether.
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
        self.data = data
        self.settings = settings
        self.between_batches = between_batches
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
        n_train = int(self.train_idx.shape[0])
        # Full batches only (when there is at least one): a last batch of 1 breaks BatchNorm.
        self.drop_last = n_train >= settings.batch_size
        batches = data.num_batches(n_train, settings.batch_size, self.drop_last)
        self.steps_per_epoch = max(1, math.ceil(batches / settings.accum_steps))
        self.total_steps = settings.epochs * self.steps_per_epoch
        self.epoch = 0
        self.graph_plan = plan_graphs(settings.cuda_graphs, self.device, self.drop_last)
        graphed = self.graph_plan.capture
        self.lr = torch.full((1,), settings.lr, dtype=torch.float32, device=self.device)  # graph-ready steps set it
        head = head_parameters(self.model) if splits_backbone(settings) else None
        self.backbone_lr = torch.full((1,), settings.lr * backbone_factor(0, settings), dtype=torch.float32,
                                      device=self.device) if head is not None else None
        self.optimizer = build_optimizer(self.model, settings, lr=self.lr if graphed else None, capturable=graphed,
                                         backbone_lr=self.backbone_lr if graphed else None, head=head)
        # After the optimizer: its backbone groups hold the parameters a freeze switches off and back on.
        self.backbone = Backbone(self.model, head) if head is not None and settings.freeze_epochs > 0 else None
        self.task = task_from_record(data.inputs, settings.class_weights, settings.label_smoothing)
        self.loss_fn = self.task.train_loss(self.device)
        self.eval_loss_fn = self.task.eval_loss(self.device)
        self.train_static = self._static(settings.batch_size) if graphed else None
        self.train_step = TrainStep(self.model, self.optimizer, loss_fn=self.loss_fn, amp=self.amp, scaler=self.scaler,
                                    lr=self.lr, steps_per_epoch=self.steps_per_epoch,
                                    accum_steps=settings.accum_steps, static=self.train_static, plan=self.graph_plan,
                                    backbone_lr=self.backbone_lr if graphed else None,
                                    sums=self.task.sums(self.device))
        # Inference keeps no activations for backward, so twice the batch fits.
        self.val_batch = 2 * settings.batch_size
        self.val_static = self._static(self.val_batch) if graphed and int(self.val_idx.shape[0]) >= self.val_batch else None
        # TTA views: fixed per seed, the same for every epoch and batch (what `hpsearch predict --tta` repeats).
        views = None
        if settings.tta_val > 1:
            views = tta_rows(tuple(data.input_shape), settings.augment, settings.tta_val, seed, self.device)
        self.eval_step = EvalStep(self.model, loss_fn=self.eval_loss_fn, amp=self.amp, device=self.device,
                                  static=self.val_static, plan=self.graph_plan, tta=views,
                                  sums=self.task.sums(self.device))

    @property
    def graphs(self) -> str:
        """'on' while the steps replay as CUDA graphs, else 'off (reason)': the plan's, or a capture failure's.

        A validation step that cannot be captured says so too ('off (validation: reason)'); it runs eagerly.
        """
        if self.train_step.failed is not None:
            return f"off ({self.train_step.failed})"
        if self.eval_step.failed is not None:
            return f"off (validation: {self.eval_step.failed})"
        return self.graph_plan.status

    def _static(self, batch_size: int) -> tuple[Tensor, Tensor]:
        """Input buffers at fixed addresses for CUDA graphs; the batch producer writes into them."""
        layout = torch.channels_last if self.use_channels_last else torch.contiguous_format
        x = torch.empty((batch_size, *self.data.input_shape), dtype=torch.float32, device=self.device)
        if x.ndim == 4:
            x = x.contiguous(memory_format=layout)
        return x, self.task.label_buffer(batch_size, self.device)

    def _batches(self, indices: Tensor, batch_size: int, train: bool) -> Iterator[tuple[Tensor, Tensor]]:
        batches = self.data.batches(
            indices,
            batch_size,
            shuffle=train,
            augment=self.settings.augment if train else (),
            generator=self.generator,
            drop_last=self.drop_last if train else False,
            out=self.train_static if train else self.val_static,
        )
        if not self.use_channels_last:
            return batches
        # Static buffers are channels_last already; only new tensors (eager steps) are converted.
        return ((x if x.is_contiguous(memory_format=torch.channels_last) else
                 x.contiguous(memory_format=torch.channels_last), y) for x, y in batches)

    def _epoch_lrs(self) -> list[float]:
        start = self.epoch * self.steps_per_epoch
        return [lr_at(start + i, self.total_steps, self.settings, self.steps_per_epoch)
                for i in range(self.steps_per_epoch)]

    def train_epoch(self) -> dict[str, float]:
        """Train one epoch (no validation); returns {"loss", "accuracy", "lr", "steps"}."""
        lrs = self._epoch_lrs()
        held = self._freeze(self.epoch < self.settings.freeze_epochs)
        metrics = train_one_epoch(self.train_step, self._batches(self.train_idx, self.settings.batch_size, train=True),
                                  lrs, between_batches=self.between_batches,
                                  backbone=backbone_factor(self.epoch, self.settings), held=held)
        self.epoch += 1
        return {**metrics, "lr": lrs[max(0, int(metrics["steps"]) - 1)]}

    def _freeze(self, frozen: bool) -> list[nn.Module]:
        """Freeze or thaw the backbone for this epoch (a pure function of the epoch, so resuming anywhere repeats
        it); the norms it holds in eval mode. A change redoes the step's CUDA graphs: they replay what they
        recorded, the backbone's gradients and BatchNorm mode included."""
        if self.backbone is None:
            return []
        if self.backbone.freeze(frozen):
            self.train_step.recapture()
        return self.backbone.norms if frozen else []

    def validate(self) -> dict[str, float]:
        """Loss and accuracy on the validation indices."""
        batches = self._batches(self.val_idx, self.val_batch, train=False)
        return evaluate(self.eval_step, batches, between_batches=self.between_batches)

    def run_epoch(self) -> dict[str, float]:
        """Train one epoch then validate; losses may be nan/inf (the caller decides what to do)."""
        start = time.perf_counter()
        train = self.train_epoch()
        val = self.validate()
        return {
            "epoch": self.epoch,
            **{f"train_{key}": train[key] for key in self.task.train_keys},
            **{f"val_{key}": value for key, value in val.items()},
            "lr": train["lr"],
            "epoch_time": time.perf_counter() - start,
        }

    def sample_steps(self, steps: int) -> None:
        """A few training steps and one validation batch, as a memory probe (the weights change).

        The backbone trains too, frozen or not: the probe measures the epochs with its gradients, the larger ones.
        """
        lrs = self._epoch_lrs()[:steps]
        self._freeze(False)
        train_one_epoch(self.train_step, itertools.islice(self._batches(self.train_idx, self.settings.batch_size, True),
                                                          steps * self.settings.accum_steps), lrs,
                        backbone=self.settings.backbone_lr_scale)
        evaluate(self.eval_step, itertools.islice(self._batches(self.val_idx, self.val_batch, False), 1))

    def close(self) -> None:
        """Free the CUDA graphs' memory and give a frozen backbone its gradients back; the trainer is not used again."""
        self.train_step.close()
        self.eval_step.close()
        if self.backbone is not None:
            self.backbone.freeze(False)

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
        capturable = [group.get("capturable") for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, flag in zip(self.optimizer.param_groups, capturable):
            if self.train_static is not None:  # the saved group holds a copy; graph-ready steps update these tensors
                group["lr"] = self.backbone_lr if group.get("backbone") and self.backbone_lr is not None else self.lr
            elif isinstance(group["lr"], Tensor):
                group["lr"] = float(group["lr"])  # a checkpoint of a graphed run, resumed eagerly
            if flag is not None:
                group["capturable"] = flag  # a CPU checkpoint resumed on CUDA is captured all the same
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
