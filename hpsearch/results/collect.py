"""Read a study once into plain data (:mod:`hpsearch.results.studydata`), one small collector per section.

Every stored fact comes through :mod:`hpsearch.records`; the search-space sections (parallel
coordinates, contour, slices) come from :mod:`hpsearch.results.params`.
"""

from __future__ import annotations

import datetime as dt
import random
import statistics
from collections import Counter
from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch import budget, records, trialsets
from hpsearch.results import params, pareto
from hpsearch.results.importances import param_importances
from hpsearch.study.queries import all_trials
from hpsearch.results.studydata import STATES, BestPoint, Curve, ParamInfo, Session, StudyData, Summary, TrialRow

__all__ = ["collect_study", "MAX_IMPORTANCE_TRIALS"]

# Importance evaluators gain nothing past a few thousand trials and get slow (fANOVA): subsample above.
MAX_IMPORTANCE_TRIALS = 5000


def collect_study(study: optuna.Study) -> StudyData:
    """Read ``study`` once and return plain data for tables, figures and tests."""
    collected_at = dt.datetime.now()
    trials = all_trials(study)
    metric, direction, epochs = records.metric_of(study), records.direction_of(study), records.epochs_of(study)
    complete = trialsets.complete_trials(trials)
    ordered = sorted(complete, key=lambda t: t.number)  # the order the sampler saw them
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    start = min(starts) if starts else None
    rows = [_trial_row(t) for t in trials]

    notes = _notes(trials, complete, epochs)
    infos = params.param_infos(trials, complete)
    target = importance_study(study, complete) if len(complete) >= 2 else None
    importances, importance_note = _importances(target, complete, infos) if complete else ({}, None)
    if importance_note and not importances:
        notes.append(importance_note)
    contour = params.contour(infos, ordered) if complete else None
    if isinstance(contour, str):
        notes.append(contour)
        contour = None

    return StudyData(
        name=study.study_name,
        direction=direction,
        metric=metric,
        epochs=epochs,
        output_dir=records.output_dir_of(study),
        collected_at=collected_at,
        start=start,
        summary=_summary(study, trials, rows, complete, direction, epochs, notes),
        params=infos,
        trials=rows,
        curves=[c for c in (_curve(t, metric) for t in trials) if c is not None],
        best_so_far=_best_so_far(ordered, direction, start),
        importances=importances,
        importance_note=importance_note,
        parallel=params.parallel(ordered, infos) if complete else None,
        contour=contour,
        slices=params.slices(ordered, infos) if complete else [],
        pareto=pareto.collect_pareto(study, trials),
        objective_importances=pareto.objective_importances(study, target, [p.name for p in infos if p.varies]),
    )


def _trial_row(t: FrozenTrial) -> TrialRow:
    return TrialRow(
        number=t.number,
        state=t.state.name,
        value=records.first_value(t),
        params=dict(t.params),
        start=t.datetime_start,
        end=t.datetime_complete,
        duration_s=records.duration_s(t),
        worker=records.worker(t),
        slot=records.slot(t),
        device=records.device(t),
        epochs_run=records.epochs_run(t),
        best_epoch=records.best_epoch(t),
        stop_reason=records.stop_reason(t),
        train_time=records.train_time(t),
        checkpoint=records.checkpoint(t),
        values=list(t.values or []),
        feasible=records.is_feasible(t),
        costs=records.costs(t),
    )


def _curve(t: FrozenTrial, metric: str) -> Curve | None:
    """Per-epoch metric: from the history when every record has ``metric``, else the intermediate values."""
    history = records.history(t)
    if history and all(records.as_float(h.get(metric)) is not None for h in history):
        epochs = [records.epoch_number(h, i) for i, h in enumerate(history, start=1)]
        values = [float(h[metric]) for h in history]
    else:
        steps = sorted(t.intermediate_values)
        epochs = [int(step) for step in steps]
        values = [float(t.intermediate_values[step]) for step in steps]
    if not epochs:
        return None
    return Curve(t.number, t.state.name, records.stop_reason(t), epochs, values)


def _best_so_far(ordered: Sequence[FrozenTrial], direction: str, start: dt.datetime | None) -> list[BestPoint]:
    """Each complete trial's value and the best up to it, in trial-number order."""
    pick = max if direction == "maximize" else min
    points: list[BestPoint] = []
    best: float | None = None
    for t in ordered:
        value = float(records.first_value(t))  # type: ignore[arg-type]
        best = value if best is None else pick(best, value)
        elapsed = ((t.datetime_complete - start).total_seconds()
                   if start is not None and t.datetime_complete is not None else None)
        points.append(BestPoint(t.number, elapsed, value, best))
    return points


