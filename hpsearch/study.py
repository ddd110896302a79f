"""Sampler, pruner and storage factories, and `open_study`: where a config meets Optuna."""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import random
import re
import shlex
import socket
import threading
import time
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import optuna
import sqlalchemy
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, SQLAlchemyError

from hpsearch import __version__
from hpsearch.config import StudyConfig, WorkersConfig
from hpsearch.errors import ConfigError, HpsearchError, StorageError, StorageFailure
from hpsearch import space
from hpsearch.results import records

log = logging.getLogger("hpsearch")
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
SQLITE_BUSY_TIMEOUT_S = 60
PG_CONNECT_TIMEOUT_S = 10  # a stopped server is reported within seconds, not after the OS's TCP timeout
HIDDEN = "***"
ARTIFACTS = "artifacts"  # folder under the study's output dir
UNPARSEABLE = "<unparseable storage URL>"
# Query parameters that carry credentials (?password=, sslpassword, api_key, token...), any case.
_SECRET_PARAM = re.compile(r"pass|pwd|secret|token|key|credential", re.IGNORECASE)


def _parse_url(url: str) -> URL:
    """SQLAlchemy's parse of `url`, with a password's unescaped '@' given back to the password.

    SQLAlchemy ends the password at the first '@', so `user:p@ss@host` parses as password 'p' and
    host 'ss@host'; the real split is at the last '@'.
    """
    parsed = make_url(url)
    if parsed.host and "@" in parsed.host:
        spill, host = parsed.host.rsplit("@", 1)
        parsed = parsed.set(password=f"{parsed.password or ''}@{spill}", host=host)
    return parsed


def _secret_params(parsed: URL) -> list[str]:
    return [key for key in parsed.query if _SECRET_PARAM.search(key)]


def redact_url(url: str) -> str:
    """The storage URL with the password and every secret query parameter replaced by ***, safe to print.

    Never raises: what cannot be parsed prints as "<unparseable storage URL>".
    """
    try:
        parsed = _parse_url(url)
        secret = _secret_params(parsed)
        if secret:
            parsed = parsed.update_query_dict(dict.fromkeys(secret, HIDDEN))
        # render_as_string quotes the query's '*' as %2A
        return parsed.render_as_string(hide_password=True).replace(quote(HIDDEN, safe=""), HIDDEN)
    except Exception:  # noqa: BLE001 - printing a URL must never fail, whatever the input
        return UNPARSEABLE


