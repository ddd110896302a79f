"""`hpsearch predict`: a trial's best checkpoint applied to new inputs, one CSV row per input.

Inputs: a folder of images, a ``.npy`` array, the dataset's own test split (``test``, torchvision sets) or
the trial's validation split (``val``: the study's data and split seed, rebuilt exactly as the trial
split it; with ``cv_folds`` or ``bootstrap`` the first split's, whose model the checkpoint holds; rows named by
file where the data has files). Raw inputs are normalised
by ``data.prepare_inputs``, the formula training batches use, and scored in the trial's validation batch
size, so ``--input val`` reproduces the recorded validation accuracy (on the CPU, in fp32, where the trial
validated). With ``--tta K`` the logits are averaged over the original and K - 1 views of the study's own
``train.augment`` (``data.tta``), fixed by the trial's seed, as ``train.tta_val`` scores validation.

A bridge module (config, study records and torch); the CLI imports it only for this verb.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from optuna.trial import FrozenTrial

from hpsearch import records
from hpsearch.config import StudyConfig
from hpsearch.data import inputs_record, load_test_split, prepare_inputs
from hpsearch.data.tta import tta_logits, tta_rows
from hpsearch.engine import load_checkpoint
from hpsearch.errors import ConfigError, DataError, HpsearchError
from hpsearch.models import build_model
from hpsearch.names import TRAIN_PARAMS
from hpsearch.settings import settings_from
from hpsearch.tasks import task_from_record
from hpsearch.preflight import load_pool, split_data

__all__ = ["Inputs", "decode_predictions", "input_notes", "load_inputs", "pick_trial", "predict_to_csv"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class Inputs:
    """What is predicted: raw samples (the dataset's units) and the name of each CSV row."""

    x: torch.Tensor
    names: list[str]


def pick_trial(trials: list[FrozenTrial], best: FrozenTrial | None, number: int | None) -> tuple[FrozenTrial, Path]:
    """The named trial (or the best one) and its best checkpoint on disk; a one-line error when there is none."""
    if number is None:
        if best is None:
            raise ConfigError("--trial: the study has no completed trial yet; run it first or name a trial with --trial N")
        trial, flag = best, f"best trial {best.number}"
    else:
        found = [t for t in trials if t.number == number]
        if not found:
            raise ConfigError(f"--trial {number}: the study has no trial {number} (trials 0 to {len(trials) - 1}); "
                              f"`hpsearch status` lists them")
        trial, flag = found[0], f"--trial {number}"
    path = records.checkpoint(trial)
    if not path:
        raise ConfigError(f"{flag}: trial {trial.number} has no checkpoint (train.checkpoint was off, or it stopped "
                          f"before its first epoch ended); name another with --trial N")
    if not Path(path).is_file():
        raise ConfigError(f"{flag}: checkpoint {path} not found (relative paths are taken from {Path.cwd()}); run "
                          f"from the folder the study ran in, or restore the file")
    return trial, Path(path)


def load_inputs(cfg: StudyConfig, spec: str, record: Mapping[str, Any]) -> Inputs:
    """The inputs ``--input spec`` names: 'val', 'test', a ``.npy`` file or a folder of images."""
    if spec == "val":
        return _validation_split(cfg, record)
    if spec == "test":
        try:
            data = load_test_split(cfg.data.dataset, cfg.data.root, cfg.data.download, cfg.data.image_size)
        except DataError as exc:
            raise DataError(f"--input test: {exc}{_folder_hint(spec)}") from None
        return Inputs(data.x, [str(i) for i in range(len(data))])
    path = Path(spec).expanduser()
    if path.is_dir():
        return _image_folder(path, record)
    if path.suffix == ".npy" and path.is_file():
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"--input {spec}: cannot read the array ({' '.join(str(exc).split())[:200]}); "
                            f"save it with numpy.save") from None
        return Inputs(torch.from_numpy(np.ascontiguousarray(array)), [str(i) for i in range(len(array))])
    raise DataError(f"--input {spec}: not a folder of images, a .npy file, 'test' or 'val'; "
                    f"give one of those (the path is taken from {Path.cwd()})")


def _validation_split(cfg: StudyConfig, record: Mapping[str, Any]) -> Inputs:
    pool = load_pool(cfg)
    if _fingerprint(inputs_record(pool)) != _fingerprint(record):
        raise DataError(f"--input val: {cfg.source}: the data {cfg.data.dataset} under {cfg.data.root} is not what the "
                        f"trial trained on (other shape, classes or statistics), so its split cannot be rebuilt; "
                        f"restore the data or predict on a folder or .npy file")
    _, val_idx = split_data(cfg, pool.strata)[0]  # the checkpoint's model is the first fold's
    names = [pool.sample_names[i] if pool.sample_names else str(i) for i in val_idx.tolist()]
    return Inputs(pool.x.index_select(0, val_idx), names)


def _folder_hint(spec: str) -> str:
    """For a keyword that is also the name of a folder here: how to mean the folder."""
    return f" (for the folder {spec}/ here, write --input ./{spec})" if Path(spec).is_dir() else ""


def input_notes(cfg: StudyConfig, spec: str) -> list[str]:
    """What a user comparing ``--input val`` with the trial's value should know: the folder the keyword shadows,
    and that with folds or bootstrap splits the rows are the first split's while the value is their mean."""
    if spec != "val":
        return []
    hint = _folder_hint(spec)
    notes = [f"--input val is the trial's validation split{hint}"] if hint else []
    split = cfg.data.split
    for key, what in (("cv_folds", "fold"), ("bootstrap", "bootstrap split")):
        if split[key] is not None:
            notes.append(f"data.{key}: {split[key]}: the rows are {what} 1's validation samples, whose model the "
                         f"checkpoint holds; they score the trial's split_values[0], its value is the mean over the "
                         f"{split[key]} {what}s")
    return notes


