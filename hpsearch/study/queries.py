"""Facts by query, not by loading trials: epoch sums, the best trial, workers by host, retry successors.

Reads Optuna's schema directly (like `adapter`, the other module that knows Optuna's internals)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import weakref
from collections import Counter
from collections.abc import Iterator
from typing import Any

import optuna
import sqlalchemy

from hpsearch import records, trialsets
from hpsearch.study.adapter import _engine, rdb_storage_of, storage_of, study_id

log = logging.getLogger("hpsearch")

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

    def per_trial(self, select: str) -> str:
        """`WITH per_trial AS (select)`: the per-trial rows a query sums, under the name `per_trial`."""
        return f"WITH per_trial AS ({select}) "

    def session(self) -> tuple[str, ...]:
        """Statements that set up a read's transaction."""
        return ()


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

    def per_trial(self, select: str) -> str:
        # Inlined, each outer mention of epochs_run re-ran its subqueries (36 subplans at 20,000 trials): 1.6 s.
        return f"WITH per_trial AS MATERIALIZED ({select}) "

    def session(self) -> tuple[str, ...]:
        # The planner's cost estimate at 20,000 trials switched JIT on, which spent 5.4 s of 6.8 s compiling.
        return ("SET LOCAL jit = off",)


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


@contextlib.contextmanager
def _reading(engine: sqlalchemy.engine.Engine, sql: _SqliteJson) -> Iterator[sqlalchemy.engine.Connection]:
    """A connection whose transaction the dialect has set up for these aggregate reads (rolled back at the end)."""
    with engine.connect() as conn:
        for statement in sql.session():
            conn.execute(sqlalchemy.text(statement))
        yield conn


def _in_sql(study: optuna.Study) -> bool:
    """Whether the study lives in an RDB storage (an in-memory study is read through its trials)."""
    return isinstance(rdb_storage_of(study), optuna.storages.RDBStorage)


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
        f"{sql.per_trial(_per_trial_epochs(sql, engine.dialect.name))}"
        f"SELECT {early_reason}, SUM(COALESCE({_TRAINED}, 0)), SUM(COALESCE({_CHARGE}, 0)), SUM({saved}) "
        f"FROM per_trial GROUP BY {early_reason}")
    params = _params(study, epochs=epochs or 0,
                     **{f"early_{i}": reason for i, reason in enumerate(records.EARLY_STOP_REASONS)})
    spent = committed = 0
    by_reason: dict[str, int] = {}
    with _reading(engine, sql) as conn:
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
        f"{sql.per_trial(_per_trial_epochs(sql, engine.dialect.name, where))}"
        f"SELECT ended.n, p.trial_id, p.state, COALESCE({_CHARGE.replace('state', 'p.state')}, 0) FROM "
        f"(SELECT COUNT(*) AS n FROM trials e WHERE e.study_id = :study_id AND NOT e.{_OPEN}) ended LEFT JOIN "
        f"per_trial p ON 1 = 1"
    ).bindparams(sqlalchemy.bindparam("open", expanding=True))
    with _reading(engine, sql) as conn:
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
    """The study's best trial as trialsets.best_trial defines it (complete, best finite value, lowest number among
    equals, feasible), found by one ordered query and read alone; a study with constraints is read trial by trial
    (feasibility is a system attr per trial)."""
    if not _in_sql(study) or records.constraints_of(study):
        return trialsets.best_trial(study)
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
    """trialsets.successors of the study, from the trials' retry histories alone."""
    if not _in_sql(study):
        return trialsets.successors(study.get_trials(deepcopy=False))
    return {history[-1]: number for number, stored in _system_attr_by_trial(study, records.RETRY_HISTORY)
            if (history := records.retry_history_of({records.RETRY_HISTORY: stored}))}


def all_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Every trial of the study, in number order, as Optuna's own storage would return them.

    Read by six plain selects instead of Optuna's ORM loading, which built an object per stored row: 93 s for a
    20,000-trial SQLite study against ~8 s here (the report reads every trial once)."""
    if not _in_sql(study):
        return study.get_trials(deepcopy=False)
    from optuna.storages._rdb import models

    trial_rows, parts = _trial_tables(study, models)
    made = []
    for row in trial_rows:
        tid = row.trial_id
        values = parts["values"].get(tid)
        made.append(optuna.trial.FrozenTrial(
            number=row.number, state=row.state, value=None,
            values=[v for _, v in sorted(values.items())] if values else None,
            datetime_start=row.datetime_start, datetime_complete=row.datetime_complete,
            params={name: dist.to_external_repr(v) for name, (v, dist) in parts["params"].get(tid, {}).items()},
            distributions={name: dist for name, (_, dist) in parts["params"].get(tid, {}).items()},
            user_attrs=parts["user"].get(tid, {}), system_attrs=parts["system"].get(tid, {}),
            intermediate_values=parts["steps"].get(tid, {}), trial_id=tid))
    return made


def _trial_tables(study: optuna.Study, models: Any) -> tuple[list[Any], dict[str, dict[int, dict[Any, Any]]]]:
    """The study's trial rows and, per kind, {trial_id: {key: value}} decoded as Optuna decodes them."""
    trials = models.TrialModel.__table__
    mine = sqlalchemy.select(trials.c.trial_id).where(trials.c.study_id == study_id(study)).scalar_subquery()
    in_study = lambda table: table.c.trial_id.in_(mine)  # noqa: E731
    p, v = models.TrialParamModel.__table__, models.TrialValueModel.__table__
    i, u = models.TrialIntermediateValueModel.__table__, models.TrialUserAttributeModel.__table__
    s = models.TrialSystemAttributeModel.__table__
    decoded_dists: dict[str, Any] = {}  # thousands of trials share a handful of distributions: parse each once
    parts: dict[str, dict[int, dict[Any, Any]]] = {"params": {}, "values": {}, "steps": {}, "user": {}, "system": {}}
    with _engine(storage_of(study)).connect() as conn:
        rows = conn.execute(sqlalchemy.select(trials).where(trials.c.study_id == study_id(study))
                            .order_by(trials.c.number)).all()
        for tid, name, value, text in conn.execute(sqlalchemy.select(
                p.c.trial_id, p.c.param_name, p.c.param_value, p.c.distribution_json).where(in_study(p))
                .order_by(p.c.param_id)):
            if text not in decoded_dists:
                decoded_dists[text] = optuna.distributions.json_to_distribution(text)
            parts["params"].setdefault(tid, {})[name] = (value, decoded_dists[text])
        for tid, objective, value, kind in conn.execute(sqlalchemy.select(
                v.c.trial_id, v.c.objective, v.c.value, v.c.value_type).where(in_study(v))):
            parts["values"].setdefault(tid, {})[objective] = models.TrialValueModel.stored_repr_to_value(value, kind)
        for tid, step, value, kind in conn.execute(sqlalchemy.select(
                i.c.trial_id, i.c.step, i.c.intermediate_value, i.c.intermediate_value_type).where(in_study(i))):
            parts["steps"].setdefault(tid, {})[step] = (
                models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(value, kind))
        for table, kind in ((u, "user"), (s, "system")):
            for tid, key, text in conn.execute(sqlalchemy.select(
                    table.c.trial_id, table.c.key, table.c.value_json).where(in_study(table))):
                parts[kind].setdefault(tid, {})[key] = json.loads(text)
    return rows, parts