def url_secrets(url: str) -> list[str]:
    """The password and secret query values of `url`, raw and URL-quoted, longest first (what `scrub` hides)."""
    try:
        parsed = _parse_url(url)
    except Exception:  # noqa: BLE001 - an unparseable URL has no secrets we can find; scrub still hides the URL
        return []
    values = [parsed.password or ""]
    for key in _secret_params(parsed):
        value = parsed.query[key]
        values += [value] if isinstance(value, str) else list(value)
    forms = {form for value in values if value for form in (value, quote(value, safe=""), quote_plus(value))}
    return sorted(forms, key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """`text` (a driver's or SQLAlchemy's error message) with `url` and its secrets, in any form, hidden."""
    if url:
        text = text.replace(url, redact_url(url))
    for secret in url_secrets(url):
        text = text.replace(secret, HIDDEN)
    return text


def check_url(url: str, source: str) -> None:
    """Refuse, without echoing it, a storage URL that SQLAlchemy cannot parse or that it would misread."""
    example = "sqlite:///runs/study.db or postgresql+psycopg://user:${DB_PASSWORD}@host/db"
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - ArgumentError, or ValueError for a bad port: the URL must not be echoed
        raise StorageError(f"{source}: storage: the storage URL cannot be parsed; use a URL such as {example} "
                           f"(percent-encode special characters of the password, e.g. @ as %40)") from None
    if parsed.host and "@" in parsed.host:
        raise StorageError(f"{source}: storage: the password in {redact_url(url)} holds an unescaped '@'; "
                           f"percent-encode it as %40")


def artifact_dir(out_dir: str | Path) -> Path:
    """The study's artifact folder (`runs/<name>/artifacts`): what optuna-dashboard lists and downloads per trial."""
    return Path(out_dir).resolve() / ARTIFACTS


def artifact_store(out_dir: str | Path, create: bool = True) -> optuna.artifacts.FileSystemArtifactStore:
    """Optuna's file-system artifact store in :func:`artifact_dir`; created unless ``create=False`` (a reader)."""
    where = artifact_dir(out_dir)
    if create:
        where.mkdir(parents=True, exist_ok=True)
    return optuna.artifacts.FileSystemArtifactStore(where)


def derive_seed(study_seed: int, salt: str) -> int:
    """A sampler seed of its own for one process or run of a study: 31 bits of sha256(study seed, salt).

    Every worker and every rerun draws differently, and the same (study seed, salt) always draws the same.
    """
    digest = hashlib.sha256(f"{study_seed}:sampler:{salt}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def make_sampler(cfg: StudyConfig, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The sampler the file asks for, seeded from the study seed (or `seed`, for one of several workers)."""
    s = cfg.sampler
    seed = cfg.seed if seed is None else seed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if s.type == "tpe":
            return optuna.samplers.TPESampler(n_startup_trials=s.n_startup_trials, multivariate=s.multivariate,
                                              constant_liar=s.constant_liar, seed=seed)
        if s.type == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if s.type == "cmaes":
            return optuna.samplers.CmaEsSampler(n_startup_trials=s.n_startup_trials, sigma0=s.sigma0, seed=seed,
                                                warn_independent_sampling=False)
        if s.type == "gp":
            return optuna.samplers.GPSampler(n_startup_trials=s.n_startup_trials, seed=seed,
                                             warn_independent_sampling=False)
        if s.type == "qmc":
            return optuna.samplers.QMCSampler(qmc_type=s.qmc_type, scramble=s.scramble, seed=seed,
                                              warn_asynchronous_seeding=False, warn_independent_sampling=False)
        return optuna.samplers.GridSampler(space.grid(cfg), seed=seed)


def make_pruner(cfg: StudyConfig) -> optuna.pruners.BasePruner:
    """The pruner the file asks for; hyperband's max resource is the epoch budget."""
    p = cfg.pruner
    if p.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps,
                                           interval_steps=p.interval_steps)
    if p.type == "percentile":
        return optuna.pruners.PercentilePruner(p.percentile, n_startup_trials=p.n_startup_trials,
                                               n_warmup_steps=p.n_warmup_steps, interval_steps=p.interval_steps)
    if p.type == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)
    if p.type == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=p.min_resource, max_resource=cfg.train.epochs,
                                              reduction_factor=p.reduction_factor)
    if p.type == "patient":
        wrapped = optuna.pruners.MedianPruner() if p.wrapped == "median" else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # stable in practice since 2.8
            return optuna.pruners.PatientPruner(wrapped, patience=p.patience, min_delta=p.min_delta)
    if p.type == "threshold":
        return optuna.pruners.ThresholdPruner(lower=p.lower, upper=p.upper, n_warmup_steps=p.n_warmup_steps)
    return optuna.pruners.NopPruner()


def _engine_kwargs(url: str) -> dict[str, Any]:
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        # Several local workers share one file: wait for the lock instead of failing at once.
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    if backend == "postgresql":
        # One connection kept per process (the heartbeat thread borrows a second one briefly): the server's
        # max_connections (100 by default) bounds the workers of all machines together.
        return {"pool_pre_ping": True, "pool_size": 1, "max_overflow": 4,
                "connect_args": {"connect_timeout": PG_CONNECT_TIMEOUT_S}}
    return {"pool_pre_ping": True}


def _is_memory(url: str) -> bool:
    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")


