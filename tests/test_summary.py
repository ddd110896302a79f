"""What the terminal says about a study: counts against the last run's target, trial lines, hints that work."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any, Callable

import optuna
import pytest
from optuna.trial import TrialState

import study_fixtures as sf
from conftest import TINY_STUDY
from hpsearch import budget, records, trialsets
from hpsearch.cli import main
from hpsearch.config import build_config
from hpsearch.summary import (Hints, awaits_successor, epochs_line, hosts_line, invoked_as, progress_line,
    trial_line)

CFG = build_config({**TINY_STUDY, "n_trials": 20}, source="s.yaml")


def _trial(number: int, state: TrialState, reason: str | None = None, retries: list[int] | None = None,
           **attrs: Any) -> optuna.trial.FrozenTrial:
    user_attrs = {records.STOP_REASON: reason, **attrs} if reason else dict(attrs)
    return optuna.trial.FrozenTrial(
        number=number, state=state, value=0.5 if state == TrialState.COMPLETE else None, values=None,
        datetime_start=dt.datetime.now(), datetime_complete=dt.datetime.now(), params={"lr": 0.0003833},
        distributions={"lr": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True)}, user_attrs=user_attrs,
        system_attrs=records.retry_attrs(retries) if retries else {}, intermediate_values={}, trial_id=number)


# ------------------------------------------------------------------ counts

def test_counts_below_the_file_target_say_a_plain_rerun_goes_on() -> None:
    assert progress_line(5, 20, CFG) == ("finished 5 of 20 trials (the last run's n_trials); "
                                         "`hpsearch run s.yaml` goes on")


def test_counts_against_a_target_raised_on_the_command_line_never_read_23_of_20() -> None:
    line = progress_line(23, 26, CFG)
    assert "of 20" not in line
    assert line == "finished 23 of 26 trials (the last run's n_trials); `hpsearch run s.yaml --n-trials 26` goes on"


def test_a_finished_study_says_how_to_add_trials() -> None:
    assert progress_line(26, 26, CFG, Hints(storage=" --storage sqlite:///x.db")) == (
        "finished 26 of 26 trials; to add 20 more: hpsearch run s.yaml --storage sqlite:///x.db --n-trials 46")
    assert progress_line(3, 2, CFG).startswith("finished 3 trials (the last run asked for 2); to add 20 more")


def test_a_target_set_on_the_command_line_stays_in_the_hint_that_goes_on() -> None:
    raised = build_config({**TINY_STUDY, "n_trials": 120}, source="s.yaml")  # `--n-trials 120`; the file says 20
    line = progress_line(37, 120, raised, Hints(file_n_trials=20))
    assert line.endswith("`hpsearch run s.yaml --n-trials 120` goes on")
    assert progress_line(120, 120, raised, Hints(file_n_trials=20)).endswith(
        "to add 20 more: hpsearch run s.yaml --n-trials 140")


def test_hints_name_the_output_folder_a_run_needs_and_the_program_as_typed() -> None:
    hints = Hints(prog=".venv/bin/hpsearch", storage=" --storage postgresql://u:***@h/db", file_n_trials=20,
                  file_out_dir="runs/tiny", out_dir="runs/tiny-pg")
    assert progress_line(3, 20, CFG, hints) == (
        "finished 3 of 20 trials (the last run's n_trials); "
        "`.venv/bin/hpsearch run s.yaml --storage postgresql://u:***@h/db --output-dir runs/tiny-pg` goes on")
    assert hints.verb("dashboard", "s.yaml") == ".venv/bin/hpsearch dashboard s.yaml --storage postgresql://u:***@h/db"
    same = Hints(file_out_dir="runs/tiny", out_dir=str(Path("runs/tiny").absolute()))
    assert same.run("s.yaml") == "hpsearch run s.yaml"


def _executable(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return str(path)


def test_the_program_in_the_hints_is_the_one_the_user_typed(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = _executable(workdir / ".venv" / "bin" / "hpsearch")
    python = _executable(workdir / ".venv" / "bin" / "python")
    monkeypatch.setenv("PATH", str(workdir / "empty"))
    assert invoked_as(script, python) == ".venv/bin/hpsearch"  # not activated: `hpsearch` alone is not found
    main_py = str(workdir / "src" / "hpsearch" / "__main__.py")
    assert invoked_as(main_py, python) == ".venv/bin/python -m hpsearch"
    monkeypatch.setenv("PATH", str(workdir / ".venv" / "bin"))  # `. .venv/bin/activate`
    assert invoked_as(script, python) == "hpsearch"
    assert invoked_as(main_py, python) == "python -m hpsearch"
    assert invoked_as("/usr/lib/python3/site-packages/pytest/__main__.py", python) == "hpsearch"


# ------------------------------------------------------------------ epochs spent and saved

def test_epochs_spent_count_a_resumed_trial_once_and_saved_ones_by_reason() -> None:
    trials = sf.known_epochs_trials()
    saved = "saved by pruning and early stopping: 6 (4 by pruned, 2 by early stopped)"
    assert epochs_line(budget.totals(trials, 6), 6, 30) == f"epochs spent 19 of budget 30; {saved}"
    assert epochs_line(budget.totals(trials, 6), 6, None) == f"epochs spent 19; {saved}"
    assert epochs_line(budget.totals(trials), None, None) == (
        "epochs spent 19; epochs saved unknown (the study records no epochs per trial)")


def test_status_shows_epochs_spent_of_the_budget_and_saved(write_study: Callable[..., Path], workdir: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study()
    (workdir / "runs" / "tiny").mkdir(parents=True)
    sf.known_epochs_study("sqlite:///runs/tiny/study.db", name="tiny")
    assert main(["status", str(path)]) == 0
    assert ("epochs spent 19 of budget 30; saved by pruning and early stopping: 6 (4 by pruned, 2 by early stopped)"
            in capsys.readouterr().out)


def test_the_end_of_run_summary_shows_epochs_spent_of_the_budget(write_study: Callable[..., Path],
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(n_trials=3, budget={"epochs": 3})  # 2 epochs a trial: the 1 left cannot pay a second
    assert main(["run", str(path)]) == 0
    assert "epochs spent 2 of budget 3; saved by pruning and early stopping: 0\n" in capsys.readouterr().out


# ------------------------------------------------------------------ trial lines

def test_an_interrupted_trial_names_the_trial_that_resumes_it() -> None:
    trials = [_trial(5, TrialState.FAIL, "interrupted", epochs_run=3), _trial(9, TrialState.WAITING, retries=[5])]
    successor = trialsets.retried_as(trials, 5)
    assert successor == 9
    line = trial_line(trials[0], "val_accuracy", successor)
    assert line.startswith("trial 5 interrupted after 3 epochs, resumes as trial 9")
    assert "val_accuracy=-" not in line and "?" not in line


def test_the_successor_is_the_next_link_of_the_retry_chain() -> None:
    trials = [_trial(5, TrialState.FAIL, "worker_died"), _trial(9, TrialState.FAIL, "interrupted", retries=[5]),
              _trial(12, TrialState.RUNNING, retries=[5, 9])]
    assert trialsets.retried_as(trials, 5) == 9
    assert trialsets.retried_as(trials, 9) == 12
    assert trialsets.successors(trials) == {5: 9, 9: 12}
    assert trial_line(trials[0], "m", 9).startswith("trial 5 worker died, resumes as trial 9")


def test_a_trial_out_of_retries_says_it_is_not_queued_again() -> None:
    last = _trial(9, TrialState.FAIL, "interrupted", retries=[5])
    assert not awaits_successor(last, max_retries=1)
    assert awaits_successor(last, max_retries=2)
    assert "not queued again (max_retries reached)" in trial_line(last, "m", None)


def test_a_trial_stopped_before_its_parameters_were_drawn_shows_no_empty_parentheses() -> None:
    bare = _trial(3, TrialState.FAIL, "interrupted")
    bare.params = {}
    assert trial_line(bare, "m", 4) == "trial 3 interrupted, resumes as trial 4"
    done = _trial(1, TrialState.COMPLETE, "completed")
    done.params = {}
    assert trial_line(done, "m") == "trial 1 completed: m=0.5000"


def test_failed_and_finished_trials_read_as_before() -> None:
    failed = _trial(2, TrialState.FAIL, "error", error="Traceback...\nValueError: boom\n")
    assert trial_line(failed, "m") == "trial 2 failed: ValueError: boom"
    done = _trial(1, TrialState.COMPLETE, "completed", epochs_run=1)
    assert trial_line(done, "val_accuracy") == "trial 1 completed: val_accuracy=0.5000 after 1 epoch (lr=0.0003833)"


# ------------------------------------------------------------------ from the command line

def test_status_after_more_trials_than_the_file_counts_what_is_true(
        write_study: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(n_trials=2)
    assert main(["run", str(path), "--n-trials", "3"]) == 0
    capsys.readouterr()
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"finished 3 of 3 trials; to add 2 more: hpsearch run {path} --n-trials 5" in out
    assert "of 2 trials" not in out


def test_a_plain_rerun_of_a_finished_study_runs_nothing_and_says_how_to_extend_it(
        write_study: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(n_trials=2)
    assert main(["run", str(path), "--n-trials", "3"]) == 0
    capsys.readouterr()
    assert main(["run", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "nothing to run: study 'tiny' already has 3 finished trials and n_trials is 2" in err
    assert f"to add 2 more: hpsearch run {path} --n-trials 5" in out
    study = optuna.load_study(study_name="tiny", storage="sqlite:///runs/tiny/study.db")
    assert len(study.trials) == 3
    assert records.target_of(study) == 3  # the rerun that ran nothing left the last run's target alone


def test_hints_carry_the_storage_the_run_used(write_study: Callable[..., Path],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(n_trials=1)
    assert main(["run", str(path), "--storage", "sqlite:///elsewhere.db"]) == 0
    out = capsys.readouterr().out
    assert f"dashboard: hpsearch dashboard {path} --storage sqlite:///elsewhere.db" in out
    assert f"report: hpsearch report {path} --storage sqlite:///elsewhere.db" in out
    assert main(["run", str(path), "--output-dir", "runs/moved"]) == 0
    assert f"report: hpsearch report {path} --storage sqlite:///runs/moved/study.db" in capsys.readouterr().out
    assert main(["status", str(path)]) == 2  # the file's own storage holds no such study: the hint was needed


def test_each_run_is_its_own_session_in_the_report_even_seconds_apart(write_study: Callable[..., Path]) -> None:
    from hpsearch.results.collect import collect_study

    path = write_study(n_trials=1)
    assert main(["run", str(path)]) == 0
    assert main(["run", str(path), "--n-trials", "3", "--workers", "2"]) == 0  # a second run, two workers
    study = optuna.load_study(study_name="tiny", storage="sqlite:///runs/tiny/study.db")
    counted = [t for t in study.trials if records.stop_reason(t) != records.SURPLUS]  # lost a race for a place
    runs = [records.run_of(t) for t in counted]
    assert len(runs) == 3 and runs[0] != runs[1] == runs[2]
    assert str(runs[1]).split(":")[1] == str(os.getpid())  # the worker processes took the id of the run
    assert [s.n_trials for s in collect_study(study).summary.sessions] == [1, 2]


def test_a_run_with_its_own_storage_and_folder_keeps_that_folder_in_every_verb(
        write_study: Callable[..., Path], workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(n_trials=1)
    assert main(["run", str(path)]) == 0  # the file's own study, in runs/tiny
    capsys.readouterr()
    other = ["--storage", "sqlite:///other.db"]
    assert main(["run", str(path), *other, "--output-dir", "runs/tiny-other"]) == 0
    out = capsys.readouterr().out
    run_hint = f"hpsearch run {path} --storage sqlite:///other.db --output-dir runs/tiny-other --n-trials 2"
    assert run_hint in out
    assert main(run_hint.split()[1:]) == 0  # followed as printed: it runs (without --output-dir it was refused)
    capsys.readouterr()
    assert main(["status", str(path), *other]) == 0  # status has no --output-dir: the study's record supplies it
    assert "--storage sqlite:///other.db --output-dir runs/tiny-other --n-trials 3" in capsys.readouterr().out
    assert main(["export", str(path), *other]) == 0
    assert capsys.readouterr().out.startswith("trials written to runs/tiny-other/trials.csv and ")
    assert (workdir / "runs/tiny-other/trials.csv").is_file() and not (workdir / "runs/tiny/trials.csv").exists()


def test_a_run_stopped_early_hints_at_the_target_it_was_given(write_study: Callable[..., Path],
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(n_trials=2)
    assert main(["run", str(path), "--n-trials", "5", "--timeout", "0.001"]) == 0  # stops before its first trial
    assert f"`hpsearch run {path} --n-trials 5` goes on" in capsys.readouterr().out


def test_a_failed_trial_is_one_line_and_status_failed_says_when_none_failed(
        write_study: Callable[..., Path], workdir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(n_trials=1)
    assert main(["run", str(path)]) == 0
    capsys.readouterr()
    assert main(["status", str(path), "--failed"]) == 0
    assert "no trial failed" in capsys.readouterr().out
    (workdir / "raising_model.py").write_text(
        "def build(input_shape, num_classes, dropout=0.0):\n"
        "    import torch\n"
        "    class Raising(torch.nn.Linear):\n"
        "        def forward(self, x):\n"
        "            if self.training:\n"
        "                raise ValueError('boom in user code')\n"
        "            return super().forward(x.flatten(1))\n"
        "    return Raising(64, 10)\n")
    monkeypatch.syspath_prepend(str(workdir))
    broken = write_study("broken.yaml", name="broken", n_trials=10, model={"name": "raising_model:build"},
                         workers={"max_consecutive_failures": 2})
    assert main(["run", str(broken)]) == 1
    err = capsys.readouterr().err
    assert err.count("trial 0 failed") == 1, err
    assert "trial 0 failed: ValueError: boom in user code" in err


def test_status_shows_the_workers_by_host(write_study: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study()
    Path("runs/tiny").mkdir(parents=True)
    study = optuna.create_study(study_name="tiny", storage="sqlite:///runs/tiny/study.db", direction="maximize")
    for worker, state in (("node-a:11", TrialState.COMPLETE), ("node-a:11", TrialState.RUNNING),
                          ("node-a:12", TrialState.RUNNING), ("node-b:7", TrialState.PRUNED),
                          ("node-b:7", TrialState.FAIL)):
        value = 0.5 if state == TrialState.COMPLETE else None
        study.add_trial(optuna.trial.create_trial(state=state, value=value, user_attrs={records.WORKER: worker},
                                                  intermediate_values={1: 0.4} if state == TrialState.PRUNED else None))
    assert main(["status", str(path)]) == 0
    assert "workers by host: node-a 2 running, 1 finished; node-b 1 finished\n" in capsys.readouterr().out


def test_after_a_run_the_hosts_show_what_they_finished_and_no_zero_running() -> None:
    done = [("vm:11", TrialState.COMPLETE, 12), ("vm:12", TrialState.PRUNED, 8), ("vm:12", TrialState.FAIL, 1)]
    assert hosts_line(done) == "workers by host: vm 20 finished"
    assert hosts_line([]) is None
    assert hosts_line([*done, ("gpu1:3", TrialState.RUNNING, 1)]) == "workers by host: gpu1 1 running, 0 finished; vm 20 finished"


def _constrained(trial: optuna.trial.FrozenTrial, **constraints: float) -> optuna.trial.FrozenTrial:
    trial.system_attrs.update({f"constraints:{name}": value for name, value in constraints.items()})
    return trial


def test_an_infeasible_trial_names_the_bound_it_broke() -> None:
    refused = _constrained(_trial(3, TrialState.PRUNED, "infeasible", epochs_run=0,
                                  costs={"params": 4810, "train_time": 0.0}), params=1810.0)
    assert trial_line(refused, "val_accuracy") == ("trial 3 infeasible: params = 4810 is 1810 past its bound, "
                                                   "not trained (lr=0.0003833)")
    measured = _constrained(_trial(4, TrialState.COMPLETE, "completed", epochs_run=2, costs={"latency_ms": 2.5}),
                            latency_ms=0.5, params=-10.0)
    assert trial_line(measured, "val_accuracy") == ("trial 4 completed: val_accuracy=0.5000 after 2 epochs, "
                                                    "infeasible: latency_ms = 2.5 is 0.5 past its bound (lr=0.0003833)")
