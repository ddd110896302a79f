"""The one adapter over Optuna internals: storage handle, study and trial ids, heartbeats, stale trials, and
the hand-back of a trial cut short (fail it, record why, queue it again), which worker, supervisor and
stale check all go through.

Every use of Optuna's private API is here, so an Optuna upgrade that changes it breaks here (tests/study/test_study.py)."""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import threading
import weakref
from collections import Counter
from typing import Any

import optuna
import sqlalchemy

from hpsearch import records
from hpsearch.study.failures import storage_cause
from hpsearch.study.urls import _first_line

log = logging.getLogger("hpsearch")

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial, max_retries: int) -> None:
    """Queue a failed (died or interrupted) trial again with the same parameters; it resumes from its checkpoint."""
    history = records.retry_history_of(trial.system_attrs) + [trial.number]
    if len(history) > max_retries:
        return
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        system_attrs=records.retry_attrs(history),
    ))


def _existing_direction(storage: optuna.storages.RDBStorage, name: str) -> str | None:
    try:
        sid = storage.get_study_id_from_name(name)
    except KeyError:
        return None
    return storage.get_study_directions(sid)[0].name.lower()


def finished_count(study: optuna.Study) -> int:
    """Finished trials (complete or pruned): the unit of the study-wide `n_trials` total."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


# --------------------------------------------------------------------------- the adapter over Optuna internals
# Every use of Optuna's private API (storage handle, trial ids, the heartbeat table) is below, so an
# Optuna upgrade that changes it breaks here, and tests/study/test_study.py says so.


def storage_of(study: optuna.Study) -> optuna.storages.RDBStorage:
    """The study's storage object."""
    return study._storage  # type: ignore[return-value]


def study_id(study: optuna.Study) -> int:
    """The storage's id of the study (not its name)."""
    return study._study_id


def study_system_attrs(study: optuna.Study) -> dict[str, Any]:
    """The study's system attributes (Optuna 5 no longer offers them on Study)."""
    return dict(storage_of(study).get_study_system_attrs(study_id(study)))


def set_study_system_attr(study: optuna.Study, key: str, value: Any) -> None:
    """Store one study system attribute (Optuna 5 no longer offers it on Study)."""
    storage_of(study).set_study_system_attr(study_id(study), key, value)


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
    stale = set(storage._get_stale_trial_ids(study_id(study)))
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    now = datetime.datetime.now()
    old = [t for t in running if t.datetime_start is not None
           and (now - t.datetime_start).total_seconds() > grace_period and trial_id(t) not in stale]
    without = _without_heartbeat(storage, [trial_id(t) for t in old])
    stale |= without
    failed = []
    for trial in running:
        tid = trial_id(trial)
        if tid not in stale or hand_back(study, trial, records.WORKER_LOST, max_retries) is None:
            continue  # not stale, or its worker finished it after all, or another worker got there first
        log.warning("trial %d lost its worker (%s); queued again to resume", trial.number,
                    "it never sent a heartbeat" if tid in without else "no heartbeat")
        failed.append(trial.number)
    return failed


def hand_back(study: optuna.Study, trial: optuna.Trial | optuna.trial.FrozenTrial, reason: str,
              max_retries: int) -> optuna.trial.FrozenTrial | None:
    """Fail a running trial cut short through no fault of its own, record `reason`, queue it again to resume.

    `reason` is one of `records.HANDED_BACK`. Returns the failed trial, or None when the trial had
    ended already (its worker finished it, or another process handed it back first): then nothing changes.
    """
    storage, tid = storage_of(study), trial_id(trial)
    try:
        if storage.get_trial(tid).state != optuna.trial.TrialState.RUNNING:
            return None
        storage.set_trial_user_attr(tid, records.STOP_REASON, reason)
        if not storage.set_trial_state_values(tid, state=optuna.trial.TrialState.FAIL):
            return None
    except optuna.exceptions.UpdateFinishedTrialError:
        return None
    failed = storage.get_trial(tid)
    requeue(study, failed, max_retries)
    return failed