def _begin_immediate(engine: sqlalchemy.engine.Engine) -> None:
    """Every SQLite transaction takes the write lock up front.

    A deferred transaction that reads and then writes gets SQLITE_BUSY at once, without waiting
    for the busy timeout, when another worker writes in between; BEGIN IMMEDIATE waits instead.
    """

    @sqlalchemy.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # let the "begin" hook below issue BEGIN itself

    @sqlalchemy.event.listens_for(engine, "begin")
    def _begin(connection: sqlalchemy.engine.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # drop pooled connections opened before the hooks


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial, max_retries: int) -> None:
    """Queue a failed (died or interrupted) trial again with the same parameters; it resumes from its checkpoint."""
    history = records.retry_history_of(trial.system_attrs) + [trial.number]
    if len(history) > max_retries:
        return
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        system_attrs=records.retry_attrs(history),
    ))


class _DamagedFile(Exception):
    """SQLite's quick_check found damage that reading alone may never meet (an index page, say)."""


def _prepare_sqlite(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    existed = Path(parsed.database).is_file() and Path(parsed.database).stat().st_size > 0
    engine = sqlalchemy.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
    try:
        with engine.connect() as conn:
            if existed:  # before anything writes: a damaged file must stay as it is (~0.2 s per 70 MB)
                problems = " ".join(" ".join(row[0] for row in conn.exec_driver_sql("PRAGMA quick_check(1)")).split())
                if problems != "ok":
                    raise _DamagedFile(re.sub(r"\*\*\* in database \w+ \*\*\* ", "", problems))
            # WAL lets readers (dashboard, status) run beside the writing workers; it persists in the file.
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    finally:
        engine.dispose()


_ENGINES: weakref.WeakSet[sqlalchemy.engine.Engine] = weakref.WeakSet()


def dispose_storages() -> None:
    """Close the connection pools of every storage this process opened (before a prompt exit)."""
    for engine in list(_ENGINES):
        engine.dispose()


def _rdb_storage(url: str, heartbeat: dict[str, Any]) -> optuna.storages.RDBStorage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are "experimental"
        storage = optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url), **heartbeat)
    _ENGINES.add(storage.engine)
    return storage


def _is_startup_race(exc: SQLAlchemyError) -> bool:
    """Workers opening a new database together race on table creation, version rows and the WAL switch."""
    text = str(exc)
    return isinstance(exc, IntegrityError) or "already exists" in text or "database is locked" in text


def _open_rdb(url: str, heartbeat: dict[str, Any], attempts: int = 6) -> optuna.storages.RDBStorage:
    for attempt in range(attempts - 1):
        try:
            _prepare_sqlite(url)
            return _rdb_storage(url, heartbeat)
        except SQLAlchemyError as exc:
            if not _is_startup_race(exc):
                raise
            time.sleep(random.uniform(0.1, 0.2) * (attempt + 1))  # jitter: the losers must not collide again
    _prepare_sqlite(url)
    return _rdb_storage(url, heartbeat)


