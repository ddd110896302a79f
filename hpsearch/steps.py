"""One training step and one validation step, run eagerly or replayed as CUDA graphs.

Small batches on a fast GPU are bound by kernel launches, not arithmetic: an H200 ran seednet at
batch 64 only 6.7 % busy, ~95 kernels a step at ~35 us of host time each (bench/RESULTS.md). A CUDA
graph replays all of a step's kernels with one launch. For that, everything a step reads lives at
a fixed address: the batch is written into static input buffers, and every per-step scalar (the
learning rate, the step index, the metric sums) is a device tensor that the step itself updates.

The CPU runs exactly this step code, eagerly; only capture and replay are CUDA-only. A model that
cannot be captured (host syncs, data-dependent shapes) falls back to the same eager step, and
:attr:`TrainStep.failed` (and :attr:`EvalStep.failed`) say why. Whether to capture at all is a
:class:`GraphPlan`, made once per trainer by :func:`plan_graphs`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from hpsearch.data.tta import tta_logits

__all__ = ["EAGER", "WARMUP_STEPS", "EpochSums", "EvalStep", "GraphPlan", "TrainStep", "plan_graphs"]

WARMUP_STEPS = 3  # eager steps before capture: cuDNN has autotuned, grads and optimizer state exist


@dataclass(frozen=True)
class GraphPlan:
    """Whether a trainer's steps are captured as CUDA graphs, decided once; both step classes take it as given.

    ``required`` (``cuda_graphs: on``) makes a capture failure an error instead of an eager fallback;
    ``reason`` says why nothing is captured when ``capture`` is False.
    """

    capture: bool
    required: bool = False
    reason: str = ""

    @property
    def status(self) -> str:
        """'on', or 'off (reason)': what the trial records before any capture was tried."""
        return "on" if self.capture else f"off ({self.reason})"


EAGER = GraphPlan(capture=False, reason="not requested")  # steps built directly, outside a Trainer


def plan_graphs(mode: str, device: torch.device, full_batches: bool) -> GraphPlan:
    """The plan for ``train.cuda_graphs`` = ``mode`` on ``device``; only full training batches can replay."""
    required = mode == "on"
    if mode == "off":
        return GraphPlan(False, required, "train.cuda_graphs: off")
    if torch.device(device).type != "cuda":
        return GraphPlan(False, required, "not on CUDA")
    if not full_batches:
        return GraphPlan(False, required, "fewer training samples than one batch")
    return GraphPlan(True, required)


class EpochSums:
    """Loss and correct-prediction sums of an epoch, kept on the device and read once at its end.

    Classification's; every task's sums (`hpsearch.tasks`) have this interface: reset, add, read.
    """

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.loss.zero_()
        self.correct.zero_()

    def add(self, loss: Tensor, logits: Tensor, y: Tensor) -> None:
        """Add a batch: its mean loss times its size, and its correct predictions (no host sync)."""
        self.loss.add_(loss.detach(), alpha=int(y.shape[0]))
        self.correct.add_((logits.detach().argmax(1) == y).sum())

    def read(self, seen: int) -> dict[str, float]:
        """{"loss", "accuracy"} over `seen` samples (nan when none): the epoch's one host sync."""
        if not seen:
            return {"loss": math.nan, "accuracy": math.nan}
        loss, correct = torch.stack([self.loss, self.correct.double()]).tolist()
        return {"loss": loss / seen, "accuracy": correct / seen}


