"""Constraints and several objectives end to end, in process through `main(argv)`, on tiny digits studies.

Two widths of the MLP are forced with `enqueue:` (same lr, same trial seeds), so which trial is the more accurate
and which one breaks a bound is known before the assertions, not guessed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import optuna
import pytest
from optuna.trial import TrialState

from hpsearch import records
from hpsearch.cli import main
from conftest import python_env

NARROW, WIDE = 8, 64  # mlp depth 1 on digits (64 inputs, 10 classes): 610 and 4810 parameters
PARAMS = {NARROW: 64 * NARROW + NARROW + NARROW * 10 + 10, WIDE: 64 * WIDE + WIDE + WIDE * 10 + 10}
SPACE = {"lr": {"type": "float", "low": 1.0e-3, "high": 3.0e-2, "log": True},
         "width": {"type": "categorical", "choices": [NARROW, 16, 32, WIDE]}}
FORCED = [{"lr": 0.02, "width": WIDE}, {"lr": 0.02, "width": NARROW}]


def _study(name: str, path: Path) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{path.parent / 'runs' / name / 'study.db'}")


def _best(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["best", str(path), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def _forced(write_study: Callable[..., Path], name: str, **changes: Any) -> Path:
    return write_study(f"{name}.yaml", name=name, n_trials=2, space=SPACE, enqueue=FORCED,
                       model={"name": "mlp", "args": {"depth": 1}}, **changes)


def test_costs_are_measured_and_shown(write_study: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    path = _forced(write_study, "costs")
    assert main(["run", str(path)]) == 0
    for trial in _study("costs", path).trials:
        costs = records.costs(trial)
        assert costs["params"] == PARAMS[trial.params["width"]]
        assert costs["latency_ms"] > 0 and costs["peak_memory_mb"] >= 0 and costs["train_time"] > 0
        assert records.memory_kind(trial) == "rss_delta"  # on the CPU: named as what it is
    capsys.readouterr()
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert "costs: params" in out and "(process RSS delta)" in out
    assert set(_best(path, capsys)["costs"]) == {"params", "latency_ms", "peak_memory_mb", "train_time"}


def test_a_pruned_trial_still_records_its_parameter_count(write_study: Callable[..., Path]) -> None:
    path = _forced(write_study, "pruned", pruner={"type": "threshold", "lower": 0.999})  # prunes after epoch 1
    assert main(["run", str(path)]) == 0
    trials = _study("pruned", path).trials
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    assert [records.costs(t)["params"] for t in trials] == [PARAMS[t.params["width"]] for t in trials]


def test_a_params_bound_refuses_the_wide_model_before_training(write_study: Callable[..., Path],
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = _forced(write_study, "small", constraints={"params": {"max": 3000}})
    assert main(["run", str(path)]) == 0
    wide, narrow = sorted(_study("small", path).trials, key=lambda t: -t.params["width"])
    assert wide.state == TrialState.PRUNED and records.stop_reason(wide) == records.INFEASIBLE
    assert records.epochs_run(wide) == 0 and records.history(wide) == [] and not wide.intermediate_values
    assert wide.constraints == {"params": PARAMS[WIDE] - 3000.0}  # Optuna's samplers learn the infeasible region
    assert narrow.state == TrialState.COMPLETE and narrow.constraints == {"params": PARAMS[NARROW] - 3000.0}
    record = _best(path, capsys)
    assert record["number"] == narrow.number and record["infeasible"] == 1


def test_the_best_trial_is_feasible_though_an_infeasible_one_is_more_accurate(
        write_study: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    free = _forced(write_study, "free")
    assert main(["run", str(free)]) == 0
    by_width = {t.params["width"]: t for t in _study("free", free).trials}
    accurate, other = by_width[WIDE].value, by_width[NARROW].value
    assert accurate > other  # the premise: the wide model learns more in two epochs
    # The same trials again (same seeds), now with a bound only the measured accuracy can break: post-training.
    bounded = _forced(write_study, "bounded", constraints={"val_accuracy": {"max": (accurate + other) / 2}})
    assert main(["run", str(bounded)]) == 0
    study = _study("bounded", bounded)
    wide = next(t for t in study.trials if t.params["width"] == WIDE)
    assert wide.state == TrialState.COMPLETE and wide.value == accurate and not records.is_feasible(wide)
    assert wide.constraints["val_accuracy"] > 0
    record = _best(bounded, capsys)
    assert record["value"] == other and record["infeasible"] == 1
    assert study.best_trial.number == record["number"]  # Optuna's own choice among feasible trials agrees
    capsys.readouterr()
    assert main(["best", str(bounded)]) == 0
    assert "1 finished trial(s) broke a constraint (val_accuracy <= " in capsys.readouterr().out


def _dominated(entry: dict[str, Any], others: list[optuna.trial.FrozenTrial], directions: list[str]) -> bool:
    signs = [1 if d == "maximize" else -1 for d in directions]
    mine = [s * v for s, v in zip(signs, entry["values"].values())]
    for t in others:
        theirs = [s * v for s, v in zip(signs, t.values)]
        if all(b >= a for a, b in zip(mine, theirs)) and any(b > a for a, b in zip(mine, theirs)):
            return True
    return False


def test_two_objectives_list_a_real_pareto_set(write_study: Callable[..., Path],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    slow = {"lr": 0.001, "width": WIDE}  # as many parameters as FORCED[0], a tenth of its lr: dominated by it
    path = write_study("two.yaml", name="two", n_trials=6, space=SPACE, enqueue=[*FORCED, slow],
                       sampler={"type": "random"},
                       model={"name": "mlp", "args": {"depth": 1}},
                       objectives=[{"metric": "val_accuracy"}, {"metric": "params", "direction": "minimize"}])
    assert main(["run", str(path)]) == 0
    study = _study("two", path)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val_accuracy", "params"]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 6 and not any(t.intermediate_values for t in complete)  # nothing reported: no pruning
    record = _best(path, capsys)
    listed = {e["number"] for e in record["pareto"]}
    assert listed and all(not _dominated(e, complete, ["maximize", "minimize"]) for e in record["pareto"])
    rest = [t for t in complete if t.number not in listed]  # and every other trial is beaten by one listed
    front = [t for t in complete if t.number in listed]
    assert all(_dominated({"values": dict(enumerate(t.values))}, front, ["maximize", "minimize"]) for t in rest)
    assert {e["number"] for e in record["pareto"]} == {t.number for t in study.best_trials}  # Optuna agrees
    narrow = next(t for t in complete if t.params == FORCED[1])  # the fewest parameters: always on the front
    assert narrow.number in listed and narrow.values[1] == PARAMS[NARROW]

    chosen = max(listed)
    capsys.readouterr()
    assert main(["best", str(path), "--export", "out", "--trial", str(chosen)]) == 0
    assert f"trial {chosen}" in Path("out/params.yaml").read_text().splitlines()[0]
    said = capsys.readouterr().out
    assert f"trial {chosen} exported:" in said and "exported params: out/params.yaml" in said  # after the set
    assert "costs" in said and "latency_ms" in said  # what each model of the set costs besides its params
    assert main(["best", str(path), "--export", "out3"]) == 0  # no --trial: the set's most accurate
    first = Path("out3/params.yaml").read_text().splitlines()[0]
    assert int(first.rsplit(" ", 1)[1]) == max(front, key=lambda t: (t.values[0], -t.number)).number
    off_front = next(t.number for t in complete if t.params == slow)
    assert off_front not in listed
    assert main(["best", str(path), "--export", "out2", "--trial", str(off_front)]) == 2
    assert "is not in the Pareto set" in capsys.readouterr().err and not Path("out2/params.yaml").exists()


def test_changing_the_objectives_of_a_study_is_refused(write_study: Callable[..., Path],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study("obj.yaml", name="obj", n_trials=1,
                       objectives=[{"metric": "val_accuracy"}, {"metric": "latency_ms"}])
    assert main(["run", str(path)]) == 0
    db = path.parent / "runs" / "obj" / "study.db"
    before = db.read_bytes()
    changed = write_study("obj.yaml", name="obj", n_trials=2,
                          objectives=[{"metric": "val_accuracy"}, {"metric": "params"}])
    capsys.readouterr()
    assert main(["run", str(changed)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "objectives:" in err[0] and "latency_ms (minimize)" in err[0] and "new name:" in err[0]
    assert db.read_bytes() == before  # nothing written
    one = write_study("obj.yaml", name="obj", n_trials=2, metric="val_accuracy")
    assert main(["run", str(one)]) == 2  # one metric instead of two: refused too


def test_another_metric_of_the_same_direction_is_refused_too(write_study: Callable[..., Path],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    regression = {"task": "regression", "data": {"dataset": "diabetes", "val_split": 0.25},
                  "train": {"epochs": 1, "batch_size": 64}}
    path = write_study("mse.yaml", name="mse", n_trials=1, metric="val_mse", **regression)
    assert main(["run", str(path)]) == 0
    db = path.parent / "runs" / "mse" / "study.db"
    before = db.read_bytes()
    changed = write_study("mse.yaml", name="mse", n_trials=2, metric="val_mae", **regression)  # minimised as well
    for verb in (["run"], ["status"], ["best", "--json"]):
        capsys.readouterr()
        assert main([verb[0], str(changed), *verb[1:]]) == 2, verb
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{changed}: metric: study 'mse'" in err[0], err
        assert "val_mse (minimize), this file says val_mae (minimize)" in err[0] and "new name:" in err[0]
    assert db.read_bytes() == before  # nothing written


@pytest.mark.parametrize("pruner", [None, {"type": "median"}])
def test_validate_says_no_pruner_is_used_with_two_objectives(write_study: Callable[..., Path],
                                                             capsys: pytest.CaptureFixture[str],
                                                             pruner: dict[str, str] | None) -> None:
    two = [{"metric": "val_accuracy"}, {"metric": "latency_ms"}]
    path = write_study("v.yaml", name="v", objectives=two, pruner=pruner)
    capsys.readouterr()
    assert main(["validate", str(path), "--config-only"]) == 0
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("# pruner:")]
    kind = pruner["type"] if pruner else "successive_halving"
    assert said == [f"# pruner: none used: 2 objectives: Optuna prunes no multi-objective trial, so pruner {kind} "
                    "is not used (early stopping on val_accuracy still is, when train.early_stopping is set)"]
    one = write_study("v1.yaml", name="v1", pruner=None)  # one metric: the default pruner, used as before
    assert main(["validate", str(one), "--config-only"]) == 0
    assert "# pruner: default: successive halving (ASHA)" in capsys.readouterr().out


def _hpsearch(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hpsearch", *args], cwd=cwd, env=python_env(), text=True,
                          capture_output=True, timeout=600)


@pytest.mark.postgres
def test_a_constrained_two_objective_study_on_postgresql_reaches_exact_totals_across_workers(
        write_study: Callable[..., Path], workdir: Path, empty_pg_url: str) -> None:
    path = str(write_study("pg.yaml", name="pg", n_trials=3, space=SPACE, enqueue=FORCED, storage=empty_pg_url,
                           model={"name": "mlp", "args": {"depth": 1}}, constraints={"params": {"max": 3000}},
                           objectives=[{"metric": "val_accuracy"}, {"metric": "params"}],
                           pruner={"type": "median"}))  # unused with two objectives: the run says so
    first = _hpsearch("run", path, "--workers", "2", cwd=workdir)  # a supervisor and two worker processes
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("Optuna prunes no multi-objective trial") + first.stderr.count(
        "Optuna prunes no multi-objective trial") == 1  # said once, by the run, not by every worker
    again = _hpsearch("run", path, "--n-trials", "4", cwd=workdir)  # resumed: the study's total
    assert again.returncode == 0, again.stderr
    best = _hpsearch("best", path, "--json", cwd=workdir)
    assert best.returncode == 0, best.stderr
    storage = optuna.storages.RDBStorage(empty_pg_url)
    try:
        study = optuna.load_study(study_name="pg", storage=storage)
        trials, names, directions = study.trials, study.metric_names, study.directions
    finally:
        storage.engine.dispose()  # psycopg warns about connections left open
    ended = [(t.number, t.state.name, records.stop_reason(t)) for t in trials]
    assert len([t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 4, ended
    # two workers may race for the last place: the loser's trial is told FAIL as surplus, and counts for nothing
    assert all(reason == records.SURPLUS for _, state, reason in ended if state == "FAIL"), ended
    assert names == ["val_accuracy", "params"] and len(directions) == 2
    wide = next(t for t in trials if t.params == FORCED[0])
    assert records.stop_reason(wide) == records.INFEASIBLE
    record = json.loads(best.stdout)
    assert record["infeasible"] >= 1 and wide.number not in {e["number"] for e in record["pareto"]}
