"""What per-epoch checkpoints cost the training loop: inline writes against the background writer.

Every epoch a trial submits its resumable state (model, optimizer, RNG, history) and, when the
metric improved, its best weights (model + optimizer). hpsearch used to write both inline
(``save_checkpoint``: torch.save + fsync + rename) before the next epoch could start; it now hands
a host snapshot to :class:`hpsearch.checkpoints.CheckpointWriter`, which writes on a thread.

One process, three loops interleaved (A B C C B A ...), each ``--epochs`` epochs of the same
training work (real optimizer steps of the quickstart's MLP on digits, ``--epoch-s`` seconds
calibrated once, on ``--work-threads`` torch threads) followed by:

- none: no checkpoint (the baseline);
- inline: ``save_checkpoint`` of the best and the resume payload;
- background: ``CheckpointWriter.submit`` of both, and one ``flush`` at the end (inside the timing).

Payloads are the real ``Trainer.state_dict()`` of seednet and resnet18 (CIFAR-10 shape, SGD with
momentum). Prints one JSON line per loop (best-of-repeats seconds per epoch, the overhead over ``none``,
and the median seconds per epoch the training thread spent inside checkpoint calls, the final
flush included) and a summary line.

    python bench/checkpoint.py
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpsearch.checkpoints import CheckpointWriter, save_checkpoint  # noqa: E402
from hpsearch.data import DeviceData, from_arrays, load_dataset  # noqa: E402
from hpsearch.engine import Trainer, TrainSettings  # noqa: E402
from hpsearch.models import build_model  # noqa: E402


def payloads(model_name: str) -> tuple[dict[str, Any], dict[str, Any], float]:
    """(best, resume, MiB of the resume payload) as objective.py builds them, after one real step."""
    g = torch.Generator().manual_seed(0)
    data = from_arrays(torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(64) % 10, 10)
    placed = DeviceData.place(data, torch.device("cpu"))
    torch.manual_seed(0)
    model = build_model(model_name, data.input_shape, 10)
    settings = TrainSettings(epochs=1, lr=0.05, batch_size=64, optimizer="sgd", momentum=0.9, weight_decay=5e-4)
    trainer = Trainer(model, placed, torch.arange(64), torch.arange(8), settings, seed=0)
    trainer.train_epoch()
    base = {"params": {"lr": 0.05}, "model_spec": {"name": model_name}, "study": "bench", "trial": 0}
    best = {**base, "model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict(), "epoch": 1,
            "metric": {"name": "val_accuracy", "value": 0.5}}
    history = [{"epoch": e, "train_loss": 1.0, "val_accuracy": 0.5} for e in range(1, 13)]
    resume = {**base, "trainers": [trainer.state_dict()], "history": history, "best": 0.5, "best_epoch": 1}
    size = sum(t.nbytes for t in _tensors(resume)) / 2**20
    return best, resume, size


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, list | tuple):
        return [t for v in obj for t in _tensors(v)]
    return []


class Work:
    """A fixed amount of real training: optimizer steps of the quickstart MLP on digits."""

    def __init__(self) -> None:
        digits = load_dataset("digits")
        self.x = (digits.x.float() / 16.0)[:64]
        self.y = digits.y[:64]
        torch.manual_seed(0)
        self.model = build_model("mlp", digits.input_shape, 10, width=128, depth=2)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.steps = 1

    def run(self) -> None:
        for _ in range(self.steps):
            loss = nn.functional.cross_entropy(self.model(self.x), self.y)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def calibrate(self, seconds: float) -> None:
        """Set the step count so that one run() takes about ``seconds`` on an idle machine (best of 3)."""
        self.steps = 200
        best = min(_timed(self.run) for _ in range(3))
        self.steps = max(1, round(200 * seconds / best))


def _timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def loops(work: Work, best: dict[str, Any], resume: dict[str, Any], folder: Path, epochs: int) -> dict[str, Callable[[], float]]:
    """Each loop runs ``epochs`` epochs and returns the seconds the training thread spent in checkpoint calls."""
    best_path, resume_path = folder / "best.pt", folder / "resume.pt"
    writer = CheckpointWriter()

    def none() -> float:
        for _ in range(epochs):
            work.run()
        return 0.0

    def inline() -> float:
        blocked = 0.0
        for _ in range(epochs):
            work.run()
            blocked += _timed(lambda: (save_checkpoint(best_path, best), save_checkpoint(resume_path, resume)))
        return blocked

    def background() -> float:
        blocked = 0.0
        for _ in range(epochs):
            work.run()
            blocked += _timed(lambda: writer.submit({best_path: best, resume_path: resume}))
        return blocked + _timed(writer.flush)

    return {"none": none, "inline": inline, "background": background}


def measure(model_name: str, work: Work, args: argparse.Namespace, folder: Path) -> dict[str, float]:
    best, resume, size = payloads(model_name)
    runs = loops(work, best, resume, folder, args.epochs)
    order = list(runs)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    blocked: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(args.repeats):
        for name in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            blocked[name].append(runs[name]() / args.epochs)
            seconds[name].append((time.perf_counter() - start) / args.epochs)
    per_epoch = {name: min(values) for name, values in seconds.items()}
    for name, values in seconds.items():
        print(json.dumps({
            "payload_model": model_name, "resume_mib": round(size, 1), "loop": name, "epochs": args.epochs,
            "work_s_per_epoch": args.epoch_s, "s_per_epoch": round(per_epoch[name], 4),
            "median_s_per_epoch": round(statistics.median(values), 4),
            "overhead_s_per_epoch": round(per_epoch[name] - per_epoch["none"], 4),
            "blocked_s_per_epoch": round(statistics.median(blocked[name]), 4),
            "runs": [round(v, 4) for v in values],
        }), flush=True)
    return {**per_epoch, **{f"blocked_{name}": statistics.median(v) for name, v in blocked.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="seednet,resnet18")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per timed loop")
    parser.add_argument("--epoch-s", type=float, default=1.0, help="seconds of training work per epoch")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary folder under the current one)")
    parser.add_argument("--work-threads", type=int, default=1,
                        help="torch threads of the training work (1: like a GPU worker, whose training thread drives the GPU "
                             "from one core; all cores: a CPU worker, which leaves the writer no idle core)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.work_threads)
    print(json.dumps({"config": {"torch": torch.__version__, "python": platform.python_version(),
                                 "threads": torch.get_num_threads(), **vars(args)}}), flush=True)
    work = Work()
    work.calibrate(args.epoch_s)
    summary: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=args.dir or ".", prefix=".bench-checkpoint-") as folder:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            per_epoch = measure(name, work, args, Path(folder))
            summary[name] = {loop: {"overhead_s_per_epoch": round(per_epoch[loop] - per_epoch["none"], 4),
                                    "blocked_s_per_epoch": round(per_epoch[f"blocked_{loop}"], 4)}
                             for loop in ("inline", "background")}
    print(json.dumps({"checkpoint_cost": summary}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