class _Graphed:
    """Run `fn` eagerly for a few warm-up calls (on a side stream, as CUDA requires), then capture and replay.

    `fn` must take no arguments and read only tensors at fixed addresses. A capture that fails
    leaves `fn` eager for good and keeps the reason; an out-of-memory error is raised as usual.
    """

    def __init__(self, fn: Callable[[], None], pool: Any, warmup: int, required: bool) -> None:
        self.fn = fn
        self.pool = pool
        self.warmup_left = warmup
        self.required = required
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed: str | None = None

    def __call__(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        elif self.failed is not None:
            self.fn()
        elif self.warmup_left > 0:
            self.warmup_left -= 1
            self._warm()
        else:
            self._capture()
            self.__call__()

    def _warm(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.fn()
        torch.cuda.current_stream().wait_stream(side)

    def _record(self) -> torch.cuda.CUDAGraph:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            self.fn()
        return graph

    def _capture(self) -> None:
        try:
            graph = self._record()
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - any capture error: the same step runs eagerly instead
            self.failed = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            if self.required:
                raise RuntimeError(f"train.cuda_graphs is on, but the step cannot be captured "
                                   f"({self.failed}); set cuda_graphs: auto to fall back to eager steps") from exc
            return
        self.graph = graph

    def close(self) -> None:
        if self.graph is not None:
            self.graph.reset()
            self.graph = None

    def again(self, warmup: int) -> None:
        """Drop the captured graph and capture anew after ``warmup`` eager calls: ``fn`` now launches other
        kernels (a graph replays exactly the kernels it recorded). One that failed stays eager."""
        self.close()
        if self.failed is None:
            self.warmup_left = warmup


class TrainStep:
    """Forward/backward of one micro-batch and the optimizer step, eager or as two CUDA graphs.

    Without `static` buffers the step is a plain eager step: the learning rate of each optimizer
    step is set on the host, gradients are set to None after it. With `static` buffers (x, y) the
    step is graph-ready: the optimizer must take `lr` (a 1-element float32 tensor on the device)
    as its learning rate, :meth:`advance` sets it from `lr_schedule[step_index]` (the epoch's rates,
    loaded by :meth:`begin_epoch`) and moves the index on, all on the device, and gradients are
    zeroed in place. Where `plan` captures, batches written into the buffers then replay as graphs; any other
    batch (a last partial one) runs the same code eagerly. Param groups marked ``backbone`` train at the
    epoch's backbone factor times that rate (:meth:`begin_epoch`; on the device, `backbone_lr` is their tensor).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, loss_fn: Callable[[Tensor, Tensor], Tensor],
                 amp: torch.dtype | None, scaler: torch.amp.GradScaler | None, lr: Tensor, steps_per_epoch: int,
                 accum_steps: int, static: tuple[Tensor, Tensor] | None = None, plan: GraphPlan = EAGER,
                 backbone_lr: Tensor | None = None, sums: Any = None) -> None:
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.amp, self.scaler, self.accum_steps = amp, scaler, accum_steps
        device = lr.device
        self.lr = lr
        self.backbone_lr = backbone_lr
        self.backbone_scale = torch.ones(1, dtype=torch.float32, device=device)
        self._host_backbone = 1.0
        self.lr_schedule = torch.zeros(steps_per_epoch, dtype=torch.float32, device=device)
        self._staged: Tensor | None = None
        self._host_lrs: list[float] = []
        self.step_index = torch.zeros(1, dtype=torch.int64, device=device)
        self.sums = EpochSums(device) if sums is None else sums  # the task's sums (hpsearch.tasks); these: classification
        self.static = static
        self._micro_graph: _Graphed | None = None
        self._step_graph: _Graphed | None = None
        if static is not None and plan.capture:  # without the plan's say-so static buffers just run eagerly
            pool = torch.cuda.graph_pool_handle()
            self._micro_graph = _Graphed(lambda: self._micro(*static), pool, WARMUP_STEPS, plan.required)
            # GradScaler's step is a host-side state machine: with fp16 only forward/backward is captured.
            if scaler is None:
                self._step_graph = _Graphed(self._advance, pool, WARMUP_STEPS, plan.required)

    def begin_epoch(self, lrs: list[float], backbone: float = 1.0) -> None:
        """Zero the metric sums and load this epoch's learning rates, one per optimizer step.

        ``backbone`` is the backbone groups' factor on those rates this epoch (0 while frozen). The rates go
        through pinned memory without waiting; the previous epoch's upload finished long ago (the epoch
        ended with a host sync), so its staging tensor can be dropped.
        """
        self.sums.reset()
        if len(lrs) > self.lr_schedule.shape[0]:
            raise ValueError(f"{len(lrs)} learning rates for a schedule of {self.lr_schedule.shape[0]} steps")
        self._host_backbone = backbone
        if self.static is None:
            self._host_lrs = list(reversed(lrs))  # popped one per step
            return
        self.step_index.zero_()
        self.backbone_scale.fill_(backbone)  # outside any capture: the graphs read this tensor's address
        host = torch.tensor(lrs, dtype=torch.float32)
        if self.lr_schedule.device.type == "cuda":
            host = host.pin_memory()
        self._staged = host
        self.lr_schedule[: len(lrs)].copy_(host, non_blocking=True)

    def micro(self, x: Tensor, y: Tensor) -> None:
        """Forward and backward of one micro-batch (gradients accumulate), metrics added to the sums."""
        if self._micro_graph is not None and self.static is not None and x is self.static[0]:
            self._micro_graph()
        else:
            self._micro(x, y)

    def advance(self) -> None:
        """One optimizer step at the scheduled learning rate; gradients zeroed in place."""
        if self._step_graph is not None:
            self._step_graph()
        else:
            self._advance()

    def _micro(self, x: Tensor, y: Tensor) -> None:
        # cache_enabled=False: autocast's weight cache would hold casts made inside a capture.
        with torch.autocast(x.device.type, dtype=self.amp, enabled=self.amp is not None, cache_enabled=False):
            logits = self.model(x)
            loss = self.loss_fn(logits, y)
        self.sums.add(loss, logits, y)
        scaled = loss / self.accum_steps if self.accum_steps > 1 else loss
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()

    def _advance(self) -> None:
        graph_ready = self.static is not None
        if graph_ready:
            torch.index_select(self.lr_schedule, 0, self.step_index, out=self.lr)
            if self.backbone_lr is not None:
                torch.mul(self.lr, self.backbone_scale, out=self.backbone_lr)
        else:  # a float per step: cheaper than a device tensor where nothing is captured
            lr = self._host_lrs.pop() if self._host_lrs else self._head_lr()
            for group in self.optimizer.param_groups:
                group["lr"] = lr * self._host_backbone if group.get("backbone") else lr
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        # Graph-ready: zeroed in place, since captured backward passes accumulate into these very tensors.
        self.optimizer.zero_grad(set_to_none=not graph_ready)
        if graph_ready:
            self.step_index.add_(1)

    def recapture(self) -> None:
        """The step's work changed (a frozen backbone thaws: its gradients and BatchNorm's batch statistics come
        back): the next calls warm up eagerly again and capture graphs of what the step does now."""
        for graphed in (self._micro_graph, self._step_graph):
            if graphed is not None:
                graphed.again(WARMUP_STEPS)

    def _head_lr(self) -> float:
        head = [g["lr"] for g in self.optimizer.param_groups if not g.get("backbone")]
        return float(head[0] if head else self.optimizer.param_groups[0]["lr"])

    @property
    def failed(self) -> str | None:
        """Why a training graph could not be captured, if one could not (that step then runs eagerly)."""
        return _first_failure(self._micro_graph, self._step_graph)

    def close(self) -> None:
        """Free the graphs' memory (the trial is over)."""
        for graphed in (self._micro_graph, self._step_graph):
            if graphed is not None:
                graphed.close()