def _open_existing(url: str, source: str) -> optuna.storages.RDBStorage:
    """Open a storage that must already hold Optuna's tables: no file, table or schema row is created.

    Transactions stay deferred: a reader (the dashboard) must never hold SQLite's write lock.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:") or not Path(parsed.database).is_file():
            raise StorageError(f"{source}: storage: no study database at {parsed.database or ':memory:'}; "
                               f"run the study first or check storage:")
        if _is_read_only(Path(parsed.database)):
            url = _read_only_url(Path(parsed.database))
        else:
            try:
                _prepare_sqlite(url)
            except SQLAlchemyError as exc:  # reading still works without WAL
                log.warning("could not switch %s to WAL journaling (%s); readers may slow the workers",
                            parsed.database, _first_line(exc, url))
    if not _has_optuna_tables(url):  # before Optuna's reader fails on them (and leaves its connection open)
        raise StorageError(f"{source}: storage: {redact_url(url)} holds no study yet (no Optuna tables); run the study "
                           f"first or check storage:")
    try:
        # Readers accept any schema version, as optuna-dashboard itself does.
        storage = optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url), skip_compatibility_check=True,
                                             skip_table_creation=True)
        _ENGINES.add(storage.engine)
        return storage
    except optuna.exceptions.StorageInternalError as exc:
        if isinstance(exc.__cause__, SQLAlchemyError):
            raise exc.__cause__ from None  # the driver's error says what is wrong; Optuna's wrapper does not
        raise


def _is_read_only(path: Path) -> bool:
    """A database SQLite could not write beside (read-only media, a folder or file without write permission)."""
    return not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK))


def _read_only_url(path: Path) -> str:
    """The URL that reads `path` without writing anything, journal files included.

    `immutable=1`: SQLite cannot open a WAL database read-only without its -shm file, which it would
    have to create; nothing writes a file on read-only media, so no change can be missed.
    """
    return f"sqlite:///file:{quote(str(path.resolve()))}?mode=ro&immutable=1&uri=true"


def make_storage(url: str, source: str = "<memory>", workers: WorkersConfig | None = None,
                 create: bool = True) -> optuna.storages.RDBStorage:
    """Open (creating tables if needed) the RDB storage at `url`; unreachable → StorageError.

    With `workers`, running trials send heartbeats and a trial whose worker died is failed after
    the grace period and queued again. With `create=False` (readers such as the dashboard),
    nothing is created: a missing SQLite file is a StorageError. Error messages never show the
    password.
    """
    _check_usable(url, source)
    shown = redact_url(url)
    heartbeat: dict[str, Any] = {}
    if workers is not None:
        heartbeat = {"heartbeat_interval": workers.heartbeat_interval, "grace_period": workers.grace_period}
    try:
        if not create:
            return _open_existing(url, source)
        storage = _open_rdb(url, heartbeat)
        if make_url(url).get_backend_name() == "sqlite":
            _begin_immediate(storage.engine)
        return storage
    except (ArgumentError, NoSuchModuleError) as exc:
        raise StorageError(f"{source}: storage: cannot use '{shown}' ({_first_line(exc, url)}); use a URL such as "
                           f"sqlite:///runs/study.db or postgresql+psycopg://user@host/db") from None
    except ImportError as exc:
        raise StorageError(f"{source}: storage: no database driver for '{shown}' ({_first_line(exc, url)}); install "
                           f"it, e.g. pip install 'hpsearch[postgres]' for postgresql+psycopg://") from None
    except _DamagedFile as exc:
        raise StorageError(f"{source}: storage: '{shown}' {_damaged(str(exc), url)}") from None
    except (SQLAlchemyError, OSError) as exc:
        damage = _damage(exc, url)
        if damage:
            raise StorageError(f"{source}: storage: '{shown}' {damage}") from None
        raise StorageError(f"{source}: storage: cannot open '{shown}' ({_first_line(exc, url)}); {_open_hint(url)}") \
            from None


def _open_hint(url: str) -> str:
    """What to check when a storage cannot be opened: a file's folder, or a server."""
    if make_url(url).get_backend_name() == "sqlite":
        return "check that the file's folder exists (or can be created) and is writable, or fix the path in storage:"
    return "check that the database server is running and the URL is right"


def _first_line(exc: BaseException, url: str) -> str:
    """The first line of a driver's error, without SQLAlchemy's link and without any secret of `url`."""
    text = scrub(str(exc), url).strip().splitlines()
    message = text[0] if text else type(exc).__name__
    message = re.sub(r"^\([\w.]+\) ", "", message)  # SQLAlchemy's "(psycopg.OperationalError) " prefix
    return message.replace("(Background on this error at: https://sqlalche.me/e/20/e3q8)", "").strip()[:300]


