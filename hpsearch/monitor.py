"""What the terminal shows while workers run: a live table on a TTY, plain log lines otherwise.

Everything shown is read back from the study's storage, so it works the same for local and remote
workers; it never imports torch.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import time
from typing import Any, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from hpsearch import records, trialsets
from hpsearch.config import StudyConfig
from hpsearch.slots import Slot
from hpsearch.summary import awaits_successor, trial_logger

log = logging.getLogger("hpsearch")
REFRESH_S = 1.0  # one storage read per second at most: the view must not load the database
SLOW_PHASE_S = 10.0  # plain mode names a worker's start-up phase once it takes this long


def _elapsed(trial: FrozenTrial) -> str:
    if trial.datetime_start is None:
        return "-"
    seconds = (dt.datetime.now() - trial.datetime_start).total_seconds()
    return f"{seconds:.0f}s"


def _latest(trial: FrozenTrial, metric: str) -> tuple[str, str]:
    history = records.history(trial)
    if not history:
        return "0", "-"
    return str(len(history)), f"{history[-1][metric]:.4f}"


def _phase(status: dict[str, Any] | None, now: float) -> str:
    """'loading data (12 s)' for a worker still starting; 'idle' once it runs trials (or with no status)."""
    if not status or status.get("phase") in ("trials", "done"):
        return "idle"
    return f"{status.get('phase', 'starting')} ({now - float(status.get('since', now)):.0f} s)"


def worker_rows(trials: Sequence[FrozenTrial], slots: Sequence[Slot], cfg: StudyConfig,
                statuses: dict[int, dict[str, Any]] | None = None, now: float | None = None) -> list[list[str]]:
    """One row per slot: slot, device, trial (or the worker's phase), epoch, latest metric, elapsed (plain data)."""
    running = {records.slot(t): t for t in trials if t.state == TrialState.RUNNING}
    statuses = statuses or {}
    now = time.time() if now is None else now
    rows = []
    for slot in slots:
        trial = running.get(slot.index)
        if trial is None:
            rows.append([slot.label, "-", _phase(statuses.get(slot.index), now), "-", "-", "-"])
            continue
        epoch, metric = _latest(trial, cfg.metric)
        device = records.device(trial)
        rows.append([slot.label, "?" if device is None else device, f"#{trial.number}",
                     f"{epoch}/{cfg.train.epochs}", metric, _elapsed(trial)])
    return rows


class Monitor:
    """Polls the study and shows progress; `update()` is cheap to call often."""

    def __init__(self, study: optuna.Study | None, cfg: StudyConfig, slots: Sequence[Slot], live: bool | None = None):
        self.cfg, self.slots = cfg, slots  # the supervisor's list: it grows under auto
        self.study: optuna.Study | None = None
        self.seen: set[int] = set()
        self.statuses: dict[int, dict[str, Any]] = {}
        self.phases: dict[int, str] = {}
        self.live_mode = sys.stderr.isatty() if live is None else live
        if study is not None:  # trials finished before this run are the summary's, not the log's
            self.seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
            self.attach(study)
        self.log_trial = trial_logger(cfg)
        self.last = 0.0
        self.live: Live | None = None
        if self.live_mode:
            self.live = Live(console=Console(stderr=True), refresh_per_second=2, transient=False)
            self.live.start()

    def attach(self, study: optuna.Study) -> None:
        """Start reading `study` (a new study exists only once a worker has created it).

        Every trial of a study created during this run is this run's: those finished before the
        monitor attached are logged at the next update too.
        """
        self.study = study

    def _render(self, trials: Sequence[FrozenTrial]) -> Any:
        table = Table(title=f"{self.cfg.name}: {self.cfg.metric}")
        for column in ("worker", "device", "trial", "epoch", self.cfg.metric, "elapsed"):
            table.add_column(column)
        for row in worker_rows(trials, self.slots, self.cfg, self.statuses):
            table.add_row(*row)
        counts = {state.lower(): n for state, n in trialsets.counts_by_state(trials).items() if n}
        top = trialsets.best_among(trials, self.cfg.resolved_direction)
        best = "-" if top is None else f"{records.first_value(top):.4f} (trial #{top.number})"
        states = "  ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        return Group(table, f"{states}   best {best}")

    def update(self, statuses: dict[int, dict[str, Any]] | None = None, force: bool = False) -> None:
        """Refresh from the storage and the workers' `statuses` (at most once per REFRESH_S unless `force`)."""
        if statuses is not None:
            self.statuses = statuses
            self._log_phases()
        now = time.monotonic()
        if not force and now - self.last < REFRESH_S:
            return
        self.last = now
        trials = [] if self.study is None else self.study.get_trials(deepcopy=False)
        resumed_as = trialsets.successors(trials)
        for trial in trials:
            if trial.state.is_finished() and trial.number not in self.seen:
                successor = resumed_as.get(trial.number)
                if successor is None and awaits_successor(trial, self.cfg.workers.max_retries) and not force:
                    continue  # queued again a moment after it failed: log it once its successor exists
                self.seen.add(trial.number)
                if not self.live_mode:
                    self.log_trial(trial, successor)
        if self.live is not None:
            self.live.update(self._render(trials))

    def _log_phases(self) -> None:
        """Plain mode: one line when a worker has spent SLOW_PHASE_S in one start-up phase (quick ones stay quiet)."""
        now = time.time()
        for index, status in self.statuses.items():
            phase = str(status.get("phase"))
            spent = now - float(status.get("since", now))
            if self.live_mode or phase in ("trials", "done") or spent < SLOW_PHASE_S or self.phases.get(index) == phase:
                continue
            self.phases[index] = phase
            label = next((slot.label for slot in self.slots if slot.index == index), f"#{index}")
            log.info("worker %s: %s for %.0f s so far", label, phase, spent)

    def close(self) -> None:
        self.update(force=True)
        if self.live is not None:
            self.live.stop()
            self.live = None
