"""The one adapter over Optuna internals: storage handle, study and trial ids, heartbeats, stale trials, and
the hand-back of a trial cut short (fail it, record why, queue it again), which worker, supervisor and
stale check all go through.

Every use of Optuna's private API is here or in `queries` (the facts read by SQL from Optuna's schema), so an Optuna upgrade that changes it breaks here (tests/study/test_study.py)."""

from __future__ import annotations

import datetime
import logging
import threading
from typing import Any

import optuna
import sqlalchemy

from hpsearch import records
from hpsearch.study.failures import storage_cause
from hpsearch.study.pool import patience
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


def rdb_storage_of(study: optuna.Study) -> optuna.storages.RDBStorage:
    """The RDB storage under the study's cache: what `make_storage` opened, to open another study with."""
    return getattr(storage_of(study), "_backend", storage_of(study))


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
    reports it); it never prints a thread traceback. On PostgreSQL a beat waits for the process's one
    connection while the main thread uses it (pool.py), at most half the time a late beat can spare before
    the trial looks stale; after that it beats on a second connection rather than let the trial be failed.
    """

    def __init__(self, study: optuna.Study, trial: optuna.Trial) -> None:
        self.storage = storage_of(study)
        self.url = _engine(self.storage).url.render_as_string(hide_password=False)  # for scrubbing messages
        self.trial_id = trial_id(trial)
        self.interval = self.storage.get_heartbeat_interval()
        self.patience = None if self.interval is None else _beat_patience(self.storage, self.interval)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"heartbeat-{self.trial_id}", daemon=True)

    def _beat(self) -> None:
        with patience(self.patience):
            self._beat_until_stopped()

    def _beat_until_stopped(self) -> None:
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


def _beat_patience(storage: optuna.storages.BaseStorage, interval: int) -> float:
    """Half the slack between the interval and the grace period (Optuna's default grace: two intervals)."""
    grace = getattr(getattr(storage, "_backend", storage), "grace_period", None) or 2 * interval
    return max(0.0, min(interval, grace - interval) / 2)


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
    now = datetime.datetime.now()
    without = {tid for tid, start, beating in _running_starts(storage, study_id(study))
               if not beating and start is not None and (now - start).total_seconds() > grace_period} - stale
    failed = []
    for tid in sorted(stale | without):
        trial = storage.get_trial(tid)
        if hand_back(study, trial, records.WORKER_LOST, max_retries) is None:
            continue  # its worker finished it after all, or another worker got there first
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


def dispose_storage(study: optuna.Study) -> None:
    """Close the connection pool of the study's storage (it reconnects if used again)."""
    _engine(storage_of(study)).dispose()


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


def _running_starts(storage: optuna.storages.BaseStorage, sid: int) -> list[tuple[int, datetime.datetime | None, bool]]:
    """(trial id, start, has a heartbeat) of the study's running trials, by one query: every worker checks at each
    heartbeat interval, and reading the running trials whole cost 71 ms CPU a trial at 64 workers (bench/scale.py)."""
    from optuna.storages._rdb import models

    trials, beats = models.TrialModel.__table__, models.TrialHeartbeatModel.__table__
    query = (sqlalchemy.select(trials.c.trial_id, trials.c.datetime_start, beats.c.trial_id.is_not(None))
             .outerjoin(beats, beats.c.trial_id == trials.c.trial_id)
             .where(trials.c.study_id == sid, trials.c.state == optuna.trial.TrialState.RUNNING))
    with _engine(storage).connect() as conn:
        return [(int(tid), start, bool(beating)) for tid, start, beating in conn.execute(query)]
