"""The competition-format folder: PNG/JPEG images plus labels.json or labels.csv, written here in the real formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from hpsearch.data.labelfiles import BLANK, load_label_folder
from hpsearch.errors import DataError

# name -> (label digits, colour): each image is one flat colour, so a row can be traced to its file
SAMPLES = {"000000.png": ([1, 9], (200, 10, 10)), "000001.png": ([2, 3, 0], (10, 200, 10)),
           "000002.jpg": ([5], (10, 10, 200))}


def _write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (24, 12)) -> None:
    Image.new("RGB", size, colour).save(path)  # PIL sizes are (width, height)


def _competition_json(samples: dict[str, tuple[list[int], Any]]) -> dict[str, Any]:
    """The competition's own entry shape: label plus one box per digit."""
    return {name: {"height": [20] * len(label), "label": label, "left": [3 + 8 * i for i in range(len(label))],
                   "top": [4] * len(label), "width": [7] * len(label)} for name, (label, _) in samples.items()}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "train"
    root.mkdir()
    for name, (_, colour) in SAMPLES.items():
        _write_image(root / name, colour)
    return root


def _json(root: Path, content: Any, name: str = "labels.json") -> Path:
    path = root / name
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def _csv(root: Path, text: str, name: str = "labels.csv") -> Path:
    path = root / name
    path.write_text(text, encoding="utf-8")
    return path


def _check(loaded: Any, size: tuple[int, int], max_length: int) -> None:
    assert loaded.files == tuple(sorted(SAMPLES))
    assert loaded.images.dtype == torch.uint8 and loaded.images.shape == (3, 3, *size)
    assert loaded.labels.dtype == torch.int64 and loaded.labels.shape == (3, max_length)
    assert loaded.blank == BLANK == 10 and loaded.classes == tuple("0123456789")
    for row, name in enumerate(loaded.files):
        label, colour = SAMPLES[name]
        assert loaded.labels[row].tolist() == label + [BLANK] * (max_length - len(label))
        mean = loaded.images[row].double().mean(dim=(1, 2)).tolist()
        assert np.allclose(mean, colour, atol=3)  # JPEG is lossy by a few levels
    assert loaded.lengths.tolist() == [len(SAMPLES[n][0]) for n in loaded.files]


def test_json_in_the_competition_format(folder: Path) -> None:
    path = _json(folder, _competition_json(SAMPLES))
    loaded = load_label_folder(folder, (16, 20), max_length=5)
    _check(loaded, (16, 20), 5)
    assert loaded.label_file == path


def test_csv_with_digit_strings_and_a_square_size(folder: Path) -> None:
    _csv(folder, "file,label\n000000.png,19\n000001.png,230\n000002.jpg,5\n")
    _check(load_label_folder(folder, 8, max_length=3), (8, 8), 3)


def test_a_label_file_named_beside_the_folder(folder: Path) -> None:
    """The competition ships mchar_train.json next to the mchar_train/ folder."""
    outside = _json(folder.parent, _competition_json(SAMPLES), name="mchar_train.json")
    loaded = load_label_folder(folder, (12, 24), max_length=4, labels=outside)
    _check(loaded, (12, 24), 4)
    assert load_label_folder(folder, (12, 24), 4, labels="../mchar_train.json").labels.equal(loaded.labels)


