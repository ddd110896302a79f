"""Workers that die, get interrupted or run out of memory: real processes, real signals, real SQLite."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import optuna
import pytest
import sqlalchemy
import torch
from optuna.trial import TrialState

from conftest import python_env, start_hpsearch
from hpsearch import engine, supervisor
from hpsearch.checkpoints import load_checkpoint
from hpsearch.errors import HpsearchError
from hpsearch.cli import main

ROOT = Path(__file__).resolve().parent.parent
URL = "sqlite:///runs/tiny/study.db"
FAST_HEARTBEAT = {"heartbeat_interval": 1, "grace_period": 3}
LONG_TRAIN = {"epochs": 15, "batch_size": 16}
LINUX_ONLY = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux-only")


def _study() -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=URL)


def _kill_worker_of(trial: optuna.trial.FrozenTrial) -> None:
    """SIGKILL the worker process running `trial` (its `worker` attr is host:pid)."""
    os.kill(int(trial.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)


def _wait_for(predicate: Callable[[list[optuna.trial.FrozenTrial]], Any], proc: subprocess.Popen[str],
              timeout: float = 180.0) -> Any:
    """Poll the study until `predicate(trials)` returns something truthy; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if Path("runs/tiny/study.db").exists():
            try:
                found = predicate(_study().trials)
            except (KeyError, sqlalchemy.exc.SQLAlchemyError):  # the study or its tables are being created
                found = None
            if found:
                return found
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


def _running_with_epochs(n: int) -> Callable[[list[optuna.trial.FrozenTrial]], Any]:
    def check(trials: list[optuna.trial.FrozenTrial]) -> Any:
        busy = [t for t in trials if t.state == TrialState.RUNNING and len(t.user_attrs.get("history", [])) >= n]
        return busy[0] if busy else None

    return check


def _resumable_from(epoch: int) -> Callable[[list[optuna.trial.FrozenTrial]], Any]:
    """A running trial whose resume file on disk holds `epoch` or later (the history attr is set before the
    checkpoint writer thread has written that epoch's file)."""
    def check(trials: list[optuna.trial.FrozenTrial]) -> Any:
        for trial in trials:
            path = Path(f"runs/tiny/resume/trial_{trial.number:05d}.pt")
            if trial.state == TrialState.RUNNING and path.exists():
                try:
                    saved = load_checkpoint(path)["trainers"][0]["epoch"]
                except HpsearchError:  # replaced between exists() and the read
                    continue
                if saved >= epoch:
                    return trial
        return None

    return check


def _all_running_with_epochs(count: int) -> Callable[[list[optuna.trial.FrozenTrial]], Any]:
    """The running trials once `count` of them have at least one epoch, else None."""
    def check(trials: list[optuna.trial.FrozenTrial]) -> Any:
        busy = [t for t in trials if t.state == TrialState.RUNNING and t.user_attrs.get("history")]
        return busy if len(busy) >= count else None

    return check


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))


@pytest.mark.slow
def test_sigkilled_worker_is_replaced_and_its_trial_resumes(write_study: Callable[..., Path], workdir: Path) -> None:
    path = write_study(n_trials=3, train=LONG_TRAIN, workers=FAST_HEARTBEAT)
    proc = start_hpsearch("run", str(path), "--workers", "2", cwd=workdir)
    try:
        victim = _wait_for(_resumable_from(2), proc)
        _kill_worker_of(victim)
        out, err = proc.communicate(timeout=400)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "died" in err and "started a replacement" in err
    study = _study()
    assert len(_finished(study)) == 3
    assert not study.get_trials(states=(TrialState.RUNNING,))
    killed = study.trials[victim.number]
    assert killed.state == TrialState.FAIL and killed.user_attrs["stop_reason"] == "worker_died"
    resumed = [t for t in study.trials if t.user_attrs.get("resumed_from", {}).get("trial") == victim.number]
    assert len(resumed) == 1 and resumed[0].state.is_finished()
    assert resumed[0].user_attrs["resumed_from"]["epoch"] >= 2
    assert resumed[0].params == killed.params