def _fingerprint(record: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(record.get(k) for k in ("mean", "std", "input_shape", "dtype", "num_classes", "class_names"))


def _image_folder(root: Path, record: Mapping[str, Any]) -> Inputs:
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.functional import pil_to_tensor

    shape = tuple(record["input_shape"])
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise DataError(f"--input {root}: a folder of images, but the model takes samples of shape {shape}; "
                        f"give a .npy file of that shape")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"--input {root}: no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder")
    x = torch.empty((len(files), *shape), dtype=torch.uint8)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as image:
                image = image.convert("L" if shape[0] == 1 else "RGB")
                if image.size != (shape[2], shape[1]):  # PIL sizes are (width, height)
                    image = image.resize((shape[2], shape[1]), resample=Image.Resampling.BILINEAR)
                x[i] = pil_to_tensor(image)
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"--input {root}: cannot read image {path} ({exc}); remove it or replace it") from None
    return Inputs(x, [str(p.relative_to(root)) for p in files])


def decode_predictions(outputs: torch.Tensor, inputs: Mapping[str, Any]) -> list[str]:
    """What a CSV row says for each model output, as the task decodes it (`hpsearch.tasks`): the class name of the
    highest logit, the digit string without its blanks (multihead), the values in the data's units (regression)."""
    return task_from_record(inputs).rows(outputs)


def build_trained_model(checkpoint: Mapping[str, Any]) -> torch.nn.Module:
    """The checkpoint's model with its best weights, in eval mode."""
    spec = checkpoint["model_spec"]
    model = build_model(spec["name"], tuple(spec["input_shape"]), spec["num_classes"], dropout=spec.get("dropout", 0.0),
                        **spec.get("kwargs", {}))
    model.load_state_dict(checkpoint["model"])
    return model.eval()


def predict_logits(model: torch.nn.Module, x: torch.Tensor, record: Mapping[str, Any], batch_size: int,
                   views: torch.Tensor) -> torch.Tensor:
    """Float32 logits (or TTA-averaged logits) of raw inputs ``x``, batch by batch, on the model's device."""
    device = next(model.parameters()).device
    outputs = []
    with torch.no_grad():
        for start in range(0, int(x.shape[0]), batch_size):
            batch = prepare_inputs(x[start:start + batch_size], record).to(device)
            outputs.append(tta_logits(model, batch, views.to(device)).cpu())
    return torch.cat(outputs) if outputs else torch.empty(task_from_record(record).output_shape(0))


def check_out(out: Path) -> None:
    """An --out that cannot be written is refused before any work."""
    parent = out.absolute().parent
    if out.is_dir() or not parent.is_dir() or not os.access(parent, os.W_OK) or (
            out.exists() and not os.access(out, os.W_OK)):
        why = "a folder" if out.is_dir() else "no such folder" if not parent.is_dir() else "not writable"
        raise ConfigError(f"--out: {out} cannot be written ({why}); choose another --out (a file in a folder you "
                          f"can write)")


def predict_to_csv(cfg: StudyConfig, trial: FrozenTrial, checkpoint_path: Path, spec: str, out: Path,
                   tta: int = 1) -> int:
    """Predict ``--input spec`` with the trial's best checkpoint into the CSV ``out``; the number of rows written."""
    check_out(out)
    checkpoint = load_checkpoint(checkpoint_path)
    record = checkpoint.get("inputs")
    if record is None:
        raise HpsearchError(f"checkpoint {checkpoint_path} has no input record (saved by an older hpsearch); "
                            f"use the exported load_model.py and normalise inputs yourself")
    views = _views(checkpoint, tta, checkpoint_path)
    inputs = load_inputs(cfg, spec, record)
    model = build_trained_model(checkpoint).to(_device(cfg))
    params = checkpoint["params"]
    settings = settings_from(dict(cfg.train), {k: params[k] for k in TRAIN_PARAMS if k in params})
    batch_size = 2 * settings.batch_size  # the trial's validation batch (Trainer.val_batch)
    try:
        logits = predict_logits(model, inputs.x, record, batch_size, views)
    except DataError as exc:
        raise DataError(f"--input {spec}: {exc}") from None
    rows = decode_predictions(logits, record)
    try:
        with out.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["input", "prediction"])
            writer.writerows(zip(inputs.names, rows))
    except OSError as exc:
        raise ConfigError(f"--out: {out} cannot be written ({exc.strerror or exc}); choose another --out") from None
    return len(rows)


def _views(checkpoint: Mapping[str, Any], tta: int, path: Path) -> torch.Tensor:
    if tta == 1:
        return tta_rows((), (), 1, 0)
    saved = checkpoint.get("tta")
    if saved is None:
        raise HpsearchError(f"--tta {tta}: checkpoint {path} records no augmentations (saved by an older hpsearch); "
                            f"use --tta 1")
    try:
        return tta_rows(checkpoint["inputs"]["input_shape"], saved["augment"], tta, int(saved["seed"]))
    except DataError as exc:
        raise DataError(f"--tta {tta}: {exc}") from None


def _device(cfg: StudyConfig) -> torch.device:
    return torch.device("cuda") if cfg.device != "cpu" and torch.cuda.is_available() else torch.device("cpu")