class EvalStep:
    """Forward of one validation batch with its loss and accuracy added to the sums, eager or replayed."""

    def __init__(self, model: nn.Module, *, loss_fn: Callable[[Tensor, Tensor], Tensor], amp: torch.dtype | None,
                 device: torch.device, static: tuple[Tensor, Tensor] | None = None, plan: GraphPlan = EAGER,
                 tta: Tensor | None = None, sums: Any = None) -> None:
        self.model, self.loss_fn, self.amp = model, loss_fn, amp
        self.tta = tta  # (K - 1, H * W) pixel maps of the extra views, fixed: capturable index_selects
        self.sums = EpochSums(device) if sums is None else sums
        self.static = static
        self._graph: _Graphed | None = None
        if static is not None and plan.capture:
            self._graph = _Graphed(lambda: self._forward(*static), torch.cuda.graph_pool_handle(), 1, plan.required)

    def __call__(self, x: Tensor, y: Tensor) -> None:
        if self._graph is not None and self.static is not None and x is self.static[0]:
            self._graph()
        else:
            self._forward(x, y)

    @property
    def failed(self) -> str | None:
        """Why the validation step could not be captured, if it could not."""
        return _first_failure(self._graph)

    def _forward(self, x: Tensor, y: Tensor) -> None:
        with torch.no_grad(), torch.autocast(x.device.type, dtype=self.amp, enabled=self.amp is not None,
                                             cache_enabled=False):
            logits = self.model(x) if self.tta is None else tta_logits(self.model, x, self.tta)
            self.sums.add(self.loss_fn(logits.float(), y), logits, y)

    def close(self) -> None:
        """Free the graph's memory (the trial is over)."""
        if self._graph is not None:
            self._graph.close()


def _first_failure(*graphs: _Graphed | None) -> str | None:
    return next((g.failed for g in graphs if g is not None and g.failed is not None), None)