def stored_distributions(study: optuna.Study) -> dict[str, list[optuna.distributions.BaseDistribution]]:
    """Every distinct distribution the study's trials recorded, per parameter (one query, not every trial)."""
    from optuna.storages._rdb import models

    params, trials = models.TrialParamModel.__table__, models.TrialModel.__table__
    query = (sqlalchemy.select(params.c.param_name, params.c.distribution_json).distinct()
             .join(trials, trials.c.trial_id == params.c.trial_id).where(trials.c.study_id == study_id(study)))
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
    sid = storage.get_study_id_from_name(name)
    with _engine(storage).connect() as conn:
        query = sqlalchemy.select(sqlalchemy.func.count()).select_from(trials).where(trials.c.study_id == sid)
        return int(conn.execute(query).scalar_one())


def state_counts(study: optuna.Study, below: int | None = None) -> dict[optuna.trial.TrialState, int]:
    """The study's trials by state, by one count query (a worker asks before every trial: loading them all
    costs O(trials) each time); with `below`, only trials numbered lower than it."""
    from optuna.storages._rdb import models

    trials = models.TrialModel.__table__
    query = sqlalchemy.select(trials.c.state, sqlalchemy.func.count()).where(trials.c.study_id == study_id(study))
    if below is not None:
        query = query.where(trials.c.number < below)
    with _engine(storage_of(study)).connect() as conn:
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


# --------------------------------------------------------------------------- facts by query, not by loading trials
# `status`, `best` and the epoch budget need sums and one row where loading a 20,000-trial study through
# get_all_trials takes ~20 s. The JSON attribute values are read in SQL on SQLite and PostgreSQL; on any other
# backend these return None and the caller computes the same fact from the trials.


class _SqliteJson:
    """A stored `value_json` read in SQLite's SQL: an integral number (whole value or under a key), a string, an
    array's length; NULL for a value of any other kind (as records.as_int: a bool or a fraction is no count)."""

    def integer(self, v: str, key: str | None = None) -> str:
        path = "'$'" if key is None else f"'$.' || {key}"
        n = f"json_extract({v}, {path})"
        return (f"(CASE WHEN json_type({v}, {path}) IN ('integer', 'real') THEN "
                f"(CASE WHEN {n} = CAST({n} AS INTEGER) THEN CAST({n} AS INTEGER) END) END)")

    def string(self, v: str) -> str:
        return f"(CASE WHEN json_type({v}) = 'text' THEN json_extract({v}, '$') END)"

    def array_length(self, v: str) -> str:
        return f"(CASE WHEN json_type({v}) = 'array' THEN json_array_length({v}) END)"


class _PostgresJson(_SqliteJson):
    """The same over PostgreSQL's jsonb (`v` already cast to JSONB); nested CASEs: AND does not order evaluation."""

    def integer(self, v: str, key: str | None = None) -> str:
        j = v if key is None else f"({v} -> CAST({key} AS TEXT))"
        n = f"CAST({j} #>> '{{}}' AS NUMERIC)"
        return f"(CASE WHEN jsonb_typeof({j}) = 'number' THEN (CASE WHEN {n} = TRUNC({n}) THEN CAST({n} AS BIGINT) END) END)"

    def string(self, v: str) -> str:
        return f"(CASE WHEN jsonb_typeof({v}) = 'string' THEN ({v} #>> '{{}}') END)"

    def array_length(self, v: str) -> str:
        return f"(CASE WHEN jsonb_typeof({v}) = 'array' THEN jsonb_array_length({v}) END)"


def _json(dialect: str) -> _SqliteJson | None:
    return {"sqlite": _SqliteJson, "postgresql": _PostgresJson}.get(dialect, lambda: None)()


