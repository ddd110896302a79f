"""A folder of images plus a label file in the house-numbers competition's format: digit strings per image.

The label file lies in the folder, as ``labels.json`` or ``labels.csv`` (a folder with both is refused),
or is named with ``labels=`` (relative to the folder, or absolute: the competition ships
``mchar_train.json`` beside the ``mchar_train/`` folder):

- JSON: an object mapping each image's file name to ``{"label": [1, 9], "left": [...], "top": [...],
  "width": [...], "height": [...]}``. Only ``label`` is required: a non-empty list of digits 0-9, one per
  character, left to right. The boxes, where given, are lists of numbers, one per digit; they are
  checked and not used.
- CSV: a header ``file,label``, then one row per image with the label as a digit string (``19``).

The digit zero is 0. A 10 is refused: SVHN's own ``digitStruct.mat`` writes zero as 10, while padded
labels (as a tutorial's code writes them) use 10 for "no character", so the loader cannot tell which a
file means; write 0 for zero and leave the padding to the loader.

Every image file (``.png``, ``.jpg``, ``.jpeg``) directly in the folder must be listed, and every listed
name must be such a file there. Images are read with PIL as RGB and resized to ``image_size``
(height, width) bilinearly; labels become rows of ``max_length`` class indices padded with the blank
class, index 10 (11 classes per position: "0".."9", then the blank).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hpsearch.errors import DataError

NAME = "label_folder"
JSON_FILE, CSV_FILE = "labels.json", "labels.csv"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DIGITS = tuple(str(d) for d in range(10))
BLANK = len(DIGITS)  # the padding class after the ten digits
BOX_KEYS = ("left", "top", "width", "height")
_DIGIT_STRING = re.compile(r"[0-9]+")
_EXAMPLE = '{"000000.png": {"label": [1, 9]}}'


@dataclass(frozen=True)
class LabelFolder:
    """The folder read once: ``images`` uint8 (N, 3, H, W), ``labels`` int64 (N, max_length) padded with
    ``blank``; ``files`` the image names in row order (sorted), ``classes`` the digits' names, ``label_file``
    what was read."""

    images: torch.Tensor
    labels: torch.Tensor
    files: tuple[str, ...]
    blank: int
    classes: tuple[str, ...]
    label_file: Path

    @property
    def lengths(self) -> torch.Tensor:
        """Each image's number of characters (the non-blank positions)."""
        return (self.labels != self.blank).sum(dim=1)


def _fail(message: str) -> DataError:
    return DataError(f"dataset '{NAME}': {message}")


def load_label_folder(root: str | Path, image_size: int | tuple[int, int], max_length: int,
                      labels: str | Path | None = None) -> LabelFolder:
    """Read the images of ``root`` and their digit labels (see the module's docstring for the formats)."""
    root = Path(root)
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if min(height, width) < 1 or max_length < 1:
        raise _fail(f"image_size ({height}, {width}) and max_length {max_length} must be positive")
    if not root.is_dir():
        raise _fail(f"folder {root} does not exist; set data.root to the folder of images with its "
                    f"{JSON_FILE} or {CSV_FILE}")
    label_file = find_label_file(root, labels)
    entries = read_json(label_file) if label_file.suffix.lower() == ".json" else read_csv(label_file)
    files = sorted(entries)
    _check_listing(root, label_file, files)
    for name in files:
        if len(entries[name]) > max_length:
            shown = "".join(str(d) for d in entries[name])
            raise _fail(f"{label_file}: entry '{name}': label {shown} has {len(shown)} characters, more than "
                        f"data.max_length = {max_length}; raise max_length to at least {len(shown)}")
    y = torch.full((len(files), max_length), BLANK, dtype=torch.int64)
    for row, name in enumerate(files):
        y[row, : len(entries[name])] = torch.tensor(entries[name], dtype=torch.int64)
    x = _read_images(root, label_file, files, (height, width))
    return LabelFolder(images=x, labels=y, files=tuple(files), blank=BLANK, classes=DIGITS, label_file=label_file)


def find_label_file(root: Path, labels: str | Path | None = None) -> Path:
    """The label file: ``labels`` where given (relative to ``root``), else the folder's labels.json or labels.csv."""
    if labels is not None:
        path = Path(labels) if Path(labels).is_absolute() else root / labels
        if path.suffix.lower() not in (".json", ".csv"):
            raise _fail(f"label file {path}: name a .json or .csv file")
        if not path.is_file():
            raise _fail(f"label file {path} does not exist; set data.labels to the file, or drop it to use "
                        f"{JSON_FILE} or {CSV_FILE} in {root}")
        return path
    found = [root / name for name in (JSON_FILE, CSV_FILE) if (root / name).is_file()]
    if not found:
        raise _fail(f"no label file in {root}: add {JSON_FILE} (e.g. {_EXAMPLE}) or {CSV_FILE} (a header "
                    f"'file,label', then rows like '000000.png,19'), or name one with data.labels")
    if len(found) == 2:
        raise _fail(f"{root} holds both {JSON_FILE} and {CSV_FILE}; keep one, or name the one to use with "
                    f"data.labels")
    return found[0]


# --------------------------------------------------------------------------- the two label formats


