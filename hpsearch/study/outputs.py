"""Output folders: whose files a folder holds, and the artifact store under it."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any, BinaryIO

import optuna

from hpsearch.config import StudyConfig
from hpsearch.errors import ConfigError
from hpsearch.study.adapter import study_id
from hpsearch.study.urls import _same_database, check_url, redact_url, storage_identity

ARTIFACTS = "artifacts"  # folder under the study's output dir


def artifact_dir(out_dir: str | Path) -> Path:
    """The study's artifact folder (`runs/<name>/artifacts`): what optuna-dashboard lists and downloads per trial."""
    return Path(out_dir).resolve() / ARTIFACTS


class LinkingArtifactStore(optuna.artifacts.FileSystemArtifactStore):
    """Optuna's file-system store that hard-links an uploaded file where it can instead of copying it.

    A trial's best checkpoint is then on disk once, not twice (it is written by an atomic replace and never again
    in place, so the link keeps the bytes uploaded). Another file system, or one without hard links: a copy.
    """

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        source = getattr(content_body, "name", None)
        if isinstance(source, str) and os.path.isfile(source):
            try:
                os.link(source, self._get_filepath(artifact_id))
                return
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
        super().write(artifact_id, content_body)


def artifact_store(out_dir: str | Path, create: bool = True) -> optuna.artifacts.FileSystemArtifactStore:
    """Optuna's file-system artifact store in :func:`artifact_dir`; created unless ``create=False`` (a reader)."""
    where = artifact_dir(out_dir)
    if create:
        where.mkdir(parents=True, exist_ok=True)
    return LinkingArtifactStore(where)


# --------------------------------------------------------------------------- whose files an output folder holds


OWNER_FILE = "study.json"  # in output_dir: the study (storage and id) whose checkpoints and logs the folder holds


def _owner(cfg: StudyConfig) -> dict[str, Any] | None:
    try:
        return json.loads((Path(cfg.out_dir) / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None


def check_output_dir(cfg: StudyConfig, study_id: int | None = None) -> None:
    """Refuse an output folder that holds the files of another study: the same name in another storage.

    Two such studies would overwrite each other's checkpoints (trial numbers repeat); the folder
    records its owner the first time a study runs there.
    """
    check_url(cfg.storage_url, cfg.source)  # before the URL is parsed below: a bad one is one line, exit 2
    owner = _owner(cfg)
    if owner is None:
        return
    mine = storage_identity(cfg.storage_url)
    same_id = study_id is None or owner.get("study_id") in (None, study_id)
    if _same_database(owner.get("storage"), mine) and owner.get("name") == cfg.name and same_id:
        return
    whose = f"study '{owner.get('name')}' in {owner.get('storage')} (study id {owner.get('study_id')})"
    this = f"this one is '{cfg.name}' in {redact_url(cfg.storage_url)}" + (f" (study id {study_id})" if study_id else "")
    raise ConfigError(f"{cfg.source}: output_dir: {cfg.out_dir} holds the checkpoints and logs of {whose}; {this}; "
                      f"set output_dir: (or --output-dir) to a folder of its own")


def claim_output_dir(cfg: StudyConfig, study: optuna.Study) -> None:
    """Record (once) that the output folder belongs to `study`; refuse it if it belongs to another."""
    check_output_dir(cfg, study_id(study))
    path = Path(cfg.out_dir) / OWNER_FILE
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"name": cfg.name, "storage": storage_identity(cfg.storage_url), "study_id": study_id(study)}
    tmp = path.with_name(f".{OWNER_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)  # workers starting together write the same record