def _per_trial_epochs(sql: _SqliteJson, dialect: str, where: str = "") -> str:
    """One row per trial of the study: state, epochs run, epochs taken over by a resume, budget claim, stop reason.

    The same rules as records.epochs_run (the recorded count, else the history's length, else the last reported
    step), budget.resumed_epochs and records.stop_reason (a pruned trial that did not say is pruned).
    """
    # Joined once per key, not a subquery per use: SQLite ran a correlated subquery for every mention (2.6 s at
    # 20,000 trials). The history (long) and the reported steps are read only for a trial with no epochs_run.
    joins = " ".join(f"LEFT JOIN trial_user_attributes {alias} ON {alias}.trial_id = t.trial_id AND {alias}.key = :{key}"
                     for alias, key in (("er", "epochs_run"), ("rf", "resumed"), ("bc", "claim"), ("sr", "stop_reason")))
    history = "(SELECT h.value_json FROM trial_user_attributes h WHERE h.trial_id = t.trial_id AND h.key = :history)"
    value = (lambda v: f"CAST({v} AS JSONB)") if dialect == "postgresql" else (lambda v: v)  # jsonb functions
    epochs_run = (f"COALESCE({sql.integer(value('er.value_json'))}, NULLIF({sql.array_length(value(history))}, 0), "
                  "(SELECT MAX(i.step) FROM trial_intermediate_values i WHERE i.trial_id = t.trial_id))")
    return (f"SELECT t.trial_id, CAST(t.state AS VARCHAR(16)) AS state, {epochs_run} AS epochs_run, "
            f"COALESCE({sql.integer(value('rf.value_json'), ':epoch')}, 0) AS resumed, "
            f"COALESCE({sql.integer(value('bc.value_json'))}, 0) AS claim, "
            f"COALESCE({sql.string(value('sr.value_json'))}, "
            f"CASE WHEN CAST(t.state AS VARCHAR(16)) = 'PRUNED' THEN :pruned END) AS reason "
            f"FROM trials t {joins} WHERE t.study_id = :study_id{where}")


def _in_sql(study: optuna.Study) -> bool:
    """Whether the study lives in an RDB storage (an in-memory study is read through its trials)."""
    return isinstance(getattr(storage_of(study), "_backend", storage_of(study)), optuna.storages.RDBStorage)


_TRAINED = "(CASE WHEN epochs_run - resumed > 0 THEN epochs_run - resumed ELSE 0 END)"  # budget.trained
_CHARGE = f"(CASE WHEN state = 'RUNNING' AND claim > {_TRAINED} THEN claim ELSE {_TRAINED} END)"  # budget.charge


def _sql_of(study: optuna.Study) -> tuple[sqlalchemy.engine.Engine, _SqliteJson] | None:
    if not _in_sql(study):
        return None
    engine = _engine(storage_of(study))
    sql = _json(engine.dialect.name)
    return None if sql is None else (engine, sql)


def _params(study: optuna.Study, **more: Any) -> dict[str, Any]:
    return {"epochs_run": records.EPOCHS_RUN, "history": records.HISTORY, "resumed": records.RESUMED_FROM,
            "claim": records.BUDGET_CLAIM, "stop_reason": records.STOP_REASON, "epoch": records.EPOCH,
            "pruned": records.PRUNED, "study_id": study_id(study), **more}


