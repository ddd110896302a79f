"""Sampler, pruner and storage factories, and `open_study`: where a config meets Optuna."""

from __future__ import annotations

import logging
import random
import re
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import optuna
import sqlalchemy
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, SQLAlchemyError

from hpsearch import __version__
from hpsearch.config import StudyConfig, WorkersConfig
from hpsearch.errors import StorageError
from hpsearch import space

log = logging.getLogger("hpsearch")
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
SQLITE_BUSY_TIMEOUT_S = 60
HIDDEN = "***"
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
        return optuna.pruners.PatientPruner(wrapped, patience=p.patience, min_delta=p.min_delta)
    if p.type == "threshold":
        return optuna.pruners.ThresholdPruner(lower=p.lower, upper=p.upper, n_warmup_steps=p.n_warmup_steps)
    return optuna.pruners.NopPruner()


def _engine_kwargs(url: str) -> dict[str, Any]:
    if make_url(url).get_backend_name() == "sqlite":
        # Several local workers share one file: wait for the lock instead of failing at once.
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    return {"pool_pre_ping": True}


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
    history = list(trial.system_attrs.get("retry_history", [])) + [trial.number]
    if len(history) > max_retries:
        return
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        system_attrs={"failed_trial": history[0], "retry_history": history},
    ))


def _retry_callback(max_retries: int) -> Any:
    def on_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        log.warning("trial %d lost its worker (no heartbeat); queued again to resume", trial.number)
        requeue(study, trial, max_retries)

    return on_stale


def _prepare_sqlite(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sqlalchemy.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
    try:
        with engine.connect() as conn:
            # WAL lets readers (dashboard, status) run beside the writing workers; it persists in the file.
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    finally:
        engine.dispose()


def _rdb_storage(url: str, heartbeat: dict[str, Any]) -> optuna.storages.RDBStorage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are "experimental"
        return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url), **heartbeat)


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
        try:
            _prepare_sqlite(url)
        except SQLAlchemyError as exc:  # e.g. a read-only folder: reading still works without WAL
            log.warning("could not switch %s to WAL journaling (%s); readers may slow the workers",
                        parsed.database, _first_line(exc, url))
    try:
        # Readers accept any schema version, as optuna-dashboard itself does.
        return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url), skip_compatibility_check=True,
                                          skip_table_creation=True)
    except optuna.exceptions.StorageInternalError as exc:
        if isinstance(exc.__cause__, SQLAlchemyError):
            raise exc.__cause__ from None  # the driver's error says what is wrong; Optuna's wrapper does not
        raise


def make_storage(url: str, source: str = "<memory>", workers: WorkersConfig | None = None,
                 create: bool = True) -> optuna.storages.RDBStorage:
    """Open (creating tables if needed) the RDB storage at `url`; unreachable → StorageError.

    With `workers`, running trials send heartbeats and a trial whose worker died is failed after
    the grace period and queued again. With `create=False` (readers such as the dashboard),
    nothing is created: a missing SQLite file is a StorageError. Error messages never show the
    password.
    """
    check_url(url, source)
    shown = redact_url(url)
    heartbeat: dict[str, Any] = {}
    if workers is not None:
        heartbeat = {"heartbeat_interval": workers.heartbeat_interval, "grace_period": workers.grace_period,
                     "heartbeat_stale_trial_callback": _retry_callback(workers.max_retries)}
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
    except (SQLAlchemyError, OSError) as exc:
        raise StorageError(f"{source}: storage: cannot open '{shown}' ({_first_line(exc, url)}); check that the "
                           f"database server is running and the URL is right") from None


def _first_line(exc: BaseException, url: str) -> str:
    """The first line of a driver's error, without SQLAlchemy's link and without any secret of `url`."""
    text = scrub(str(exc), url).strip().splitlines()
    message = text[0] if text else type(exc).__name__
    return message.replace("(Background on this error at: https://sqlalche.me/e/20/e3q8)", "").strip()[:300]


def open_study(cfg: StudyConfig, create: bool = True, sampler_seed: int | None = None) -> optuna.Study:
    """Create or continue the study named in `cfg`; refuse a same-named study of the other direction.

    Parallel workers pass their own `sampler_seed`: with the study seed in every process, they
    would all draw the same random start-up points.
    """
    storage = make_storage(cfg.storage_url, cfg.source, cfg.workers)
    existing = _existing_direction(storage, cfg.name)
    if existing is None and not create:
        raise StorageError(f"{cfg.source}: name: no study '{cfg.name}' in {redact_url(cfg.storage_url)}; "
                           f"run `hpsearch run {cfg.source}` first or check storage:")
    if existing is not None and existing != cfg.resolved_direction:
        raise StorageError(f"{cfg.source}: direction: study '{cfg.name}' in the storage is {existing}d, the file says "
                           f"{cfg.resolved_direction}; rename the study or fix direction")
    study = optuna.create_study(storage=storage, study_name=cfg.name, direction=cfg.resolved_direction,
                                sampler=make_sampler(cfg, sampler_seed), pruner=make_pruner(cfg), load_if_exists=True)
    if existing is None:
        _record_study_attrs(study, cfg)
    return study


def _existing_direction(storage: optuna.storages.RDBStorage, name: str) -> str | None:
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return None
    return storage.get_study_directions(study_id)[0].name.lower()


def _record_study_attrs(study: optuna.Study, cfg: StudyConfig) -> None:
    resolved = cfg.resolved()
    resolved["storage"] = redact_url(resolved["storage"])
    attrs = {"metric": cfg.metric, "epochs": cfg.train.epochs, "output_dir": str(Path(cfg.out_dir).resolve()),
             "hpsearch_version": __version__, "config": resolved}
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([cfg.metric])  # the dashboard labels its axes "val_accuracy", not "Objective 0"


def count_states(study: optuna.Study) -> dict[str, int]:
    """Trials by state name (COMPLETE, PRUNED, FAIL, RUNNING, WAITING), zeros included."""
    counts = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    return {state.name: counts.get(state.name, 0) for state in optuna.trial.TrialState}


def finished_count(study: optuna.Study) -> int:
    """Finished trials (complete or pruned): the unit of the study-wide `n_trials` total."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best complete trial, or None while there is none."""
    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        return None
    return study.best_trial
