"""`open_study` and `find_study`: create or continue a study, or find one without writing."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna

from hpsearch import __version__, records
from hpsearch.config import StudyConfig
from hpsearch.errors import StorageError
from hpsearch.study.adapter import _existing_direction, _trial_count
from hpsearch.study.factories import derive_seed, make_pruner, make_sampler
from hpsearch.study.invariants import _record_settings, check_objectives_unchanged, check_space_unchanged
from hpsearch.study.sqlite import _is_missing_file
from hpsearch.study.storage import _check_usable, _has_optuna_tables, make_storage
from hpsearch.study.urls import redact_url
from hpsearch.study.warm import add_warm_trials, source_key, warm_trials


def open_study(cfg: StudyConfig, create: bool = True, sampler_seed: int | None = None,
               storage: optuna.storages.RDBStorage | None = None) -> optuna.Study:
    """Create or continue the study named in `cfg`; refuse a same-named study of the other direction.

    Parallel workers pass their own `sampler_seed`: with the study seed in every process, they
    would all draw the same random start-up points. A reader may pass the `storage` it opened already.
    """
    missing = f"{cfg.source}: name: no study '{cfg.name}' in {redact_url(cfg.storage_url)}"
    if not create and _is_missing_file(cfg.storage_url):
        raise StorageError(f"{missing} (no such file); run `hpsearch run {cfg.source}` first or check storage:")
    warm = None if not create or cfg.warm_start is None else (source_key(cfg), warm_trials(cfg))  # before writing
    storage = storage or make_storage(cfg.storage_url, cfg.source, cfg.workers, create=create)
    existing = _existing_direction(storage, cfg.name)
    if existing is None and not create:
        raise StorageError(f"{missing}; run `hpsearch run {cfg.source}` first or check storage:")
    if existing is not None:
        check_objectives_unchanged(storage, cfg)  # before the direction: a changed objectives: is named as such
    if existing is not None and existing != cfg.resolved_direction:
        raise StorageError(f"{cfg.source}: direction: study '{cfg.name}' in the storage is {existing}d, the file says "
                           f"{cfg.resolved_direction}; rename the study or fix direction")
    if sampler_seed is None and existing is not None:
        # A rerun must not replay the first run's random draws: its sampler seed depends on what is there.
        count = _trial_count(storage, cfg.name)
        sampler_seed = derive_seed(cfg.seed, f"run after {count} trials") if count else None
    if not create:  # create_study(load_if_exists=True) tries an INSERT first: a reader must not write
        return optuna.load_study(study_name=cfg.name, storage=storage, sampler=make_sampler(cfg, sampler_seed),
                                 pruner=make_pruner(cfg))
    study = optuna.create_study(storage=storage, study_name=cfg.name, directions=[g.direction for g in cfg.goals],
                                sampler=make_sampler(cfg, sampler_seed), pruner=make_pruner(cfg), load_if_exists=True)
    if existing is None:
        _record_study_attrs(study, cfg)
    else:
        check_space_unchanged(study, cfg)
    _record_settings(study, cfg)
    study.set_user_attr(records.STUDY_TARGET, cfg.n_trials)  # what `status` counts against later
    study.set_user_attr(records.STUDY_BUDGET, cfg.budget.epochs)
    if warm is not None and warm[0] is not None:
        add_warm_trials(study, warm[0], warm[1])
    return study


def find_study(cfg: StudyConfig, create: bool = True) -> optuna.Study | None:
    """The study named in `cfg`, opened like `open_study` (same checks), if its storage holds it; else None.

    Nothing is created for a study that does not exist yet; with `create=False` nothing is written at all.
    """
    _check_usable(cfg.storage_url, cfg.source)
    if _is_missing_file(cfg.storage_url) or not _has_optuna_tables(cfg.storage_url):
        return None
    storage = make_storage(cfg.storage_url, cfg.source, cfg.workers, create=False)
    if _existing_direction(storage, cfg.name) is None:
        storage.engine.dispose()  # its kept connection would stay open for the rest of the run
        return None
    if not create:
        return open_study(cfg, create=False, storage=storage)  # a reader goes on with this storage
    storage.engine.dispose()  # a writer needs a storage of its own (heartbeats, BEGIN IMMEDIATE)
    return open_study(cfg, create=True)


def _record_study_attrs(study: optuna.Study, cfg: StudyConfig) -> None:
    resolved = cfg.resolved()
    resolved["storage"] = redact_url(resolved["storage"])
    attrs = {records.STUDY_METRIC: cfg.metric, records.STUDY_OBJECTIVES: [g._asdict() for g in cfg.goals],
             records.STUDY_EPOCHS: cfg.train.epochs,
             records.STUDY_OUTPUT_DIR: str(Path(cfg.out_dir).resolve()), records.STUDY_VERSION: __version__,
             records.STUDY_CONFIG: resolved}
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # the dashboard labels its axes "val_accuracy", not "Objective 0" (and its Pareto front by both names)
        study.set_metric_names([g.metric for g in cfg.goals])
