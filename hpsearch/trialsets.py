"""Facts over many trials, derived from what each stores (records): counts by state, retry successors, epochs
saved, the best (feasible) trial, run sessions and busy time, Pareto fronts.

Imports only optuna and records, like records itself: the fast-starting readers use it.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import Iterable, Mapping

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch import records


def counts_by_state(trials: Iterable[FrozenTrial]) -> dict[str, int]:
    """Trials by state name, every state present (zeros included), in Optuna's order of states."""
    counts = Counter(t.state.name for t in trials)
    return {state.name: counts.get(state.name, 0) for state in TrialState}


def counts_by_state_of(counted: Mapping[TrialState, int]) -> dict[str, int]:
    """:func:`counts_by_state` from counts already made (a count query's), every state present."""
    return {state.name: counted.get(state, 0) for state in TrialState}


def finished(counts: Mapping[str, int]) -> int:
    """Finished trials (complete or pruned) in :func:`counts_by_state`: the unit of ``n_trials``."""
    return counts.get(TrialState.COMPLETE.name, 0) + counts.get(TrialState.PRUNED.name, 0)


def successors(trials: Iterable[FrozenTrial]) -> dict[int, int]:
    """Each retried trial's number mapped to the trial queued to resume it (the next link of its retry chain)."""
    return {history[-1]: t.number for t in trials if (history := records.retry_history_of(t.system_attrs))}


def retried_as(trials: Iterable[FrozenTrial], number: int) -> int | None:
    """The trial queued to resume trial `number` (its retry history ends with it), or None."""
    return next((t.number for t in trials if records.retry_history_of(t.system_attrs)[-1:] == [number]), None)


def epochs_saved(trials: Iterable[FrozenTrial], epochs: int | None) -> dict[str, int]:
    """Epochs that pruning and early stopping spared, by stop reason: each such trial's unrun epochs of
    ``epochs`` (the epochs of one trial); empty when ``epochs`` is unknown."""
    saved: dict[str, int] = {}
    if epochs is None:
        return saved
    for t in trials:
        reason, run = records.stop_reason(t), records.epochs_run(t)
        if reason in records.EARLY_STOP_REASONS and run is not None:
            saved[reason] = saved.get(reason, 0) + max(0, epochs - run)
    return saved


def complete_trials(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """The complete feasible trials with a finite (first) value, in the order given."""
    return [t for t in trials if t.state == TrialState.COMPLETE and t.values and math.isfinite(t.values[0])
            and records.is_feasible(t)]


def best_among(trials: Iterable[FrozenTrial], direction: str) -> FrozenTrial | None:
    """The complete trial with the best finite value (the lowest number among equals), or None."""
    complete = complete_trials(trials)
    if not complete:
        return None
    sign = 1.0 if direction == "maximize" else -1.0
    return max(complete, key=lambda t: (sign * float(t.values[0]), -t.number))


# A worker asks for its next trial within a second of telling the last; a new `hpsearch run` needs seconds
# to load data and is rarely started at once: for trials that name no run (older versions), an idle
# minute with no trial running separates run sessions.
SESSION_GAP_S = 60.0


def _interval(t: FrozenTrial) -> tuple[dt.datetime, dt.datetime]:
    """Start and end of a trial; an unfinished trial (no end yet, or a stale one) counts from start to start."""
    return t.datetime_start, t.datetime_complete or t.datetime_start  # type: ignore[return-value]


def run_sessions(trials: Iterable[FrozenTrial], gap_s: float = SESSION_GAP_S) -> list[list[FrozenTrial]]:
    """Trials grouped by run session, oldest first, each in start order: by the run that started them,
    or, for trials that name none, by the idle gaps of ``gap_s`` seconds between them."""
    # A trial told FAIL before it trained (surplus, or no budget left for its first rung) did no work of a session.
    timed = sorted((t for t in trials if t.datetime_start is not None and not _never_trained(t)),
                   key=lambda t: t.datetime_start)
    named: dict[str, list[FrozenTrial]] = {}
    unnamed: list[FrozenTrial] = []
    for t in timed:
        run = records.run_of(t)
        if run is None:
            unnamed.append(t)
        else:
            named.setdefault(run, []).append(t)
    return sorted([*named.values(), *_gap_sessions(unnamed, gap_s)], key=lambda g: g[0].datetime_start)


def _never_trained(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.FAIL and records.stop_reason(trial) in (records.SURPLUS, records.BUDGET)


def _gap_sessions(timed: list[FrozenTrial], gap_s: float) -> list[list[FrozenTrial]]:
    """Trials in start order, split where no trial ran for ``gap_s`` seconds."""
    groups: list[list[FrozenTrial]] = []
    end: dt.datetime | None = None
    for t in timed:
        start, stop = _interval(t)
        if end is None or (start - end).total_seconds() > gap_s:
            groups.append([])
            end = stop
        groups[-1].append(t)
        end = max(end, stop)
    return groups


def busy_s(trials: Iterable[FrozenTrial]) -> float:
    """Seconds during which at least one trial ran: the union of the trials' intervals, idle gaps left out."""
    total, end = 0.0, None  # type: float, dt.datetime | None
    for start, stop in sorted(_interval(t) for t in trials if t.datetime_start is not None):
        if end is None or start > end:
            total += (stop - start).total_seconds()
            end = stop
        elif stop > end:
            total += (stop - end).total_seconds()
            end = stop
    return total


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The study's best complete trial (see :func:`best_among`), or None while there is none."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return best_among(complete, records.direction_of(study))


def infeasible_count(trials: Iterable[FrozenTrial]) -> int:
    """Finished trials that broke a constraint (refused before training, or measured over a bound)."""
    ended = (TrialState.COMPLETE, TrialState.PRUNED)
    return sum(1 for t in trials if t.state in ended and not records.is_feasible(t))


def dominates(a: FrozenTrial, b: FrozenTrial, directions: list[str]) -> bool:
    """``a`` is no worse than ``b`` in every objective and better in one."""
    signs = [1.0 if d == "maximize" else -1.0 for d in directions]
    pairs = [(s * x, s * y) for s, x, y in zip(signs, a.values, b.values)]
    return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)


def pareto_front(trials: Iterable[FrozenTrial], directions: list[str]) -> list[FrozenTrial]:
    """The complete feasible trials no other one dominates, by number (equal points both kept)."""
    signs = [1.0 if d == "maximize" else -1.0 for d in directions]
    candidates = [t for t in complete_trials(trials) if len(t.values) == len(directions)
                  and all(math.isfinite(v) for v in t.values)]
    # Best first (lexicographically): whatever dominates a trial comes before it, and so does a trial of the front
    # that dominates it; each trial is checked against the front so far, not against every other (n x front).
    front: list[FrozenTrial] = []
    for t in sorted(candidates, key=lambda t: [-s * v for s, v in zip(signs, t.values)]):
        if not any(dominates(f, t, directions) for f in front):
            front.append(t)
    return sorted(front, key=lambda t: t.number)


def best_on_front(trials: Iterable[FrozenTrial], directions: list[str]) -> FrozenTrial | None:
    """The trial of the Pareto set best in the first objective (what `best --export` writes without --trial)."""
    return best_among(pareto_front(trials, directions), directions[0])
