"""`hpsearch slurm --submit` against a real Slurm (munged, slurmctld, slurmd of our own) and PostgreSQL.

The quickstart (its data, space and sampler; 6 trials of 5 epochs, with a model slowed to ~0.7 s
per epoch so that a signal lands mid-trial) runs as a 2-task job array. One array task is
cancelled mid-trial (`scancel`): its trial is interrupted and resumed from its epoch by the other
task. The other is then requeued mid-trial (`scontrol requeue`): interrupted, requeued by Slurm,
and its trial resumed when the task runs again. At the end exactly n_trials are finished, none is
RUNNING and no two finished trials share their parameters. Skips where the daemons cannot start;
HPSEARCH_REQUIRE_SLURM=1 (CI) makes that a failure.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna
import pytest
import yaml

from conftest import python_env, start_hpsearch
from hpsearch import records

TESTS = Path(__file__).resolve().parent
QUICKSTART = TESTS.parent / "studies" / "quickstart.yaml"
N_TRIALS = 6
TIMEOUT_S = 600  # a safety net on a busy machine; every wait below ends on an event
pytestmark = [pytest.mark.slurm, pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    import slurm

    try:
        with slurm.Cluster() as running:
            yield running
    except slurm.SlurmUnavailable as exc:
        if os.environ.get("HPSEARCH_REQUIRE_SLURM") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def _study_file(workdir: Path) -> Path:
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw.update(n_trials=N_TRIALS, device="cpu", pruner={"type": "none"},
               model={"name": "slow_model:slow_mlp", "args": {}})
    raw["train"] = {**raw["train"], "epochs": 5, "early_stopping": None}
    raw["train"] = {k: v for k, v in raw["train"].items() if v is not None}
    path = workdir / "quickstart.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


class Watch:
    """The study and the job as the test sees them, polled until a condition holds."""

    def __init__(self, url: str, cluster: Any, job: str) -> None:
        self.storage = optuna.storages.RDBStorage(url)
        self.cluster, self.job = cluster, job
        self.started = time.monotonic()

    def close(self) -> None:
        self.storage.engine.dispose()

    def trials(self) -> list[optuna.trial.FrozenTrial]:
        try:
            study = optuna.load_study(study_name="quickstart", storage=self.storage)
        except KeyError:  # not created yet
            return []
        return study.get_trials(deepcopy=False)

    def slurm(self, *argv: str) -> str:
        done = subprocess.run(argv, env=self.cluster.env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{argv}: {done.stderr}"
        return done.stdout

    def task_state(self, task: int) -> str:
        """The array task's state (PENDING, RUNNING, ...) and restart count, from scontrol."""
        out = self.slurm("scontrol", "-o", "show", "job", f"{self.job}_{task}")
        fields = dict(part.split("=", 1) for part in out.split() if "=" in part)
        return f"{fields['JobState']} restarts={fields.get('Restarts', '0')}"

    def until(self, what: str, condition: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + TIMEOUT_S
        while not (found := condition()):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; trials: {self.summary()}; "
                                     f"slurmd: {self.cluster.log_tail('slurmd')}")
            time.sleep(0.2)
        print(f"{time.monotonic() - self.started:6.1f} s: {what}")  # where the time goes, with pytest -s
        return found

    def summary(self) -> list[tuple[int, str, Any, int]]:
        return [(t.number, t.state.name, records.slot(t), len(t.intermediate_values)) for t in self.trials()]

    def training_on(self, slot: int) -> optuna.trial.FrozenTrial | None:
        """A trial running on `slot` with two epochs done (so its resume state is on disk), if any."""
        for trial in self.trials():
            if trial.state == optuna.trial.TrialState.RUNNING and records.slot(trial) == slot \
                    and len(trial.intermediate_values) >= 2:
                return trial
        return None

    def resumed(self, number: int) -> optuna.trial.FrozenTrial | None:
        """The finished trial that resumed trial `number` (directly or along its retries), once there is one."""
        for trial in self.trials():
            origin = trial.user_attrs.get(records.RESUMED_FROM) or {}
            if trial.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) and \
                    number in records.retry_history_of(trial.system_attrs) and origin.get("epoch", 0) >= 1:
                return trial
        return None

    def stopped_cleanly(self, number: int) -> bool:
        (trial,) = [t for t in self.trials() if t.number == number]
        return trial.state == optuna.trial.TrialState.FAIL and records.stop_reason(trial) == "interrupted"


def _scancel_then_requeue(watch: Watch, job: str) -> None:
    """Each step waits on the study's or the job's state, never on a guessed time."""
    # scancel of array task 1 mid-trial: interrupted, then resumed from its epoch by task 0.
    first = watch.until("a trial training on task 1", lambda: watch.training_on(1))
    watch.slurm("scancel", f"{job}_1")
    watch.until(f"trial {first.number} to stop cleanly", lambda: watch.stopped_cleanly(first.number))
    watch.until("task 1 to end", lambda: not watch.task_state(1).startswith(("RUNNING", "COMPLETING")))
    watch.until(f"trial {first.number} to be resumed", lambda: watch.resumed(first.number))
    # scontrol requeue of the running task 0 mid-trial: interrupted, requeued, resumed when it runs again.
    second = watch.until("a trial training on task 0", lambda: watch.training_on(0))
    watch.slurm("scontrol", "requeue", f"{job}_0")
    watch.until(f"trial {second.number} to stop cleanly", lambda: watch.stopped_cleanly(second.number))
    assert watch.until("task 0 to be requeued", lambda: "restarts=1" in watch.task_state(0))
    watch.until(f"trial {second.number} to be resumed", lambda: watch.resumed(second.number))
    watch.until("the job to end", lambda: watch.task_state(0).startswith("COMPLETED"))


def test_job_array_survives_scancel_and_requeue(cluster: Any, workdir: Path, empty_pg_url: str) -> None:
    study = _study_file(workdir)
    env = {**python_env(TESTS), "SLURM_CONF": cluster.env["SLURM_CONF"], "HPSEARCH_STORAGE": empty_pg_url}
    submit = start_hpsearch("slurm", str(study), "--nodes", "2", "--submit", cwd=workdir, env=env)
    out, err = submit.communicate(timeout=120)
    assert submit.returncode == 0, err
    job = out.split("submitted job ", 1)[1].split(":", 1)[0]
    script = (workdir / "runs/quickstart/slurm.sbatch").read_text()
    assert empty_pg_url not in script and "#SBATCH --array=0-1" in script
    watch = Watch(empty_pg_url, cluster, job)
    try:
        _scancel_then_requeue(watch, job)
        trials = watch.trials()
    finally:
        watch.close()
    finished = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(finished) == N_TRIALS, [(t.number, t.state.name) for t in trials]
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    params = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(params)) == len(params)
    logs = sorted(p.name for p in (workdir / "runs/quickstart/logs").iterdir())
    assert f"slurm-{job}_0.out" in logs and f"slurm-{job}_0-w0.log" in logs and f"slurm-{job}_1-w1.log" in logs