def _notes(trials: Sequence[FrozenTrial], complete: Sequence[FrozenTrial], epochs: int | None) -> list[str]:
    """What the summary cannot say, and why."""
    notes: list[str] = []
    if epochs is None:
        notes.append(f"epochs saved unknown: the study has no {records.STUDY_EPOCHS!r} user attr")
    if not trials:
        notes.append("this study has no trials yet")
    elif not complete:
        notes.append("no trial has completed yet: history, importances, parallel coordinates, "
                     "contour and slices need complete trials")
    return notes


def _summary(study: optuna.Study, trials: Sequence[FrozenTrial], rows: Sequence[TrialRow],
             complete: Sequence[FrozenTrial], direction: str, epochs: int | None, notes: list[str]) -> Summary:
    best = trialsets.best_among(complete, direction)
    counts = trialsets.counts_by_state(trials)
    sessions = [_session(group) for group in trialsets.run_sessions(trials)]
    durations = [r.duration_s for r in rows if r.duration_s is not None and r.state != "RUNNING"]
    saved = trialsets.epochs_saved(trials, epochs)
    goals, constraints = records.goals_of(study), records.constraints_of(study)
    return Summary(
        n_trials=len(trials),
        by_state={state: counts[state] for state in STATES},
        best_value=records.first_value(best) if best is not None else None,  # type: ignore[arg-type]
        best_trial=best.number if best is not None else None,
        best_params=dict(best.params) if best is not None else {},
        busy_s=sum(x.busy_s for x in sessions) if sessions else None,
        sessions=sessions,
        mean_trial_s=statistics.fmean(durations) if durations else None,
        median_trial_s=statistics.median(durations) if durations else None,
        epochs_max=epochs,
        epochs_spent=budget.spent(trials),
        budget_epochs=records.budget_of(study),
        epochs_saved=sum(saved.values()),
        epochs_saved_by_reason=saved,
        stop_reasons=dict(Counter(r.stop_reason for r in rows if r.stop_reason)),
        workers=sorted({r.worker for r in rows if r.worker}),
        slots=sorted({r.slot for r in rows if r.slot is not None}),
        devices=sorted({r.device for r in rows if r.device}),
        notes=notes,
        objectives=goals if len(goals) > 1 else [],
        constraints=constraints,
        infeasible=trialsets.infeasible_count(trials) if constraints else None,
    )


def _session(trials: Sequence[FrozenTrial]) -> Session:
    """One run session's span, busy time, trial count and worker processes."""
    start = min(t.datetime_start for t in trials)  # type: ignore[type-var]
    end = max(t.datetime_complete or t.datetime_start for t in trials)  # type: ignore[type-var]
    wall = (end - start).total_seconds()  # type: ignore[operator]
    return Session(start, end, wall, trialsets.busy_s(trials), len(trials),  # type: ignore[arg-type]
                   sorted({w for w in map(records.worker, trials) if w}))


def importance_study(study: optuna.Study, complete: Sequence[FrozenTrial]) -> optuna.Study:
    """An in-memory study of the complete (feasible) trials' params and values alone, which Optuna's importance
    evaluators read: copying their histories and attrs cost 3.6 ms a trial (deepcopy), reading the stored study
    again through the ORM far more."""
    chosen = list(complete)
    if len(chosen) > MAX_IMPORTANCE_TRIALS:
        # Evaluators scale with trials; a fixed-seed subsample keeps the ranking and the runtime.
        chosen = random.Random(0).sample(chosen, MAX_IMPORTANCE_TRIALS)
    target = optuna.create_study(directions=study.directions)
    target.add_trials([optuna.trial.create_trial(state=TrialState.COMPLETE, params=t.params, values=t.values,
                                                 distributions=t.distributions) for t in chosen])
    return target


def _importances(target: optuna.Study | None, complete: Sequence[FrozenTrial],
                 infos: list[ParamInfo]) -> tuple[dict[str, float], str | None]:
    """Optuna's param importances over the complete trials (in `target`, see importance_study), or why none."""
    varying = [p.name for p in infos if p.varies]
    if target is None or len(complete) < 2:
        return {}, "param importances need at least 2 complete trials"
    if not varying:
        return {}, "param importances skipped: no param varies across complete trials"
    note_parts = []
    if len(complete) > MAX_IMPORTANCE_TRIALS:
        note_parts.append(f"importances from a random sample of {MAX_IMPORTANCE_TRIALS} of "
                          f"{len(complete)} complete trials")
    try:
        result, warned = param_importances(target, varying, 0)
    except (ValueError, RuntimeError, ZeroDivisionError) as e:
        return {}, f"param importances failed: {e}"
    note_parts += warned
    return result, ("; ".join(note_parts) or None)