def epoch_sums(study: optuna.Study, epochs: int | None) -> tuple[int, int, dict[str, int]] | None:
    """(epochs spent, epochs committed, epochs saved by stop reason) study-wide, by one aggregate query.

    Spent: each trial's own epochs (epochs run less those a resume took over, never below 0); committed: spent,
    with a running trial's budget claim where that is more; saved (with `epochs`, the epochs of one trial): the
    unrun epochs of trials that pruning or early stopping stopped. hpsearch.budget defines these over trials; None
    where the backend has no JSON functions used here (the caller then reads the trials).
    """
    found = _sql_of(study)
    if found is None:
        return None
    engine, sql = found
    early = ", ".join(f":early_{i}" for i in range(len(records.EARLY_STOP_REASONS)))
    saved = (f"(CASE WHEN reason IN ({early}) AND epochs_run IS NOT NULL AND :epochs > epochs_run "
             "THEN :epochs - epochs_run ELSE 0 END)")
    early_reason = f"(CASE WHEN reason IN ({early}) THEN reason END)"
    query = sqlalchemy.text(
        f"SELECT {early_reason}, SUM(COALESCE({_TRAINED}, 0)), SUM(COALESCE({_CHARGE}, 0)), SUM({saved}) "
        f"FROM ({_per_trial_epochs(sql, engine.dialect.name)}) per_trial GROUP BY {early_reason}")
    params = _params(study, epochs=epochs or 0,
                     **{f"early_{i}": reason for i, reason in enumerate(records.EARLY_STOP_REASONS)})
    spent = committed = 0
    by_reason: dict[str, int] = {}
    with engine.connect() as conn:
        for reason, own, charged, unrun in conn.execute(query, params):
            spent, committed = spent + int(own or 0), committed + int(charged or 0)
            if reason is not None and epochs is not None:
                by_reason[reason] = int(unrun or 0)
    return spent, committed, {r: by_reason[r] for r in records.EARLY_STOP_REASONS if r in by_reason}


@dataclasses.dataclass
class _Ledger:
    """One process's record of the ended trials' charges (an ended trial never changes: Optuna refuses updates)."""

    charges: dict[int, int] = dataclasses.field(default_factory=dict)  # trial id -> charge, ended trials
    open: set[int] = dataclasses.field(default_factory=set)  # ids that were running or waiting at the last read
    top: int = 0  # the highest trial id read


_LEDGERS: weakref.WeakKeyDictionary[optuna.Study, _Ledger] = weakref.WeakKeyDictionary()
_OPEN = "state IN ('RUNNING', 'WAITING')"


def committed_epochs(study: optuna.Study) -> int | None:
    """Epochs committed study-wide (see :func:`epoch_sums`), reading per call only the open trials and those that
    ended since the last call (the worker asks before every trial and every epoch: 0.3 s a full sum at 20,000
    trials here). None as epoch_sums."""
    found = _sql_of(study)
    if found is None:
        return None
    ledger = _LEDGERS.setdefault(study, _Ledger())
    committed = _read_ledger(study, *found, ledger, check=True)
    if committed is None:  # an ended trial with an id below the highest read (ids are not committed in order)
        ledger = _LEDGERS[study] = _Ledger()
        committed = _read_ledger(study, *found, ledger, check=False)
    return committed