@pytest.mark.slow
def test_heartbeat_frees_the_trial_of_a_worker_killed_without_supervisor(write_study: Callable[..., Path],
                                                                         workdir: Path) -> None:
    path = write_study(n_trials=2, train=LONG_TRAIN, workers=FAST_HEARTBEAT)
    lone = start_hpsearch("worker", str(path), cwd=workdir)
    try:
        victim = _wait_for(_resumable_from(2), lone)
        lone.send_signal(signal.SIGKILL)
        lone.communicate(timeout=30)
    finally:
        lone.kill()
    assert _study().trials[victim.number].state == TrialState.RUNNING  # nobody has noticed yet
    assert main(["run", str(path)]) == 0
    study = _study()
    assert len(_finished(study)) == 2 and not study.get_trials(states=(TrialState.RUNNING,))
    assert study.trials[victim.number].state == TrialState.FAIL
    resumed = [t for t in study.trials if t.user_attrs.get("resumed_from", {}).get("trial") == victim.number]
    assert resumed and resumed[0].user_attrs["resumed_from"]["epoch"] >= 2


@pytest.mark.slow
def test_sigint_to_supervisor_stops_all_workers_and_rerun_continues(write_study: Callable[..., Path],
                                                                   workdir: Path) -> None:
    path = write_study(n_trials=3, train={"epochs": 300, "batch_size": 16}, workers=FAST_HEARTBEAT)
    proc = start_hpsearch("run", str(path), "--workers", "2", cwd=workdir)
    try:
        _wait_for(lambda trials: sum(1 for t in trials if t.state == TrialState.RUNNING and
                                     t.user_attrs.get("history")) >= 2, proc)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        stopped_after = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert stopped_after < 10
    study = _study()
    assert not study.get_trials(states=(TrialState.RUNNING,))
    interrupted = study.get_trials(states=(TrialState.FAIL,))
    assert len(interrupted) == 2 and {t.user_attrs["stop_reason"] for t in interrupted} == {"interrupted"}
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 2
    assert main(["run", str(path), "--epochs", "3"]) == 0
    assert len(_finished(_study())) == 3