def open_study(cfg: StudyConfig, create: bool = True, sampler_seed: int | None = None,
               storage: optuna.storages.RDBStorage | None = None) -> optuna.Study:
    """Create or continue the study named in `cfg`; refuse a same-named study of the other direction.

    Parallel workers pass their own `sampler_seed`: with the study seed in every process, they
    would all draw the same random start-up points. A reader may pass the `storage` it opened already.
    """
    missing = f"{cfg.source}: name: no study '{cfg.name}' in {redact_url(cfg.storage_url)}"
    if not create and _is_missing_file(cfg.storage_url):
        raise StorageError(f"{missing} (no such file); run `hpsearch run {cfg.source}` first or check storage:")
    storage = storage or make_storage(cfg.storage_url, cfg.source, cfg.workers, create=create)
    existing = _existing_direction(storage, cfg.name)
    if existing is None and not create:
        raise StorageError(f"{missing}; run `hpsearch run {cfg.source}` first or check storage:")
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
    study = optuna.create_study(storage=storage, study_name=cfg.name, direction=cfg.resolved_direction,
                                sampler=make_sampler(cfg, sampler_seed), pruner=make_pruner(cfg), load_if_exists=True)
    if existing is None:
        _record_study_attrs(study, cfg)
    elif create:
        check_space_unchanged(study, cfg)
    if create:
        _record_settings(study, cfg)
        study.set_user_attr(records.STUDY_TARGET, cfg.n_trials)  # what `status` counts against later
    return study


def _check_usable(url: str, source: str) -> None:
    """Refuse, before any connection, a URL that cannot be parsed or that no other process could see."""
    check_url(url, source)
    try:
        in_memory = _is_memory(url)
    except (ArgumentError, ValueError):
        return  # unparseable: the driver's own message follows
    if in_memory:
        raise StorageError(f"{source}: storage: '{redact_url(url)}' lives inside one process, so workers, reruns "
                           f"and `hpsearch status` could never see the study; use a file such as "
                           f"sqlite:///runs/study.db") from None


def find_study(cfg: StudyConfig, create: bool = True) -> optuna.Study | None:
    """The study named in `cfg`, opened like `open_study` (same checks), if its storage holds it; else None.

    Nothing is created for a study that does not exist yet; with `create=False` nothing is written at all.
    """
    _check_usable(cfg.storage_url, cfg.source)
    if _is_missing_file(cfg.storage_url) or not _has_optuna_tables(cfg.storage_url):
        return None
    storage = make_storage(cfg.storage_url, cfg.source, cfg.workers, create=False)
    if _existing_direction(storage, cfg.name) is None:
        return None
    # A writer needs a storage of its own (heartbeats, BEGIN IMMEDIATE); a reader goes on with this one.
    return open_study(cfg, create=create, storage=None if create else storage)


def _has_optuna_tables(url: str) -> bool:
    """Whether the database holds Optuna's tables (a new, empty database holds no study)."""
    engine = sqlalchemy.create_engine(url, **_engine_kwargs(url))
    try:
        return sqlalchemy.inspect(engine).has_table("studies")
    finally:
        engine.dispose()


def _is_missing_file(url: str) -> bool:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return False  # make_storage reports it
    path = parsed.database
    return parsed.get_backend_name() == "sqlite" and path not in (None, "", ":memory:") and not Path(path).is_file()


def _existing_direction(storage: optuna.storages.RDBStorage, name: str) -> str | None:
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return None
    return storage.get_study_directions(study_id)[0].name.lower()


def _record_study_attrs(study: optuna.Study, cfg: StudyConfig) -> None:
    resolved = cfg.resolved()
    resolved["storage"] = redact_url(resolved["storage"])
    attrs = {records.STUDY_METRIC: cfg.metric, records.STUDY_EPOCHS: cfg.train.epochs,
             records.STUDY_OUTPUT_DIR: str(Path(cfg.out_dir).resolve()), records.STUDY_VERSION: __version__,
             records.STUDY_CONFIG: resolved}
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([cfg.metric])  # the dashboard labels its axes "val_accuracy", not "Objective 0"