def read_json(path: Path) -> dict[str, list[int]]:
    """The competition's JSON: file name -> {"label": [digits], boxes...}, as file name -> digits."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicates(path))
    except json.JSONDecodeError as exc:
        raise _fail(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg}); fix the file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(f"{path}: cannot read the label file ({exc}); check its permissions and encoding") from None
    if not isinstance(raw, dict):
        raise _fail(f"{path}: expected an object mapping each image file name to its label, e.g. {_EXAMPLE}")
    entries = {}
    for name, entry in raw.items():
        _check_name(path, name)
        entries[name] = _json_label(path, name, entry)
    if not entries:
        raise _fail(f"{path}: lists no images; add an entry per image, e.g. {_EXAMPLE}")
    return entries


def _no_duplicates(path: Path) -> Any:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise _fail(f"{path}: '{key}' is listed twice; keep one entry per image (and key)")
            seen[key] = value
        return seen
    return hook


def _json_label(path: Path, name: str, entry: Any) -> list[int]:
    where = f"{path}: entry '{name}'"
    if not isinstance(entry, dict) or "label" not in entry:
        raise _fail(f"{where}: expected an object with a 'label' list, e.g. {{\"label\": [1, 9]}}")
    unknown = sorted(set(entry) - {"label", *BOX_KEYS})
    if unknown:
        raise _fail(f"{where}: unknown key '{unknown[0]}'; an entry holds 'label' and optionally "
                    f"{', '.join(repr(k) for k in BOX_KEYS)}")
    label = entry["label"]
    if not isinstance(label, list) or not label:
        raise _fail(f"{where}: 'label' must be a non-empty list of digits, e.g. [1, 9], got {json.dumps(label)}")
    for position, digit in enumerate(label):
        if isinstance(digit, bool) or not isinstance(digit, int) or not 0 <= digit <= 10:
            raise _fail(f"{where}: label[{position}] is {json.dumps(digit)}; each character is a digit 0 to 9")
        if digit == 10:
            raise _fail(f"{where}: label[{position}] is 10; write the digit zero as 0 (SVHN's digitStruct writes "
                        f"it as 10, padded labels use 10 for no character) and leave padding out")
    for key in BOX_KEYS:
        box = entry.get(key)
        if box is not None and (not isinstance(box, list) or len(box) != len(label)
                                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
            raise _fail(f"{where}: '{key}' must list one number per digit ({len(label)}), got {json.dumps(box)}; "
                        f"fix it or leave it out (boxes are optional)")
    return list(label)


def read_csv(path: Path) -> dict[str, list[int]]:
    """``file,label`` rows, the label a digit string, as file name -> digits."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise _fail(f"{path}: cannot read the label file ({exc}); check its permissions, encoding and quoting") from None
    if not rows or [cell.strip().lower() for cell in rows[0]] != ["file", "label"]:
        raise _fail(f"{path}: line 1: the header must be 'file,label', got {','.join(rows[0]) if rows else 'nothing'!r}")
    entries: dict[str, list[int]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # a blank line (a trailing newline) holds no entry
        if len(row) != 2:
            raise _fail(f"{path}: line {line}: expected 2 fields (file,label), got {len(row)}; quote a name with a comma")
        name, label = row[0].strip(), row[1].strip()
        _check_name(path, name, f"line {line}")
        if not _DIGIT_STRING.fullmatch(label):
            raise _fail(f"{path}: line {line}: entry '{name}': label {label!r} is not a digit string; write the "
                        f"digits only, e.g. 19")
        if name in entries:
            raise _fail(f"{path}: line {line}: '{name}' is listed twice; keep one row per image")
        entries[name] = [int(c) for c in label]
    if not entries:
        raise _fail(f"{path}: lists no images; add a row per image after the header, e.g. 000000.png,19")
    return entries


def _check_name(path: Path, name: str, where: str = "") -> None:
    prefix = f"{path}: {where + ': ' if where else ''}"
    if not name or name != Path(name).name or name in (".", ".."):
        raise _fail(f"{prefix}'{name}' is not a plain file name; list the images of the folder by their names, "
                    f"e.g. 000000.png")


# --------------------------------------------------------------------------- the images


def _check_listing(root: Path, label_file: Path, files: list[str]) -> None:
    """Every listed name is an image in the folder and every image in the folder is listed."""
    missing = [name for name in files if not (root / name).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise _fail(f"{label_file}: entry '{missing[0]}': no such image in {root}{more}; add the image or "
                    f"remove the entry")
    listed = set(files)
    extra = sorted(p.name for p in root.iterdir()
                   if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and p.name not in listed)
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise _fail(f"{root / extra[0]} is not listed in {label_file}{more}; add its label or move it out of "
                    f"the folder")


def _read_images(root: Path, label_file: Path, files: list[str], size: tuple[int, int]) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.functional import pil_to_tensor

    height, width = size
    x = torch.empty((len(files), 3, height, width), dtype=torch.uint8)
    for row, name in enumerate(files):
        path = root / name
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise _fail(f"cannot read image {path} ({exc}); replace it, or remove it and its entry in "
                        f"{label_file.name}") from None
        if image.size != (width, height):  # PIL sizes are (width, height)
            image = image.resize((width, height), resample=Image.Resampling.BILINEAR)
        x[row] = pil_to_tensor(image)
    return x