def _read_ledger(study: optuna.Study, engine: sqlalchemy.engine.Engine, sql: _SqliteJson, ledger: _Ledger,
                 check: bool) -> int | None:
    """Add what ended since the ledger's last read; the committed total, or None (`check`) when the ended trials
    the ledger holds are not all there are. One statement, so one snapshot: a trial ending meanwhile counts once."""
    where = f" AND (t.{_OPEN} OR t.trial_id > :top OR t.trial_id IN :open)"
    query = sqlalchemy.text(
        f"SELECT ended.n, p.trial_id, p.state, COALESCE({_CHARGE.replace('state', 'p.state')}, 0) FROM "
        f"(SELECT COUNT(*) AS n FROM trials e WHERE e.study_id = :study_id AND NOT e.{_OPEN}) ended LEFT JOIN "
        f"({_per_trial_epochs(sql, engine.dialect.name, where)}) p ON 1 = 1"
    ).bindparams(sqlalchemy.bindparam("open", expanding=True))
    with engine.connect() as conn:
        rows = conn.execute(query, _params(study, top=ledger.top, open=sorted(ledger.open) or [-1])).all()
    running, ledger.open = 0, set()
    for _, tid, state, charge in rows:
        if tid is None:
            continue  # nothing open and nothing new: the count row alone
        ledger.top = max(ledger.top, tid)
        if state in ("RUNNING", "WAITING"):
            running += int(charge)
            ledger.open.add(tid)
        else:
            ledger.charges[tid] = int(charge)
    if check and rows[0][0] != len(ledger.charges):
        return None
    return sum(ledger.charges.values()) + running


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The study's best trial as records.best_trial defines it (complete, best finite value, lowest number among
    equals), found by one ordered query and read alone."""
    if not _in_sql(study):
        return records.best_trial(study)
    from optuna.storages._rdb import models

    trials, values = models.TrialModel.__table__, models.TrialValueModel.__table__
    value = values.c.value.desc() if records.direction_of(study) == "maximize" else values.c.value.asc()
    query = (sqlalchemy.select(trials.c.trial_id).join(values, values.c.trial_id == trials.c.trial_id)
             .where(trials.c.study_id == study_id(study), trials.c.state == optuna.trial.TrialState.COMPLETE,
                    values.c.objective == 0, values.c.value_type == models.TrialValueModel.TrialValueType.FINITE,
                    values.c.value.is_not(None))
             .order_by(value, trials.c.number.asc()).limit(1))
    with _engine(storage_of(study)).connect() as conn:
        found = conn.execute(query).scalar_one_or_none()
    return None if found is None else storage_of(study).get_trial(found)


def _system_attr_by_trial(study: optuna.Study, key: str) -> list[tuple[int, Any]]:
    """(number, value) of every trial that stores the system attribute `key`."""
    from optuna.storages._rdb import models

    trials, attrs = models.TrialModel.__table__, models.TrialSystemAttributeModel.__table__
    query = (sqlalchemy.select(trials.c.number, attrs.c.value_json).join(attrs, attrs.c.trial_id == trials.c.trial_id)
             .where(trials.c.study_id == study_id(study), attrs.c.key == key))
    with _engine(storage_of(study)).connect() as conn:
        return [(number, json.loads(text)) for number, text in conn.execute(query)]


def worker_states(study: optuna.Study) -> list[tuple[str, optuna.trial.TrialState, int]]:
    """(worker `host:pid`, state, trials) over the trials that name their worker, counted in SQL."""
    if not _in_sql(study):
        counted = Counter((records.worker(t), t.state) for t in study.get_trials(deepcopy=False))
        return [(worker, state, n) for (worker, state), n in counted.items() if worker is not None]
    from optuna.storages._rdb import models

    trials, attrs = models.TrialModel.__table__, models.TrialUserAttributeModel.__table__
    query = (sqlalchemy.select(attrs.c.value_json, trials.c.state, sqlalchemy.func.count())
             .join(attrs, attrs.c.trial_id == trials.c.trial_id)
             .where(trials.c.study_id == study_id(study), attrs.c.key == records.WORKER)
             .group_by(attrs.c.value_json, trials.c.state))
    with _engine(storage_of(study)).connect() as conn:
        rows = conn.execute(query).all()
    return [(str(json.loads(text)), optuna.trial.TrialState[getattr(state, "name", str(state))], int(n))
            for text, state, n in rows if text is not None and json.loads(text) is not None]


def trials_in(study: optuna.Study, states: tuple[optuna.trial.TrialState, ...]) -> list[optuna.trial.FrozenTrial]:
    """The study's trials in `states`, read alone (the study's cache would first read every trial)."""
    storage = storage_of(study)
    return getattr(storage, "_backend", storage).get_all_trials(study_id(study), deepcopy=False, states=states)


def successors(study: optuna.Study) -> dict[int, int]:
    """records.successors of the study, from the trials' retry histories alone."""
    if not _in_sql(study):
        return records.successors(study.get_trials(deepcopy=False))
    return {history[-1]: number for number, stored in _system_attr_by_trial(study, records.RETRY_HISTORY)
            if (history := records.retry_history_of({records.RETRY_HISTORY: stored}))}
