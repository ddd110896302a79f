"""Command-line arguments every verb shares: the argparse flavour, value types, common flags, and the study
config a verb's flags make (storage override, run overrides, the storage checks before anything opens it)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from hpsearch import ids
from hpsearch.config import STORAGE_ENV, StudyConfig, load_config, with_overrides
from hpsearch.errors import ConfigError


class Parser(argparse.ArgumentParser):
    """argparse that reports bad flags as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"command line: {message}; see `{self.prog} --help`")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (got {text})")
    return value


def port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port, 0 to 65535 (got {text})")
    return value


def worker_count(text: str) -> int:
    value = positive_int(text)
    if value > ids.MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"must be at most {ids.MAX_WORKERS} (got {text})")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive (got {text})")
    return value


def add_common(parser: argparse.ArgumentParser, many: bool = False) -> None:
    if many:
        parser.add_argument("study_files", nargs="+", metavar="STUDY.yaml")
    else:
        parser.add_argument("study_file", metavar="STUDY.yaml")
    parser.add_argument("--storage", help=f"storage URL overriding the file's storage: (default: ${STORAGE_ENV} "
                                          f"when set; a password is safer there than on the command line)")
    parser.add_argument("--debug", action="store_true", help="full tracebacks and debug logging")


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-trials", type=positive_int, help="study-wide total of finished trials")
    parser.add_argument("--timeout", type=positive_float, help="stop starting trials after S seconds")
    parser.add_argument("--budget-epochs", type=positive_int, metavar="N",
                        help="stop when N training epochs have been spent study-wide (budget.epochs)")
    parser.add_argument("--epochs", type=positive_int, help="override train.epochs")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override device:")
    parser.add_argument("--workers", type=worker_count, help="worker processes on this machine")
    parser.add_argument("--gpus", help="GPUs to use: all, none or a list like 0,1")
    parser.add_argument("--output-dir", metavar="DIR", help="override output_dir: (checkpoints, logs)")


def add_predict_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, metavar="PATH",
                        help="a folder of images, a .npy array, 'test' (the dataset's test split) or 'val' "
                             "(the trial's validation split)")
    parser.add_argument("--out", default="predictions.csv", help="output CSV (default predictions.csv)")
    parser.add_argument("--trial", type=int, metavar="N", help="the trial whose checkpoint predicts (default: the best)")
    parser.add_argument("--tta", type=positive_int, default=1, metavar="K",
                        help="average the logits over K views: the original and K-1 of train.augment's (default 1)")


def storage_override(args: argparse.Namespace) -> str | None:
    """The storage URL replacing the file's: --storage, else $HPSEARCH_STORAGE; an empty one is refused.

    An empty value is a variable that did not reach the shell (`--storage "$URL"`): silently using the
    file's storage instead would start a study of its own, elsewhere.
    """
    flag = getattr(args, "storage", None)
    if flag is not None:
        if not flag.strip():
            raise ConfigError("command line: --storage: the storage URL is empty (an unset variable?); give a URL "
                              "such as sqlite:///runs/study.db, or leave the flag out to use the file's storage:")
        return flag
    value = os.environ.get(STORAGE_ENV)
    if value is not None and not value.strip():
        raise ConfigError(f"environment: {STORAGE_ENV}: the storage URL is empty; set it to a URL, or unset it "
                          f"(`unset {STORAGE_ENV}`) to use the file's storage:")
    return value


def config_from_args(path: str, args: argparse.Namespace) -> StudyConfig:
    from hpsearch.study import check_storage

    storage = storage_override(args)
    overrides: dict[str, Any] = {key: getattr(args, key, None)
                                 for key in ("n_trials", "timeout", "epochs", "device", "output_dir",
                                             "budget_epochs")}
    cfg = with_overrides(load_config(path, storage=storage), **overrides)
    check_storage(cfg.storage_url, cfg.source)  # before any verb parses it, opens it or creates a file
    return cfg