def _gone(pid: int) -> bool:
    """True once `pid` has exited; an orphan's zombie that nobody reaps counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


@pytest.mark.slow
@LINUX_ONLY
def test_sigkilled_supervisor_takes_its_workers_down_cleanly(write_study: Callable[..., Path], workdir: Path) -> None:
    path = write_study(n_trials=3, train={"epochs": 300, "batch_size": 16}, workers=FAST_HEARTBEAT)
    proc = start_hpsearch("run", str(path), "--workers", "2", cwd=workdir)
    pids: set[int] = set()
    try:
        busy = _wait_for(_all_running_with_epochs(2), proc)
        proc.kill()
        _, err = proc.communicate(timeout=30)
        pids = {int(json.loads(path.read_text())["pid"]) for path in Path("runs/tiny/logs").glob("worker-*.json")}
        deadline = time.monotonic() + 120  # a safety net: the loop ends once both are gone
        while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(pids) == 2 and all(_gone(pid) for pid in pids)
    finally:
        proc.kill()
        for pid in pids:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
    study = _study()
    assert not study.get_trials(states=(TrialState.RUNNING,))
    interrupted = [study.trials[t.number] for t in busy]
    assert {t.state for t in interrupted} == {TrialState.FAIL}
    assert {t.user_attrs["stop_reason"] for t in interrupted} == {"interrupted"}
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 2
    for log in Path("runs/tiny/logs").glob("worker-*.log"):
        assert "Traceback" not in log.read_text(), log.read_text()
    assert main(["run", str(path), "--epochs", "2"]) == 0
    study = _study()
    assert len(_finished(study)) == 3
    resumed = {t.user_attrs.get("resumed_from", {}).get("trial") for t in _finished(study)}
    assert resumed >= {t.number for t in busy}


def test_only_a_worker_started_by_run_follows_its_supervisor(write_study: Callable[..., Path],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    followed: list[int] = []
    monkeypatch.setattr(supervisor, "follow_supervisor", followed.append)
    from hpsearch import worker
    from hpsearch.worker import WorkerOutcome

    monkeypatch.setattr(worker, "work_in_this_process", lambda *args, **kwargs: (WorkerOutcome(), None))
    path = write_study()
    assert main(["worker", str(path)]) == 0
    assert followed == []  # a worker started by hand (another machine, docker) outlives whatever started it
    assert main(["worker", str(path), "--supervisor-pid", "4321"]) == 0
    assert followed == [4321]


@LINUX_ONLY
def test_follow_supervisor_arms_sigterm_for_the_parent_death() -> None:
    probe = ("import ctypes, os; from hpsearch.supervisor import follow_supervisor; "
             "follow_supervisor(os.getppid()); sig = ctypes.c_int(); "
             "ctypes.CDLL(None).prctl(2, ctypes.byref(sig)); print(sig.value)")  # 2: PR_GET_PDEATHSIG
    env = python_env()
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(int(signal.SIGTERM))


def test_worker_whose_supervisor_is_already_gone_stops_at_once(write_study: Callable[..., Path],
                                                               workdir: Path) -> None:
    path = write_study()
    not_its_parent = os.getppid()  # the worker's parent is this process: as if its supervisor had died
    done = start_hpsearch("worker", str(path), "--supervisor-pid", str(not_its_parent), cwd=workdir)
    _, err = done.communicate(timeout=60)
    assert done.returncode == 130, err
    assert err.strip().splitlines()[-1] == (f"hpsearch: error: the supervisor (pid {not_its_parent}) that started "
                                            f"this worker is gone; not starting")
    assert not Path("runs/tiny/study.db").exists()  # it stopped before touching the study


def _oom_above(limit: int | None) -> Callable[..., dict[str, float]]:
    real = engine.Trainer.run_epoch

    def run_epoch(self: engine.Trainer) -> dict[str, float]:
        if limit is None or self.settings.batch_size > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return real(self)

    return run_epoch


def test_oom_is_retried_with_half_the_batch(write_study: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine.Trainer, "run_epoch", _oom_above(32))
    assert main(["run", str(write_study(n_trials=1))]) == 0
    trial = _study().trials[0]
    assert trial.state == TrialState.COMPLETE
    assert trial.user_attrs["oom_retry"] == {"batch_size": 32, "accum_steps": 2, "from_epoch": 0}


def test_oom_twice_fails_the_trial_with_reason_oom(write_study: Callable[..., Path],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine.Trainer, "run_epoch", _oom_above(None))
    assert main(["run", str(write_study(n_trials=5))]) == 1  # the same error three times stops the study
    failed = _study().trials
    assert [t.state for t in failed] == [TrialState.FAIL] * 3
    assert {t.user_attrs["stop_reason"] for t in failed} == {"oom"}
    assert "OutOfMemoryError" in failed[0].user_attrs["error"]


@pytest.mark.slow
def test_three_workers_on_sqlite_finish_exactly_n_trials(write_study: Callable[..., Path], workdir: Path) -> None:
    path = write_study(n_trials=7, sampler={"type": "tpe", "n_startup_trials": 3})
    proc = start_hpsearch("run", str(path), "--workers", "3", cwd=workdir)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    study = _study()
    assert len(_finished(study)) == 7
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    assert len({t.user_attrs["slot"] for t in _finished(study)}) >= 2  # a worker slow to start may find nothing left
    first = [tuple(sorted(t.params.items())) for t in study.trials[:3]]
    assert len(set(first)) == 3  # workers seed their samplers apart: no duplicate start-up points
    assert "finished 7 of 7 trials" in out


class _InterruptedWhileAsking(optuna.samplers.RandomSampler):
    """Ctrl-C lands inside study.ask(), after the trial row exists (Trial() calls before_trial)."""

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        signal.raise_signal(signal.SIGINT)


def _objective(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0.0, 1.0)


def _interrupted_run(study: optuna.Study) -> None:
    from hpsearch.worker import run_worker

    outcome = run_worker(study, _objective, n_trials=3, poll_s=0.05)
    assert outcome.interrupted and not outcome.trials
    trials = _study().trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]  # handed back, queued again
    assert trials[0].user_attrs["stop_reason"] == "interrupted"


def test_ctrl_c_while_asking_leaves_no_trial_running(workdir: Path) -> None:
    Path("runs/tiny").mkdir(parents=True)
    _interrupted_run(optuna.create_study(study_name="tiny", storage=URL, sampler=_InterruptedWhileAsking()))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the usual Ctrl-C again afterwards


def test_ctrl_c_between_ask_and_objective_leaves_no_trial_running(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hpsearch import worker

    def interrupted(*args: Any) -> bool:
        raise KeyboardInterrupt

    monkeypatch.setattr(worker, "_is_surplus", interrupted)
    Path("runs/tiny").mkdir(parents=True)
    _interrupted_run(optuna.create_study(study_name="tiny", storage=URL, sampler=optuna.samplers.RandomSampler()))


# ---------------------------------------------------------------- failures in a row

FAILING_MODELS = '''
import itertools
import torch

_calls = itertools.count()


class Failing(torch.nn.Module):
    """Evaluates fine (the start-up check passes); training raises `message`."""

    def __init__(self, message):
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)
        self.message = message

    def forward(self, x):
        if self.training:
            raise RuntimeError(self.message)
        return self.fc(x.flatten(1))


def varying(input_shape, num_classes, dropout=0.0):
    return Failing(f"boom {next(_calls)}")  # every trial fails with another message


def first_then_same(input_shape, num_classes, dropout=0.0):
    return Failing("first" if next(_calls) < 2 else "again")  # build 0 is the start-up check
'''


def test_failures_of_any_kind_in_a_row_stop_the_study(write_study: Callable[..., Path], workdir: Path) -> None:
    (workdir / "failing_models.py").write_text(FAILING_MODELS)
    path = write_study(n_trials=50, model={"name": "failing_models:varying"},
                       workers={"max_consecutive_failures": 4})
    proc = subprocess.Popen([sys.executable, "-m", "hpsearch", "run", str(path)], cwd=workdir, text=True,
                            env=python_env(workdir), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("hpsearch: error: the last 4 trials all failed, the first with RuntimeError: boom 1;"), last
    assert "hpsearch status --failed" in last and "Traceback" not in err
    trials = _study().trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 4  # not hundreds: the study stopped


def test_the_same_error_three_times_in_a_row_stops_wherever_it_starts(write_study: Callable[..., Path], workdir: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "failing_models2.py").write_text(FAILING_MODELS)
    monkeypatch.syspath_prepend(str(workdir))
    path = write_study(n_trials=50, model={"name": "failing_models2:first_then_same"})
    assert main(["run", str(path)]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("hpsearch: error: the last 3 trials all failed with RuntimeError: again;"), last
    errors = [t.user_attrs["error"].strip().splitlines()[-1] for t in _study().trials]
    assert errors == ["RuntimeError: first"] + ["RuntimeError: again"] * 3


def test_failure_streak_verdicts() -> None:
    from hpsearch.worker import FailureStreak

    streak = FailureStreak(limit=5)
    for error in ["A", "B", "A", "B"]:
        streak.add(error)
        assert streak.verdict() is None
    streak.add("B")
    assert streak.verdict() == "the last 5 trials all failed, the first with A"
    streak.clear()
    for error in ["A", "B", "B", "B"]:
        streak.add(error)
    assert streak.verdict() == "the last 3 trials all failed with B"


# ---------------------------------------------------------------- stop signals under load

def _prefill(count: int) -> None:
    """`count` finished trials in the study, so every storage read of the worker loop has work to do."""
    from optuna.distributions import FloatDistribution
    from study_fixtures import clone_first_trial

    study = optuna.create_study(study_name="tiny", storage=URL, direction="maximize")
    dists = {"lr": FloatDistribution(1e-3, 1e-2, log=True), "dropout": FloatDistribution(0.0, 0.3)}
    study.add_trial(optuna.trial.create_trial(params={"lr": 1e-3, "dropout": 0.1}, distributions=dists, value=0.5,
                                              intermediate_values={1: 0.4, 2: 0.5},
                                              user_attrs={"history": [{"epoch": 1}, {"epoch": 2}]}))
    clone_first_trial(URL.removeprefix("sqlite:///"), count - 1)


@pytest.mark.slow
def test_every_stop_signal_is_honoured_within_10s_while_the_storage_is_busy(write_study: Callable[..., Path],
                                                                            workdir: Path) -> None:
    path = write_study(n_trials=100_000, train={"epochs": 1, "batch_size": 64})
    Path("runs/tiny").mkdir(parents=True)
    _prefill(1900)
    for round_, (sig, workers) in enumerate([(signal.SIGTERM, 1), (signal.SIGINT, 1), (signal.SIGTERM, 1),
                                             (signal.SIGTERM, 2), (signal.SIGINT, 2)]):
        before = len(_study().trials)
        extra = ["--workers", str(workers)] if workers > 1 else []
        proc = start_hpsearch("run", str(path), *extra, cwd=workdir)
        try:
            _wait_for(lambda trials: len(trials) > before + round_ % 2, proc)  # in a trial, or between two
            sent = time.monotonic()
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=30)
            stopped_after = time.monotonic() - sent
        finally:
            proc.kill()
            proc.communicate()
        assert proc.returncode == 130, err
        assert stopped_after < 10, (round_, stopped_after)
        assert "Exception ignored" not in err and "Traceback" not in err, err
        assert not _study().get_trials(states=(TrialState.RUNNING,))


# ---------------------------------------------------------------- retries and their resume files

REAL_RUN_EPOCH = engine.Trainer.run_epoch


def _stop_at_call(calls: list[int], stop_at: int) -> Callable[..., dict[str, float]]:
    """Trainer.run_epoch that raises a stop request on call number `stop_at` (0-based) of this run."""
    real = engine.Trainer.run_epoch

    def run_epoch(self: engine.Trainer) -> dict[str, float]:
        calls.append(self.epoch)
        if len(calls) - 1 == stop_at:
            from hpsearch.signals import StopRequested
            raise StopRequested("SIGTERM")
        return real(self)

    return run_epoch


def test_a_retry_of_a_retry_resumes_from_the_newest_saved_state(write_study: Callable[..., Path],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_study(n_trials=1, train={"epochs": 4, "batch_size": 64})
    monkeypatch.setattr(engine.Trainer, "run_epoch", _stop_at_call([], 2))
    assert main(["run", str(path)]) == 130  # trial 0 saved epochs 1 and 2, then stopped
    monkeypatch.setattr(engine.Trainer, "run_epoch", _stop_at_call([], 0))
    assert main(["run", str(path)]) == 130  # trial 1 resumed trial 0 and stopped before saving anything
    monkeypatch.setattr(engine.Trainer, "run_epoch", REAL_RUN_EPOCH)
    assert main(["run", str(path)]) == 0
    study = _study()
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[2].system_attrs["retry_history"] == [0, 1]
    assert study.trials[2].user_attrs["resumed_from"] == {"trial": 0, "epoch": 2}
    assert [h["epoch"] for h in study.trials[2].user_attrs["history"]] == [1, 2, 3, 4]
    assert not list(Path("runs/tiny/resume").glob("*.pt"))  # the whole chain's files are gone


def test_a_resumed_trial_keeps_its_rung(write_study: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_study(n_trials=1, train={"epochs": 3, "batch_size": 64},
                       pruner={"type": "successive_halving", "min_resource": 1, "reduction_factor": 2})  # rungs 1, 2
    monkeypatch.setattr(engine.Trainer, "run_epoch", _stop_at_call([], 1))
    assert main(["run", str(path)]) == 130  # trial 0 met rung 0 after epoch 1, then stopped
    monkeypatch.setattr(engine.Trainer, "run_epoch", REAL_RUN_EPOCH)
    assert main(["run", str(path)]) == 0
    first, resumed = _study().trials
    assert resumed.user_attrs["resumed_from"] == {"trial": 0, "epoch": 1}
    assert resumed.intermediate_values[1] == first.intermediate_values[1]  # its earlier epoch, re-reported
    assert sorted(resumed.intermediate_values) == [1, 2, 3]
    # judged at rung 0 on epoch 1's value, as trial 0 was, not on the value of the epoch it trained first
    assert resumed.system_attrs["completed_rung_0"] == first.system_attrs["completed_rung_0"]
    assert resumed.system_attrs["completed_rung_1"] == resumed.intermediate_values[2]


@pytest.mark.parametrize("epochs, state, epochs_run", [(2, TrialState.PRUNED, 1), (1, TrialState.COMPLETE, 1)])
def test_a_trial_is_pruned_only_where_an_epoch_is_left_to_save(write_study: Callable[..., Path],
                                                                monkeypatch: pytest.MonkeyPatch, epochs: int,
                                                                state: TrialState, epochs_run: int) -> None:
    path = write_study(n_trials=1, train={"epochs": epochs, "batch_size": 64},
                       pruner={"type": "successive_halving", "min_resource": 1, "reduction_factor": 2})
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: True)  # a pruner that prunes at every rung
    assert main(["run", str(path)]) == 0
    (trial,) = _study().trials
    assert trial.state == state and trial.user_attrs["epochs_run"] == epochs_run


def test_a_damaged_resume_file_restarts_the_retry_cleanly(write_study: Callable[..., Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_study(n_trials=1, train={"epochs": 3, "batch_size": 64})
    monkeypatch.setattr(engine.Trainer, "run_epoch", _stop_at_call([], 2))
    assert main(["run", str(path)]) == 130
    monkeypatch.setattr(engine.Trainer, "run_epoch", REAL_RUN_EPOCH)
    saved = Path("runs/tiny/resume/trial_00000.pt")
    saved.write_bytes(saved.read_bytes()[:100])  # cut short, as a full disk or a crash mid-copy would
    assert main(["run", str(path)]) == 0
    retry = _study().trials[1]
    assert retry.state == TrialState.COMPLETE and "resumed_from" not in retry.user_attrs
    assert retry.user_attrs["resume_skipped"]["trial"] == 0
    assert [h["epoch"] for h in retry.user_attrs["history"]] == [1, 2, 3]
    assert not list(Path("runs/tiny/resume").glob("*.pt"))


# ---------------------------------------------------------------- how many workers

def test_workers_beyond_any_bound_are_refused(write_study: Callable[..., Path],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(write_study()), "--workers", "5000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--workers" in err[0] and "at most 1024" in err[0]


@pytest.mark.slow
def test_no_more_workers_than_trials_left(write_study: Callable[..., Path], workdir: Path) -> None:
    path = write_study(n_trials=2, train={"epochs": 1, "batch_size": 64})
    proc = start_hpsearch("run", str(path), "--workers", "6", cwd=workdir)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert "starting 2 workers, not 6: only 2 trials are left to run" in err
    assert "2 workers running trials (pids: cpu#0 " in err


@pytest.mark.slow
def test_a_worker_that_keeps_dying_ends_the_run_with_exit_1(write_study: Callable[..., Path], workdir: Path) -> None:
    path = write_study(n_trials=2, train=LONG_TRAIN, workers={**FAST_HEARTBEAT, "max_restarts": 0})
    proc = start_hpsearch("run", str(path), "--workers", "2", cwd=workdir)
    try:
        victim = _wait_for(_running_with_epochs(1), proc)
        _kill_worker_of(victim)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1, err  # a crash is not bad input (2)
    assert re.search(r"hpsearch: error: worker cpu#\d died 1 times \(last exit -9\)", err.strip().splitlines()[-1])
    assert not _study().get_trials(states=(TrialState.RUNNING,))


def test_a_long_trial_shows_its_progress(write_study: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from hpsearch import objective

    monkeypatch.setattr(objective, "PROGRESS_EVERY_S", 0.0)  # every epoch counts as long here
    assert main(["run", str(write_study(n_trials=1, train={"epochs": 3, "batch_size": 64}))]) == 0
    err = capsys.readouterr().err
    assert [int(m) for m in re.findall(r"trial 0 epoch (\d)/3: val_accuracy=0\.\d{4} \(\d+\.\d s an epoch\)", err)] == [1, 2, 3]


def test_an_oom_retry_continues_from_the_last_saved_epoch(write_study: Callable[..., Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def run_epoch(self: engine.Trainer) -> dict[str, float]:
        if self.settings.batch_size > 32 and self.epoch == 2:  # the big batch fits for two epochs, then not
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return REAL_RUN_EPOCH(self)

    monkeypatch.setattr(engine.Trainer, "run_epoch", run_epoch)
    assert main(["run", str(write_study(n_trials=1, train={"epochs": 4, "batch_size": 64}))]) == 0
    trial = _study().trials[0]
    assert trial.state == TrialState.COMPLETE
    assert trial.user_attrs["oom_retry"] == {"batch_size": 32, "accum_steps": 2, "from_epoch": 2}
    assert [h["epoch"] for h in trial.user_attrs["history"]] == [1, 2, 3, 4]  # epochs 1-2 kept, not retrained
    assert "resumed_from" not in trial.user_attrs
    assert not list(Path("runs/tiny/resume").glob("*.pt"))


def test_a_bootstrap_trial_resumed_keeps_its_splits_best_values(write_study: Callable[..., Path],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The best epoch's per-split values travel in the resume state: a retry that never improves still records them."""
    def run_epoch(self: engine.Trainer) -> dict[str, float]:
        if self.settings.batch_size > 32 and self.epoch == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        record = REAL_RUN_EPOCH(self)
        if self.settings.batch_size <= 32:
            record["val_accuracy"] -= 1.0  # after the retry no epoch beats the saved best
        return record

    monkeypatch.setattr(engine.Trainer, "run_epoch", run_epoch)
    path = write_study(n_trials=1, data={"dataset": "digits", "bootstrap": 2}, train={"epochs": 4, "batch_size": 64})
    assert main(["run", str(path)]) == 0
    trial = _study().trials[0]
    assert trial.user_attrs["oom_retry"]["from_epoch"] == 2
    assert trial.user_attrs["best_epoch"] <= 2
    splits = trial.user_attrs["split_values"]
    assert len(splits) == 2 and trial.value == sum(splits) / 2 and min(splits) > 0


def test_k_fold_studies_prune_on_the_fold_mean() -> None:
    from hpsearch.objective import _mean_record

    folds = [{"epoch": 2, "val_accuracy": 0.5, "train_loss": 1.0},
             {"epoch": 2, "val_accuracy": 0.8, "train_loss": 0.4}]
    assert _mean_record(folds) == {"epoch": 2, "val_accuracy": pytest.approx(0.65), "train_loss": pytest.approx(0.7)}
