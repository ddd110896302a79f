"""Does compiling the model pay for a trial? torch.compile against eager, per epoch, in one process.

A search trains many short trials, each a new model with other hyperparameters, so a compiler
pays only when its per-epoch gain repays the compile time inside one trial (or when the compile
is reused by the next trial). For each configuration this runs, in one process:

1. eager: a trial of ``--epochs`` epochs (train + validate, as ``Trainer.run_epoch``);
2. compiled: the same trial with ``torch.compile(model, mode=...)`` (``reduce-overhead``, i.e.
   CUDA graphs, on CUDA; the default inductor mode on the CPU);
3. compiled, next trial: a new model with another dropout and batch size, as the next trial
   would build it (shows what is recompiled and what the compile caches save).

Prints one JSON line per configuration: seconds per epoch (each epoch), the compile overhead
(first-epoch excess over the steady compiled epoch), the steady speedup, the break-even epoch
count, and one summary line.

    python bench/compile.py --device cpu
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from throughput import _sync, synthetic_cifar  # noqa: E402  (bench/ is the script's folder)

from hpsearch.data import ArrayData, DeviceData, load_dataset  # noqa: E402
from hpsearch.engine import Trainer, TrainSettings  # noqa: E402
from hpsearch.models import build_model  # noqa: E402


def trial_epochs(name: str, data: ArrayData, placed: DeviceData, batch_size: int, dropout: float, epochs: int,
                 mode: str | None) -> list[float]:
    """Seconds of each epoch (train + validate) of one trial; ``mode`` None trains eagerly."""
    torch.manual_seed(0)
    kwargs = {"width": 128, "depth": 2} if name == "mlp" else {}
    model = build_model(name, data.input_shape, data.num_classes, dropout=dropout, **kwargs)
    n = len(data)
    settings = TrainSettings(epochs=epochs, lr=0.05, batch_size=batch_size, optimizer="sgd", momentum=0.9,
                             nesterov=True, weight_decay=5e-4, augment=("crop", "hflip") if data.is_image and name != "mlp" else ())
    split = n * 4 // 5
    trainer = Trainer(model, placed, torch.arange(split), torch.arange(split, n), settings, seed=0)
    if mode is not None:
        trainer.model = torch.compile(trainer.model, mode=mode)
    seconds = []
    for _ in range(epochs):
        _sync(placed.device)
        start = time.perf_counter()
        trainer.run_epoch()
        _sync(placed.device)
        seconds.append(time.perf_counter() - start)
    return seconds


def measure(name: str, data: ArrayData, device: torch.device, batch_size: int, epochs: int, mode: str) -> dict[str, object]:
    placed = DeviceData.place(data, device)
    trial_epochs(name, data, placed, batch_size, 0.1, 1, None)  # warm-up: allocator, kernels, cuDNN
    eager = trial_epochs(name, data, placed, batch_size, 0.1, epochs, None)
    compiled = trial_epochs(name, data, placed, batch_size, 0.1, epochs, mode)
    other_batch = batch_size * 2
    following = trial_epochs(name, data, placed, other_batch, 0.3, epochs, mode)
    eager_epoch = statistics.median(eager[1:])
    compiled_epoch = statistics.median(compiled[1:])
    overhead = compiled[0] - compiled_epoch
    gain = eager_epoch - compiled_epoch
    return {
        "model": name, "batch_size": batch_size, "device": str(device), "mode": mode, "dataset_images": len(data),
        "eager_s": [round(s, 3) for s in eager], "compiled_s": [round(s, 3) for s in compiled],
        "next_trial_s": [round(s, 3) for s in following], "next_trial": {"batch_size": other_batch, "dropout": 0.3},
        "compile_overhead_s": round(overhead, 2), "next_trial_overhead_s": round(following[0] - statistics.median(following[1:]), 2),
        "steady_speedup": round(eager_epoch / compiled_epoch, 3),
        "break_even_epochs": round(overhead / gain, 1) if gain > 0 else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--configs", default="mlp:64,seednet:64,seednet:512",
                        help="model:batch pairs; mlp is the quickstart on digits, seednet uses synthetic CIFAR-10 data")
    parser.add_argument("--images", type=int, default=5_000, help="synthetic CIFAR-10-shaped images for seednet/resnet18")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else "cpu" if args.device == "auto" else args.device)
    mode = "reduce-overhead" if device.type == "cuda" else "default"
    print(json.dumps({"config": {"torch": torch.__version__, "device": str(device), "python": platform.python_version(),
                                 "threads": torch.get_num_threads(), "mode": mode, "epochs": args.epochs,
                                 "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}}), flush=True)
    rows = []
    for pair in args.configs.split(","):
        name, batch = pair.split(":")
        data = load_dataset("digits") if name == "mlp" else synthetic_cifar(args.images)
        row = measure(name, data, device, int(batch), args.epochs, mode)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(json.dumps({"break_even_epochs": {f"{r['model']}/{r['batch_size']}": r["break_even_epochs"] for r in rows},
                      "steady_speedup": {f"{r['model']}/{r['batch_size']}": r["steady_speedup"] for r in rows}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