def test_native_size_is_kept_exactly(folder: Path) -> None:
    _json(folder, {"000000.png": {"label": [7]}, "000001.png": {"label": [8]}, "000002.jpg": {"label": [9]}})
    pixels = np.random.default_rng(0).integers(0, 256, (12, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "000000.png")
    loaded = load_label_folder(folder, (12, 24), max_length=1)
    assert torch.equal(loaded.images[0], torch.from_numpy(pixels).permute(2, 0, 1))  # PNG: lossless, no resize


def _entries(**changes: Any) -> dict[str, Any]:
    base = {name: {"label": label} for name, (label, _) in SAMPLES.items()}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


JSON_BAD = [
    ("label too long", _entries(**{"000001.png": {"label": [1, 2, 3, 4]}}),
     r"labels.json: entry '000001.png': label 1234 has 4 characters, more than data.max_length = 3; raise max_length "
     r"to at least 4"),
    ("letter in label", _entries(**{"000000.png": {"label": [1, "a"]}}),
     r"entry '000000.png': label\[1\] is \"a\"; each character is a digit 0 to 9"),
    ("digit 11", _entries(**{"000000.png": {"label": [11]}}), r"label\[0\] is 11; each character is a digit 0 to 9"),
    ("zero written as 10", _entries(**{"000000.png": {"label": [1, 10]}}),
     r"label\[1\] is 10; write the digit zero as 0 \(SVHN's digitStruct"),
    ("true as a digit", _entries(**{"000000.png": {"label": [True]}}), r"label\[0\] is true"),
    ("empty label", _entries(**{"000000.png": {"label": []}}), r"'label' must be a non-empty list of digits"),
    ("label not a list", _entries(**{"000000.png": {"label": 19}}), r"'label' must be a non-empty list .*got 19"),
    ("no label", _entries(**{"000000.png": {"left": [1]}}), r"entry '000000.png': expected an object with a 'label'"),
    ("unknown key", _entries(**{"000000.png": {"label": [1], "lable": [2]}}), r"unknown key 'lable'"),
    ("box of the wrong length", _entries(**{"000000.png": {"label": [1, 9], "left": [3]}}),
     r"'left' must list one number per digit \(2\), got \[3\]"),
    ("listed, no such image", _entries(**{"000009.png": {"label": [4]}}),
     r"labels.json: entry '000009.png': no such image in .*train; add the image or remove the entry"),
    ("image not listed", _entries(**{"000002.jpg": None}),
     r"train/000002.jpg is not listed in .*labels.json; add its label or move it out of the folder"),
    ("a path, not a name", _entries(**{"../x.png": {"label": [1]}}), r"'../x.png' is not a plain file name"),
    ("a list, not a mapping", [{"label": [1]}], r"expected an object mapping each image file name to its label"),
    ("no entries", {}, r"labels.json: lists no images"),
    ("syntax error", '{"000000.png": {"label": [1, 9]},\n}', r"labels.json: line 2: not valid JSON"),
    ("a name twice", '{"000000.png": {"label": [1]}, "000000.png": {"label": [2]}}', r"'000000.png' is listed twice"),
]


@pytest.mark.parametrize("content, pattern", [(c, p) for _, c, p in JSON_BAD], ids=[b[0] for b in JSON_BAD])
def test_bad_json_is_one_line_naming_file_and_entry(folder: Path, content: Any, pattern: str) -> None:
    _json(folder, content)
    with pytest.raises(DataError, match=pattern) as info:
        load_label_folder(folder, 8, max_length=3)
    assert str(info.value).startswith("dataset 'label_folder': ") and "\n" not in str(info.value)


CSV_BAD = [
    ("not a digit string", "file,label\n000000.png,1a\n000001.png,230\n000002.jpg,5\n",
     r"labels.csv: line 2: entry '000000.png': label '1a' is not a digit string; write the digits only"),
    ("empty label", "file,label\n000000.png,\n000001.png,230\n000002.jpg,5\n", r"line 2: .*label '' is not a digit"),
    ("label too long", "file,label\n000000.png,19\n000001.png,2301\n000002.jpg,5\n",
     r"entry '000001.png': label 2301 has 4 characters, more than data.max_length = 3"),
    ("no header", "000000.png,19\n000001.png,230\n000002.jpg,5\n", r"line 1: the header must be 'file,label'"),
    ("three fields", "file,label\n000000.png,19,x\n", r"line 2: expected 2 fields \(file,label\), got 3"),
    ("a name twice", "file,label\n000000.png,19\n000000.png,18\n", r"line 3: '000000.png' is listed twice"),
    ("header only", "file,label\n", r"labels.csv: lists no images"),
    ("image not listed", "file,label\n000000.png,19\n000001.png,230\n", r"000002.jpg is not listed in"),
]


@pytest.mark.parametrize("text, pattern", [(t, p) for _, t, p in CSV_BAD], ids=[b[0] for b in CSV_BAD])
def test_bad_csv_is_one_line_naming_file_and_line(folder: Path, text: str, pattern: str) -> None:
    _csv(folder, text)
    with pytest.raises(DataError, match=pattern) as info:
        load_label_folder(folder, 8, max_length=3)
    assert "\n" not in str(info.value)


def test_no_label_file_names_both_formats(folder: Path) -> None:
    with pytest.raises(DataError, match=r"no label file in .*train: add labels.json .* or labels.csv .*data.labels"):
        load_label_folder(folder, 8, max_length=3)


def test_both_label_files_are_refused_unless_one_is_named(folder: Path) -> None:
    _json(folder, _competition_json(SAMPLES))
    _csv(folder, "file,label\n000000.png,19\n000001.png,230\n000002.jpg,5\n")
    with pytest.raises(DataError, match=r"holds both labels.json and labels.csv; keep one, or name the one"):
        load_label_folder(folder, 8, max_length=3)
    assert load_label_folder(folder, 8, 3, labels="labels.csv").label_file.name == "labels.csv"


def test_a_named_label_file_that_is_missing_or_not_json_or_csv(folder: Path) -> None:
    with pytest.raises(DataError, match=r"label file .*nope.json does not exist; set data.labels"):
        load_label_folder(folder, 8, 3, labels="nope.json")
    with pytest.raises(DataError, match=r"name a .json or .csv file"):
        load_label_folder(folder, 8, 3, labels="labels.txt")


def test_an_unreadable_image_is_named(folder: Path) -> None:
    _json(folder, _competition_json(SAMPLES))
    (folder / "000001.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"cannot read image .*train/000001.png .*; replace it, or remove it and its "
                                        r"entry in labels.json"):
        load_label_folder(folder, 8, max_length=3)


def test_an_empty_or_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"folder .*absent does not exist; set data.root"):
        load_label_folder(tmp_path / "absent", 8, 3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no label file in .*empty"):
        load_label_folder(tmp_path / "empty", 8, 3)
    _csv(tmp_path / "empty", "file,label\n")
    with pytest.raises(DataError, match=r"lists no images"):
        load_label_folder(tmp_path / "empty", 8, 3)


def test_other_files_in_the_folder_are_ignored(folder: Path) -> None:
    _json(folder, _competition_json(SAMPLES))
    (folder / "README.txt").write_text("notes")
    (folder / "sub").mkdir()
    _write_image(folder / "sub" / "extra.png", (0, 0, 0))
    assert load_label_folder(folder, 8, 3).files == tuple(sorted(SAMPLES))
