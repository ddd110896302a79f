"""The study layer: what a run may not change, stale trials, and the adapter over Optuna internals."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import optuna
import pytest
from optuna.trial import TrialState

from hpsearch import records
from hpsearch import study as study_module
from hpsearch.cli import main
from hpsearch.config import load_config
from conftest import start_hpsearch

ROOT = Path(__file__).resolve().parents[2]
URL = "sqlite:///runs/tiny/study.db"
FAST_HEARTBEAT = {"heartbeat_interval": 1, "grace_period": 3}


def _study() -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=URL)


def _ask(study: optuna.Study) -> optuna.Trial:
    from hpsearch.worker import _ask as ask_quietly  # without Optuna's "heartbeat outside optimize" warning

    return ask_quietly(study)


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines, "no error printed"
    return lines[-1]


# ---------------------------------------------------------------- a changed space

@pytest.mark.parametrize("old, new, shown", [
    ({"type": "categorical", "choices": [32, 64]}, {"type": "categorical", "choices": [64, 128]},
     "as categorical [32, 64], this file says categorical [64, 128]"),
    ({"type": "float", "low": 1e-3, "high": 1e-2, "log": True}, {"type": "float", "low": 1e-3, "high": 1e-2},
     "as float [0.001, 0.01] log, this file says float [0.001, 0.01]"),
    ({"type": "int", "low": 16, "high": 64}, {"type": "categorical", "choices": [16, 64]},
     "as int [16, 64], this file says categorical [16, 64]"),
], ids=["choices", "log", "kind"])
def test_a_space_optuna_cannot_mix_is_refused_before_any_trial(write_study: Callable[..., Path], old: dict[str, Any],
                                                               new: dict[str, Any], shown: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    name = "batch_size" if old.get("type") != "float" else "lr"
    fixed = {"epochs": 1} if name == "batch_size" else {"epochs": 1, "batch_size": 64}
    base = {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}} if name == "batch_size" else {}
    assert main(["run", str(write_study(n_trials=1, train=fixed, space={**base, name: old}))]) == 0
    capsys.readouterr()
    path = write_study(n_trials=3, train=fixed, space={**base, name: new})
    assert main(["run", str(path)]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"hpsearch: error: {path}: space.{name}: study 'tiny' in sqlite:///runs/tiny/study.db "
                           f"searched {name} {shown}"), line
    assert "give the study a new name:, or restore the old space" in line
    assert len(_study().trials) == 1  # nothing written: no failed trials either


def test_a_widened_range_is_not_a_change(write_study: Callable[..., Path]) -> None:
    space = {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}
    assert main(["run", str(write_study(n_trials=1, train={"epochs": 1, "batch_size": 64}, space=space))]) == 0
    wider = {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}}
    assert main(["run", str(write_study(n_trials=2, train={"epochs": 1, "batch_size": 64}, space=wider))]) == 0
    assert [t.state for t in _study().trials] == [TrialState.COMPLETE] * 2


# ---------------------------------------------------------------- a run whose settings contradict a running one

@pytest.mark.slow
def test_a_run_with_other_settings_is_refused_while_a_trial_runs(write_study: Callable[..., Path], workdir: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(n_trials=2, train={"epochs": 300, "batch_size": 16}, workers=FAST_HEARTBEAT)
    first = start_hpsearch("run", str(path), cwd=workdir)
    try:
        deadline = time.monotonic() + 120
        while not (Path("runs/tiny/study.db").exists() and _running()):
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.2)
        assert main(["run", str(path), "--epochs", "3"]) == 2
        line = _error_line(capsys)
        assert f"{path}: train.epochs: trial 0 of study 'tiny' is running now" in line, line
        assert "with train.epochs = 300, this run says 3" in line
        assert "use the same settings while it runs, or a new name:" in line
        running = _running()
        assert running and running[0].user_attrs["settings"] == study_module.settings_id(load_config(path))
    finally:
        first.kill()
        first.communicate()


def _running() -> list[optuna.trial.FrozenTrial]:
    try:
        return [t for t in _study().get_trials(states=(TrialState.RUNNING,)) if "settings" in t.user_attrs]
    except Exception:  # noqa: BLE001 - the study or its tables are being created
        return []


# ---------------------------------------------------------------- a trial that never sent a heartbeat

ASK_AND_DIE = ("import os, optuna; s = optuna.load_study(study_name='tiny', storage='sqlite:///runs/tiny/study.db'); "
               "s.ask(); os._exit(0)")  # a worker killed between ask and its first heartbeat


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_a_trial_without_heartbeat_is_failed_after_the_grace_period(write_study: Callable[..., Path], workdir: Path,
                                                                    workers: int) -> None:
    path = write_study(n_trials=1, train={"epochs": 1, "batch_size": 64}, workers=FAST_HEARTBEAT)
    assert main(["run", str(path)]) == 0
    subprocess.run([sys.executable, "-c", ASK_AND_DIE], cwd=workdir, check=True, timeout=60)
    stranded = _study().trials[1]
    assert stranded.state == TrialState.RUNNING and not stranded.user_attrs
    proc = start_hpsearch("run", str(path), "--n-trials", "2", "--workers", str(workers), cwd=workdir)
    _, err = proc.communicate(timeout=120)  # it used to wait forever on the stranded trial
    assert proc.returncode == 0, err
    study = _study()
    assert study.trials[1].state == TrialState.FAIL
    assert study.trials[1].user_attrs["stop_reason"] == "worker_lost"
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 2
    assert "trial 1 lost its worker (it never sent a heartbeat)" in err or workers == 2  # logged by a worker


def test_waiting_on_a_trial_elsewhere_says_so_and_ends(write_study: Callable[..., Path],
                                                       caplog: pytest.LogCaptureFixture) -> None:
    from hpsearch.worker import run_worker

    cfg = load_config(write_study(workers=FAST_HEARTBEAT))
    Path("runs/tiny").mkdir(parents=True)
    study = study_module.open_study(cfg)
    _ask(study)  # RUNNING "elsewhere": its worker died before its first heartbeat
    caplog.set_level("INFO", logger="hpsearch")
    outcome = run_worker(study, lambda trial: trial.suggest_float("x", 0, 1), n_trials=1, poll_s=0.1,
                         stale_check_s=0.5, grace_period=2)
    assert [t.number for t in outcome.trials] == [1]  # the stranded trial, queued again and run here
    assert "waiting for the last trials running elsewhere: #0 (worker unknown)" in caplog.text
    assert "trial 0 lost its worker (it never sent a heartbeat)" in caplog.text


def test_a_trial_that_started_moments_ago_is_not_stale(write_study: Callable[..., Path]) -> None:
    cfg = load_config(write_study(workers=FAST_HEARTBEAT))
    Path("runs/tiny").mkdir(parents=True)
    study = study_module.open_study(cfg)
    _ask(study)  # no heartbeat yet, but younger than the grace period
    assert study_module.fail_stale_trials(study, grace_period=3, max_retries=3) == []
    deadline = time.monotonic() + 120  # a bound for a stuck check, not a guess: it turns stale once 3 s have passed
    while not (failed := study_module.fail_stale_trials(study, grace_period=3, max_retries=3)):
        assert time.monotonic() < deadline, "the trial never turned stale"
        time.sleep(0.1)
    assert failed == [0]
    assert [t.state for t in _study().trials] == [TrialState.FAIL, TrialState.WAITING]


# ---------------------------------------------------------------- the adapter over Optuna internals

def test_the_optuna_internals_the_adapter_relies_on_are_still_there(write_study: Callable[..., Path]) -> None:
    """Fails loudly when an Optuna upgrade moves what hpsearch reaches into (see the adapter in study.py)."""
    cfg = load_config(write_study(workers=FAST_HEARTBEAT))
    Path("runs/tiny").mkdir(parents=True)
    study = study_module.open_study(cfg)
    trial = _ask(study)
    assert isinstance(study_module.trial_id(trial), int)
    assert study_module.current_state(study, trial) == TrialState.RUNNING
    assert study_module.retry_history(trial) == []
    with study_module.Heartbeat(study, trial):
        time.sleep(0.1)
    starts = study_module.adapter._running_starts(study_module.storage_of(study), study_module.study_id(study))
    assert [(tid, beating) for tid, _, beating in starts] == [(study_module.trial_id(trial), True)]
    assert study_module.storage_of(study)._get_stale_trial_ids(study_module.study_id(study)) == []
    assert study_module.study_id(study) == study._study_id
    study.tell(trial, 0.5)
    trial = _ask(study)
    trial.suggest_float("lr", 1e-3, 1e-2, log=True)
    assert set(study_module.stored_distributions(study)) == {"lr"}
    assert "settings:" + study_module.settings_id(cfg) in study_module.study_system_attrs(study)


def test_hand_back_fails_records_why_and_queues_again_once() -> None:
    """The one hand-back (worker, supervisor, stale check): a second hand-back or a finished trial changes nothing."""
    study = optuna.create_study()
    trial = study.ask()
    trial.suggest_float("lr", 1e-3, 1e-2)
    failed = study_module.hand_back(study, trial, records.WORKER_DIED, max_retries=3)
    assert failed is not None and failed.state == TrialState.FAIL
    assert records.stop_reason(failed) == records.WORKER_DIED
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [(t.params, records.retry_history_of(t.system_attrs)) for t in waiting] == [(trial.params, [0])]
    assert study_module.hand_back(study, trial, records.WORKER_LOST, max_retries=3) is None  # someone got there first
    done = study.ask()  # the queued retry
    study.tell(done, 1.0)
    assert study_module.hand_back(study, done, records.INTERRUPTED, max_retries=3) is None
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert records.stop_reason(study.trials[0]) == records.WORKER_DIED and records.stop_reason(study.trials[1]) is None
    out_of_retries = study.ask()
    assert study_module.hand_back(study, out_of_retries, records.INTERRUPTED, max_retries=0) is not None
    assert study.get_trials(states=(TrialState.WAITING,)) == []  # failed, but out of retries: not queued


# ---------------------------------------------------------------- every sampler and pruner the schema offers

SAMPLERS = [{"type": "tpe", "n_startup_trials": 2}, {"type": "random"}, {"type": "cmaes", "n_startup_trials": 1},
            {"type": "gp", "n_startup_trials": 2}, {"type": "qmc"}, {"type": "grid"}]
PRUNERS = [{"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0}, {"type": "percentile", "percentile": 50.0},
           {"type": "successive_halving"}, {"type": "hyperband"}, {"type": "patient", "patience": 1},
           {"type": "threshold", "lower": 0.5}, {"type": "none"}]


def _search_config(sampler: dict[str, Any], pruner: dict[str, Any]) -> Any:
    from conftest import TINY_STUDY
    from hpsearch.config import build_config

    space = {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "step": 1e-3},
             "batch_size": {"type": "categorical", "choices": [32, 64]},
             "width": {"type": "int", "low": 8, "high": 32, "step": 8}}
    return build_config({**TINY_STUDY, "sampler": sampler, "pruner": pruner, "space": space,
                         "train": {"epochs": 4}, "model": {"name": "mlp"}})


@pytest.mark.parametrize("sampler", SAMPLERS, ids=[s["type"] for s in SAMPLERS])
def test_every_sampler_builds_and_proposes_points_inside_the_space(sampler: dict[str, Any]) -> None:
    from hpsearch import space

    cfg = _search_config(sampler, {"type": "none"})
    study = optuna.create_study(direction="maximize", sampler=study_module.make_sampler(cfg))
    for _ in range(6):
        trial = study.ask()
        params = space.suggest(trial, cfg)
        assert 1e-3 - 1e-12 <= params["lr"] <= 1e-2 + 1e-12 and params["batch_size"] in (32, 64)
        assert params["width"] in (8, 16, 24, 32)
        study.tell(trial, params["lr"] * params["width"])
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 6


@pytest.mark.parametrize("group", [False, True])
def test_tpe_sampler_gets_the_files_multivariate_group_and_constant_liar(group: bool) -> None:
    cfg = _search_config({"type": "tpe", "n_startup_trials": 3, "group": group, "constant_liar": False}, {"type": "none"})
    sampler = study_module.make_sampler(cfg)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert (sampler._multivariate, sampler._group, sampler._constant_liar) == (True, group, False)
    assert sampler._n_startup_trials == 3


@pytest.mark.parametrize("pruner", PRUNERS, ids=[p["type"] for p in PRUNERS])
def test_every_pruner_builds_and_decides_on_reported_epochs(pruner: dict[str, Any]) -> None:
    cfg = _search_config({"type": "random"}, pruner)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0),
                                pruner=study_module.make_pruner(cfg))
    decisions = []
    for number in range(6):
        trial = study.ask()
        pruned = False
        for epoch in range(1, cfg.train.epochs + 1):
            trial.report(0.1 * number + 0.05 * epoch if number % 2 else 0.01 * epoch, epoch)
            if trial.should_prune():
                pruned = True
                break
        study.tell(trial, state=TrialState.PRUNED) if pruned else study.tell(trial, 0.1 * number)
        decisions.append(pruned)
    assert len(study.trials) == 6
    if pruner["type"] == "none":
        assert not any(decisions)
    if pruner["type"] == "threshold":
        assert all(decisions[i] for i in (0, 2, 4))  # the weak trials stay under 0.5 and are pruned


# ---------------------------------------------------------------- an output folder belongs to one study

@pytest.mark.postgres
def test_a_study_of_the_same_name_in_another_storage_cannot_take_over_its_files(
        write_study: Callable[..., Path], empty_pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(n_trials=2, train={"epochs": 1, "batch_size": 64})
    assert main(["run", str(path)]) == 0
    checkpoints = {p.name: p.read_bytes() for p in Path("runs/tiny/checkpoints").glob("*.pt")}
    assert checkpoints and json.loads(Path("runs/tiny/study.json").read_text())["study_id"] == 1
    capsys.readouterr()
    assert main(["run", str(path), "--storage", empty_pg_url]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"hpsearch: error: {path}: output_dir: runs/tiny holds the checkpoints and logs of study "
                           f"'tiny' in sqlite:///"), line
    assert "set output_dir: (or --output-dir) to a folder of its own" in line
    assert not study_module.storage._has_optuna_tables(empty_pg_url)  # refused before the other storage was touched
    assert main(["run", str(path), "--storage", empty_pg_url, "--output-dir", "runs/tiny-pg"]) == 0
    assert {p.name: p.read_bytes() for p in Path("runs/tiny/checkpoints").glob("*.pt")} == checkpoints  # untouched
    assert len(list(Path("runs/tiny-pg/checkpoints").glob("*.pt"))) >= 1
    owner = json.loads(Path("runs/tiny-pg/study.json").read_text())
    assert owner["storage"].startswith("postgresql+psycopg://") and owner["name"] == "tiny"
    study_module.dispose_storages()  # psycopg warns about connections left open at exit