def finished_count(study: optuna.Study) -> int:
    """Finished trials (complete or pruned): the unit of the study-wide `n_trials` total."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


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
        storage_of(study).set_study_system_attr(study._study_id, key, run_settings(cfg))
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
    if not isinstance(worker, str) or ":" not in worker:
        return True
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
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


# --------------------------------------------------------------------------- storage failures

_DAMAGED = ("database disk image is malformed", "file is not a database", "file is encrypted or is not a database")
_FULL = ("database or disk is full", "no space left on device", "disk i/o error")
_GONE = ("connection refused", "server closed the connection", "terminating connection", "could not connect",
         "connection to server", "connection is closed", "the connection is lost", "connection timeout expired",
         "ssl connection has been closed", "unable to open database file")


def _damage(exc: BaseException, url: str) -> str:
    """What a storage exception means, for the user: damaged file, full disk, server gone; '' otherwise."""
    text = " ".join(str(exc).lower().split())
    if any(word in text for word in _DAMAGED):
        return _damaged(_first_line(exc, url), url)
    if any(word in text for word in _FULL):
        return f"cannot be written: the disk is full ({_first_line(exc, url)}); free space, then rerun to continue"
    if any(word in text for word in _GONE):
        return (f"stopped answering ({_first_line(exc, url)}); check that the database server is running, "
                f"then rerun to continue")
    return ""


def _damaged(detail: str, url: str) -> str:
    """The advice for a damaged SQLite file: a backup, or a salvage command that works without .recover."""
    old = make_url(url).database or "study.db"
    new = str(Path(old).with_name(f"{Path(old).stem}-salvaged.db"))
    salvage = (f"sqlite3 {shlex.quote(old)} .dump | sed 's/^ROLLBACK; -- due to errors$/COMMIT;/' "
               f"| sqlite3 {shlex.quote(new)}")
    return (f"is damaged ({detail}); restore it from a backup, or salvage the readable trials with "
            f"`{salvage}` and point storage: at the new file")


STORAGE_EXCEPTIONS: tuple[type[BaseException], ...] = (optuna.exceptions.StorageInternalError, SQLAlchemyError)


def storage_cause(exc: BaseException) -> BaseException:
    """The database's own exception behind Optuna's StorageInternalError (whose text blames the data)."""
    if isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ is not None:
        return exc.__cause__
    return exc


def storage_failure(exc: BaseException, cfg: StudyConfig, running: bool) -> HpsearchError:
    """One line for a storage exception raised after the storage opened: exit 1 in a run, 2 elsewhere."""
    cause = storage_cause(exc)
    what = (_damage(cause, cfg.storage_url)
            or f"failed ({_first_line(cause, cfg.storage_url)}); check the database, then rerun to continue")
    message = f"{cfg.source}: storage: '{redact_url(cfg.storage_url)}' {what}"
    return StorageFailure(message) if running else StorageError(message)


@contextmanager
def guard_storage(cfg: StudyConfig, running: bool = False) -> Iterator[None]:
    """Turn a storage exception inside the block into one line naming the storage and what failed."""
    try:
        yield
    except STORAGE_EXCEPTIONS as exc:
        raise storage_failure(exc, cfg, running) from exc


def is_storage_exception(exc: BaseException) -> bool:
    """Whether `exc` came from the storage layer (the database), not from training code."""
    return isinstance(exc, STORAGE_EXCEPTIONS)


# --------------------------------------------------------------------------- the adapter over Optuna internals
# Every use of Optuna's private API (storage handle, trial ids, the heartbeat table) is below, so an
# Optuna upgrade that changes it breaks here, and tests/test_study.py says so.

def storage_of(study: optuna.Study) -> optuna.storages.RDBStorage:
    """The study's storage object."""
    return study._storage  # type: ignore[return-value]


