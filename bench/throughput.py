"""Training throughput: a classic PyTorch loop against hpsearch's engine, in one process.

(a) classic: float tensors in a TensorDataset -> DataLoader(shuffle) -> per-sample torchvision
    RandomCrop(4, reflect) + RandomHorizontalFlip on the CPU -> .to(device) -> fp32 step ->
    loss.item() and accuracy .item() every step.
(b) engine: DeviceData (uint8, resident) + Trainer.train_epoch: device randperm, in-batch crop and
    flip, one host sync per epoch, bf16 autocast + channels_last on CUDA (fp32 on the CPU).

Same model, same initial weights, same optimizer (SGD, momentum 0.9, nesterov, weight decay 5e-4)
and the same augmentation. Synthetic CIFAR-10-shaped data (uint8 3x32x32, 10 classes) for seednet
and resnet18; sklearn's digits for the quickstart's model (mlp width 128, depth 2, batch 64, no
augmentation). Prints one JSON line per measurement (images/s: best of the interleaved repeats; the median and
every run are printed too), then a JSON summary line with the speedups (engine / classic).

    python bench/throughput.py --device cpu --quick
    python bench/throughput.py --device cuda --profile   # + where the engine's time goes, per configuration

``--profile`` adds one JSON line per configuration from ``torch.profiler`` over a few engine
steps (after the timed runs, so it does not disturb them): the ops with the most host time and,
on CUDA, the kernels with the most device time, the kernel launches per step and how busy the
GPU was (a GPU busy well under 100 % with a short kernel list means the loop is launch-bound).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpsearch.data import ArrayData, DeviceData, from_arrays, load_dataset  # noqa: E402
from hpsearch.engine import Trainer, TrainSettings  # noqa: E402
from hpsearch.models import build_model  # noqa: E402
from hpsearch.steps import WARMUP_STEPS  # noqa: E402

LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4


def synthetic_cifar(n: int, seed: int = 0) -> ArrayData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return from_arrays(x, y, 10)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model(name: str, data: ArrayData) -> nn.Module:
    torch.manual_seed(0)
    kwargs = {"width": 128, "depth": 2} if name == "mlp" else {}
    return build_model(name, data.input_shape, data.num_classes, **kwargs)


def classic_epoch(model: nn.Module, data: ArrayData, batch_size: int, device: torch.device, augment: bool, limit: int | None = None) -> int:
    """One epoch of a typical loop; returns the number of images trained on."""
    from torchvision import transforms

    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    dataset = TensorDataset((data.x.float() - mean) / std, data.y)  # normalised once, up front
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, pin_memory=device.type == "cuda")
    aug = transforms.Compose([transforms.RandomCrop(32, padding=4, padding_mode="reflect"), transforms.RandomHorizontalFlip()])
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY)
    model.to(device).train()
    seen, running_loss, correct = 0, 0.0, 0
    for i, (x, y) in enumerate(loader):
        if limit is not None and i >= limit:
            break
        if augment:
            x = torch.stack([aug(img) for img in x])
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        out = model(x)
        loss = criterion(out, y)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
        correct += (out.argmax(1) == y).sum().item()
        seen += y.shape[0]
    return seen


def engine_trainer(model: nn.Module, placed: DeviceData, n: int, batch_size: int, augment: bool) -> Trainer:
    settings = TrainSettings(
        epochs=1, lr=LR, batch_size=batch_size, optimizer="sgd", momentum=MOMENTUM, nesterov=True,
        weight_decay=WEIGHT_DECAY, augment=("crop", "hflip") if augment else (),
    )
    return Trainer(model, placed, torch.arange(n), torch.arange(min(n, 256)), settings, seed=0)


def engine_epoch(trainer: Trainer, limit: int | None = None) -> int:
    if limit is None:
        return int(trainer.train_epoch()["steps"]) * trainer.settings.batch_size
    # Warm-up: a few batches through the same code path, not a whole epoch.
    saved, trainer.train_idx = trainer.train_idx, trainer.train_idx[: limit * trainer.settings.batch_size]
    try:
        return int(trainer.train_epoch()["steps"]) * trainer.settings.batch_size
    finally:
        trainer.train_idx = saved


def _rate(run: Callable[[], int], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    images = run()
    _sync(device)
    return images / (time.perf_counter() - start)


def _busy_us(intervals: list[tuple[int, int]]) -> int:
    """Length of the union of (start, end) intervals: time the device ran at least one kernel."""
    total, reach = 0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total, reach = total + end - start, end
        elif end > reach:
            total, reach = total + end - reach, end
    return total


def profile_engine(name: str, trainer: Trainer, device: torch.device, steps: int = 30) -> dict[str, object]:
    """Profile ``steps`` engine steps: top host ops, and on CUDA top kernels, launches per step, GPU busy."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    engine_epoch(trainer, limit=steps)  # the same shapes once more outside the profile
    _sync(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        done = engine_epoch(trainer, limit=steps) // trainer.settings.batch_size
        _sync(device)
        wall_us = (time.perf_counter() - start) * 1e6
    averages = prof.key_averages()
    # Ops the dispatcher ran at the top level (not inside another aten op): on a GPU, each launches kernels.
    dispatched = [e for e in prof.events() if e.name.startswith("aten::")
                  and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]

    def top(key: str) -> list[dict[str, object]]:
        ranked = sorted(averages, key=lambda e: getattr(e, key), reverse=True)[:12]
        return [{"op": e.key, "us_per_step": round(getattr(e, key) / done, 1), "calls_per_step": round(e.count / done, 2)}
                for e in ranked if getattr(e, key) > 0]

    row: dict[str, object] = {"profile": name, "batch_size": trainer.settings.batch_size, "device": str(device),
                              "steps": done, "wall_us_per_step": round(wall_us / done, 1),
                              "aten_ops_per_step": round(len(dispatched) / done, 1), "host_top": top("self_cpu_time_total")}
    if device.type == "cuda":
        kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
        busy = _busy_us([(e.time_range.start, e.time_range.end) for e in kernels])
        row.update({"kernels_per_step": round(len(kernels) / done, 1), "gpu_busy_us_per_step": round(busy / done, 1),
                    "gpu_busy_fraction": round(busy / wall_us, 3), "device_top": top("self_device_time_total")})
    return row


def measure(name: str, data: ArrayData, batch_size: int, device: torch.device, repeats: int, augment: bool, epochs: int, note: str,
            profile: bool = False) -> dict[str, float]:
    """Time both loops ``repeats`` times, interleaved (A B B A ...); report the best run of each.

    Best-of-N as in ``timeit``: other load on the machine only ever slows a run down.
    """
    n = len(data)
    classic_model, engine_model = _model(name, data), _model(name, data)
    trainer = engine_trainer(engine_model, DeviceData.place(data, device), n, batch_size, augment)
    runs: dict[str, Callable[[], int]] = {
        "classic": lambda: sum(classic_epoch(classic_model, data, batch_size, device, augment) for _ in range(epochs)),
        "engine": lambda: sum(engine_epoch(trainer) for _ in range(epochs)),
    }
    classic_epoch(classic_model, data, batch_size, device, augment, limit=1)  # warm-up
    engine_epoch(trainer, limit=WARMUP_STEPS + 2)  # warm-up: on CUDA the steps are captured as graphs by then
    rates: dict[str, list[float]] = {"classic": [], "engine": []}
    for r in range(repeats):
        for loop in ("classic", "engine") if r % 2 == 0 else ("engine", "classic"):
            rates[loop].append(_rate(runs[loop], device))
    images = {"classic": n * epochs, "engine": (n // batch_size) * batch_size * epochs}
    best = {loop: max(values) for loop, values in rates.items()}
    for loop, values in rates.items():
        row = {
            "model": name, "batch_size": batch_size, "loop": loop, "device": str(device),
            "images_per_s": round(best[loop], 1), "median_images_per_s": round(statistics.median(values), 1),
            "runs": [round(v, 1) for v in values], "images_per_run": images[loop], "dataset_images": n,
            "epochs_per_run": epochs, "augment": augment,
        }
        if loop == "engine":
            row["speedup"] = round(best["engine"] / best["classic"], 3)
        if note:
            row["note"] = note
        print(json.dumps(row), flush=True)
    if profile:
        print(json.dumps(profile_engine(name, trainer, device)), flush=True)
    return {"classic": best["classic"], "engine": best["engine"], "ratio": best["engine"] / best["classic"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    parser.add_argument("--quick", action="store_true", help="5,000 synthetic images (resnet18 on the CPU: 512 images, at most 2 repeats)")
    parser.add_argument("--models", default="seednet,resnet18,mlp", help="comma list of seednet, resnet18, mlp (mlp = the quickstart on digits)")
    parser.add_argument("--batch-sizes", default="64,512", help="for seednet and resnet18; the quickstart always uses 64")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="also profile a few engine steps per configuration (torch.profiler)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else "cpu" if args.device == "auto" else args.device)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    batch_sizes = sorted(int(b) for b in args.batch_sizes.split(","))
    header = {
        "torch": torch.__version__, "device": str(device), "python": platform.python_version(),
        "threads": torch.get_num_threads(), "quick": args.quick,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    print(json.dumps({"config": header}), flush=True)
    speedups: dict[str, float] = {}
    for name in models:
        if name == "mlp":
            digits = load_dataset("digits")
            r = measure("mlp", digits, 64, device, args.repeats, augment=False, epochs=10, note="quickstart: digits, mlp width 128 depth 2, 10 epochs per run",
                        profile=args.profile)
            speedups["mlp/64"] = r["ratio"]
            continue
        n, repeats, note = 50_000, args.repeats, ""
        if args.quick:
            slow = name == "resnet18" and device.type == "cpu"
            n, repeats = (512, min(2, args.repeats)) if slow else (5_000, args.repeats)
            note = f"--quick: {n} synthetic images" + (f", {repeats} repeats (resnet18 on the CPU is slow)" if slow else "")
        data = synthetic_cifar(n)
        for bs in batch_sizes:
            r = measure(name, data, bs, device, repeats, augment=True, epochs=1, note=note, profile=args.profile)
            speedups[f"{name}/{bs}"] = r["ratio"]
    seednet = [k for k in speedups if k.startswith("seednet/")]
    summary = {
        "speedup": round(speedups[seednet[-1]], 3) if seednet else None,
        "speedup_basis": seednet[-1] if seednet else None,
        "speedup_quickstart": round(speedups["mlp/64"], 3) if "mlp/64" in speedups else None,
        "speedups": {k: round(v, 3) for k, v in speedups.items()},
        "device": str(device),
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
