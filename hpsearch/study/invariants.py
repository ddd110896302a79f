"""What a run may not change: the search space and the training settings of running trials."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import optuna

from hpsearch import ids, records, space
from hpsearch.config import StudyConfig
from hpsearch.errors import ConfigError
from hpsearch.study.adapter import set_study_system_attr, stored_distributions, study_system_attrs
from hpsearch.study.urls import redact_url


# --------------------------------------------------------------------------- what a run may not change


def check_space_unchanged(study: optuna.Study, cfg: StudyConfig) -> None:
    """Refuse a space that Optuna cannot mix with the stored trials (other choices, log flag or kind).

    Checked before any trial: otherwise every trial of the run fails on its first suggest.
    """
    stored = stored_distributions(study)
    for name, spec in cfg.space.items():
        new = space.distribution(spec)
        for old in stored.get(name, []):
            try:
                optuna.distributions.check_distribution_compatibility(old, new)
            except ValueError:
                raise ConfigError(
                    f"{cfg.source}: space.{name}: study '{cfg.name}' in {redact_url(cfg.storage_url)} searched {name} "
                    f"as {_shown_distribution(old)}, this file says {_shown_distribution(new)}; Optuna cannot mix "
                    f"the two: give the study a new name:, or restore the old space") from None


def check_objectives_unchanged(storage: optuna.storages.BaseStorage, cfg: StudyConfig) -> None:
    """Refuse objectives other than the stored study's (their number, metrics or directions): the trials'
    values would mean something else. Read only, before anything is written."""
    study_id = storage.get_study_id_from_name(cfg.name)
    directions = [d.name.lower() for d in storage.get_study_directions(study_id)]
    attrs = storage.get_study_user_attrs(study_id)
    if len(directions) == 1 and not cfg.multi_objective:
        _check_metric_unchanged(attrs.get(records.STUDY_METRIC), directions[0], cfg)
        return
    stored = attrs.get(records.STUDY_OBJECTIVES)
    metrics = [g.get("metric") for g in stored if isinstance(g, dict)] if isinstance(stored, list) else []
    if len(metrics) != len(directions):  # an older or foreign study: its one metric, or none known
        metrics = [attrs.get(records.STUDY_METRIC)] if len(directions) == 1 else [None] * len(directions)
    old = [f"{m or '?'} ({d})" for m, d in zip(metrics, directions)]
    new = [f"{g.metric} ({g.direction})" for g in cfg.goals]
    known = all(m is not None for m in metrics)
    if len(old) != len(new) or directions != [g.direction for g in cfg.goals] or (known and old != new):
        raise ConfigError(
            f"{cfg.source}: objectives: study '{cfg.name}' in {redact_url(cfg.storage_url)} optimises "
            f"{', '.join(old)}, this file says {', '.join(new)}; its trials' values would mean something else: "
            f"give the study a new name:, or restore the old objectives")


def _check_metric_unchanged(stored: Any, direction: str, cfg: StudyConfig) -> None:
    """One metric on both sides: another one of the same direction (val_mse for val_mae) is refused here; another
    direction is named as such by open_study."""
    if not isinstance(stored, str) or stored == cfg.metric or direction != cfg.resolved_direction:
        return
    raise ConfigError(
        f"{cfg.source}: metric: study '{cfg.name}' in {redact_url(cfg.storage_url)} optimises {stored} ({direction}), "
        f"this file says {cfg.metric} ({cfg.resolved_direction}); its trials' values would mean something else: "
        f"give the study a new name:, or restore metric: {stored}")


def _shown_distribution(dist: optuna.distributions.BaseDistribution) -> str:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return f"categorical {list(dist.choices)}"
    kind = "int" if isinstance(dist, optuna.distributions.IntDistribution) else "float"
    return f"{kind} [{dist.low}, {dist.high}]{' log' if dist.log else ''}"


SETTINGS_SECTIONS = ("metric", "seed", "data", "model", "train")


def run_settings(cfg: StudyConfig) -> dict[str, Any]:
    """What shapes how a trial trains (not how many, where or how fast): trials of one study share it."""
    resolved = cfg.resolved()
    return {key: resolved[key] for key in SETTINGS_SECTIONS}


def settings_id(cfg: StudyConfig) -> str:
    """A short stable hash of :func:`run_settings`, recorded with every trial as `settings`."""
    text = json.dumps(run_settings(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _record_settings(study: optuna.Study, cfg: StudyConfig) -> None:
    """Keep this run's settings under their id, then refuse them if a running trial trains with others."""
    mine = settings_id(cfg)
    key = records.settings_key(mine)
    attrs = study_system_attrs(study)
    if key not in attrs:
        set_study_system_attr(study, key, run_settings(cfg))
        attrs[key] = run_settings(cfg)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        theirs = records.settings_id_of(trial)
        if theirs is None or theirs == mine or not _worker_may_be_alive(records.worker(trial)):
            continue
        path, old, new = _first_difference(attrs.get(records.settings_key(theirs), {}), run_settings(cfg))
        raise ConfigError(
            f"{cfg.source}: {path}: trial {trial.number} of study '{cfg.name}' is running now (worker "
            f"{records.worker(trial) or '?'}) with {path} = {old!r}, this run says {new!r}; mixing them "
            f"would make the trials incomparable: use the same settings while it runs, or a new name:")


def _worker_may_be_alive(worker: Any) -> bool:
    """False only for a worker of this machine whose process is gone (its trial just awaits the stale check)."""
    parsed = ids.parse_worker_id(worker)
    if parsed is None or parsed[0] != ids.host_name():
        return True
    try:
        os.kill(parsed[1], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _first_difference(old: Any, new: Any, path: str = "") -> tuple[str, Any, Any]:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return _first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else key)
    return path or "settings", old, new