def study_system_attrs(study: optuna.Study) -> dict[str, Any]:
    """The study's system attributes (Optuna 5 no longer offers them on Study)."""
    return dict(storage_of(study).get_study_system_attrs(study._study_id))


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """The storage's id of a trial (not its number)."""
    return trial._trial_id


def current_state(study: optuna.Study, trial: optuna.Trial) -> optuna.trial.TrialState:
    """The trial's state as the storage has it now."""
    return storage_of(study).get_trial(trial_id(trial)).state


def retry_history(trial: optuna.Trial) -> list[int]:
    """Numbers of the failed trials this one retries, oldest first ([] for a fresh trial)."""
    return records.retry_history_of(trial.storage.get_trial_system_attrs(trial_id(trial)))


class Heartbeat:
    """A running trial's heartbeat thread: beats at once, then every interval, until the block ends.

    A storage error in the thread is logged once (the main thread meets the same storage soon and
    reports it); it never prints a thread traceback.
    """

    def __init__(self, study: optuna.Study, trial: optuna.Trial) -> None:
        self.storage = storage_of(study)
        self.url = _engine(self.storage).url.render_as_string(hide_password=False)  # for scrubbing messages
        self.trial_id = trial_id(trial)
        self.interval = self.storage.get_heartbeat_interval()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"heartbeat-{self.trial_id}", daemon=True)

    def _beat(self) -> None:
        failed = False
        while True:
            try:
                self.storage.record_heartbeat(self.trial_id)
                failed = False
            except Exception as exc:  # noqa: BLE001 - any storage error: report once, keep trying
                if not failed:
                    log.warning("heartbeat of trial id %d failed: %s", self.trial_id,
                                _first_line(storage_cause(exc), self.url))
                failed = True
            if self.stop.wait(self.interval):
                return

    def __enter__(self) -> Heartbeat:
        if self.interval is not None:
            self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()


def fail_stale_trials(study: optuna.Study, grace_period: float, max_retries: int) -> list[int]:
    """Fail (and queue again) running trials whose worker is gone; return their numbers.

    Stale: the last heartbeat is older than the grace period (Optuna's rule), or there is no
    heartbeat at all and the trial started longer ago than the grace period (its worker died
    between `ask` and its first heartbeat, which Optuna's rule never catches). Start times are the
    workers' local clocks, so hosts should agree on the time to within the grace period.
    """
    storage = storage_of(study)
    if storage.get_heartbeat_interval() is None:
        return []
    stale = set(storage._get_stale_trial_ids(study._study_id))
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    now = datetime.datetime.now()
    old = [t for t in running if t.datetime_start is not None
           and (now - t.datetime_start).total_seconds() > grace_period and trial_id(t) not in stale]
    without = _without_heartbeat(storage, [trial_id(t) for t in old])
    stale |= without
    failed = []
    for trial in running:
        tid = trial_id(trial)
        if tid not in stale:
            continue
        try:
            storage.set_trial_user_attr(tid, records.STOP_REASON, "worker_lost")
            if not storage.set_trial_state_values(tid, state=optuna.trial.TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # its worker finished it after all, or another worker got there first
        log.warning("trial %d lost its worker (%s); queued again to resume", trial.number,
                    "it never sent a heartbeat" if tid in without else "no heartbeat")
        requeue(study, storage.get_trial(tid), max_retries)
        failed.append(trial.number)
    return failed


def stored_distributions(study: optuna.Study) -> dict[str, list[optuna.distributions.BaseDistribution]]:
    """Every distinct distribution the study's trials recorded, per parameter (one query, not every trial)."""
    from optuna.storages._rdb import models

    params, trials = models.TrialParamModel.__table__, models.TrialModel.__table__
    query = (sqlalchemy.select(params.c.param_name, params.c.distribution_json).distinct()
             .join(trials, trials.c.trial_id == params.c.trial_id).where(trials.c.study_id == study._study_id))
    found: dict[str, list[optuna.distributions.BaseDistribution]] = {}
    with _engine(storage_of(study)).connect() as conn:
        for name, text in conn.execute(query):
            found.setdefault(name, []).append(optuna.distributions.json_to_distribution(text))
    return found


def _engine(storage: optuna.storages.BaseStorage) -> sqlalchemy.engine.Engine:
    return getattr(storage, "_backend", storage).engine  # a Study wraps its RDBStorage in a cache


def _trial_count(storage: optuna.storages.BaseStorage, name: str) -> int:
    """How many trials the study holds, by one count query (not by loading them)."""
    from optuna.storages._rdb import models

    trials = models.TrialModel.__table__
    study_id = storage.get_study_id_from_name(name)
    with _engine(storage).connect() as conn:
        query = sqlalchemy.select(sqlalchemy.func.count()).select_from(trials).where(trials.c.study_id == study_id)
        return int(conn.execute(query).scalar_one())


def state_counts(study: optuna.Study, below: int | None = None) -> dict[optuna.trial.TrialState, int]:
    """The study's trials by state, by one count query (a worker asks before every trial: loading them all
    costs O(trials) each time); with `below`, only trials numbered lower than it."""
    from optuna.storages._rdb import models

    trials = models.TrialModel.__table__
    query = sqlalchemy.select(trials.c.state, sqlalchemy.func.count()).where(trials.c.study_id == study._study_id)
    if below is not None:
        query = query.where(trials.c.number < below)
    with _engine(study._storage).connect() as conn:
        rows = conn.execute(query.group_by(trials.c.state)).all()
    return {optuna.trial.TrialState[getattr(state, "name", str(state))]: int(n) for state, n in rows}


def _without_heartbeat(storage: optuna.storages.RDBStorage, trial_ids: list[int]) -> set[int]:
    if not trial_ids:
        return set()
    from optuna.storages._rdb import models

    table = models.TrialHeartbeatModel.__table__
    with _engine(storage).connect() as conn:
        beating = set(conn.execute(sqlalchemy.select(table.c.trial_id).where(table.c.trial_id.in_(trial_ids)))
                      .scalars())
    return set(trial_ids) - beating


# --------------------------------------------------------------------------- whose files an output folder holds

OWNER_FILE = "study.json"  # in output_dir: the study (storage and id) whose checkpoints and logs the folder holds


def storage_identity(url: str) -> str:
    """Where a study lives, without secrets: an SQLite file's absolute path, or the URL with no password."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return f"sqlite:///{Path(parsed.database).resolve()}"
    return redact_url(url)  # the password masked: the same storage whatever the password


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
    owner = _owner(cfg)
    if owner is None:
        return
    mine = storage_identity(cfg.storage_url)
    same_id = study_id is None or owner.get("study_id") in (None, study_id)
    if owner.get("storage") == mine and owner.get("name") == cfg.name and same_id:
        return
    whose = f"study '{owner.get('name')}' in {owner.get('storage')} (study id {owner.get('study_id')})"
    this = f"this one is '{cfg.name}' in {redact_url(cfg.storage_url)}" + (f" (study id {study_id})" if study_id else "")
    raise ConfigError(f"{cfg.source}: output_dir: {cfg.out_dir} holds the checkpoints and logs of {whose}; {this}; "
                      f"set output_dir: (or --output-dir) to a folder of its own")


def claim_output_dir(cfg: StudyConfig, study: optuna.Study) -> None:
    """Record (once) that the output folder belongs to `study`; refuse it if it belongs to another."""
    check_output_dir(cfg, study._study_id)
    path = Path(cfg.out_dir) / OWNER_FILE
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"name": cfg.name, "storage": storage_identity(cfg.storage_url), "study_id": study._study_id}
    tmp = path.with_name(f".{OWNER_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)  # workers starting together write the same record
