"""The supervisor: sizing workers per GPU from the probe, sharing cores, and saying when a worker stalls."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable

import optuna
import pytest

from hpsearch import monitor as monitor_module
from hpsearch import supervisor as supervisor_module
from hpsearch.cli import main
from hpsearch.config import load_config
from hpsearch.slots import GIB, Slot
from hpsearch.status import WorkerStatus, read_status
from hpsearch.supervisor import Supervisor, _Process


class _Running:
    """A stand-in for a live worker process."""

    pid = 4242

    def poll(self) -> None:
        return None


def _supervisor(write_study: Callable[..., Path], n_trials: int, slots: list[Slot]) -> Supervisor:
    cfg = load_config(write_study(n_trials=n_trials))
    Path(cfg.out_dir, "logs").mkdir(parents=True)
    study = optuna.create_study(study_name=cfg.name, storage=f"sqlite:///{cfg.out_dir}/study.db")
    return Supervisor(cfg, study, slots, [], auto_scale=True)


def _probing(sup: Supervisor, slot: Slot, request: pytest.FixtureRequest) -> _Process:
    log_file = open(os.devnull, "ab")  # noqa: SIM115
    request.addfinalizer(log_file.close)
    proc = _Process(slot, _Running(), log_file, probing=True)  # type: ignore[arg-type]
    sup.procs[slot.index] = proc
    return proc


@pytest.mark.parametrize(("n_trials", "cores", "expected_workers"), [(20, 16, 4), (20, 2, 2), (2, 16, 2)])
def test_the_probe_sizes_the_workers_on_its_gpu(write_study: Callable[..., Path], request: pytest.FixtureRequest,
                                                monkeypatch: pytest.MonkeyPatch, n_trials: int, cores: int,
                                                expected_workers: int) -> None:
    sup = _supervisor(write_study, n_trials, [Slot(0, 0)])
    _probing(sup, Slot(0, 0), request)
    spawned: list[Slot] = []
    monkeypatch.setattr(sup, "_spawn", lambda slot, restarts=0, probe=False: spawned.append(slot) or _probing(
        sup, slot, request))
    monkeypatch.setattr(supervisor_module, "usable_cores", lambda: cores)
    sup._scale()
    assert spawned == []  # no measurement yet: wait
    probe = {"trial_peak": 10 * GIB, "worker_fixed": 1 * GIB, "free": 60 * GIB, "total": 80 * GIB, "batch_size": 256}
    WorkerStatus(sup.status_path(Slot(0, 0))).note(probe=probe)  # 4 fit in memory
    sup._scale()
    assert [slot.gpu for slot in sup.slots] == [0] * expected_workers
    assert [slot.index for slot in spawned] == list(range(1, expected_workers))
    plan = json.loads((sup.log_dir / "plan.json").read_text())
    assert plan == {"threads": max(1, cores // expected_workers), "workers": expected_workers}
    sup._scale()
    assert len(sup.slots) == expected_workers  # decided once per GPU


def test_workers_get_their_share_of_the_cores(write_study: Callable[..., Path], workdir: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    sup = _supervisor(write_study, 20, [Slot(0, 0), Slot(1, 0), Slot(2, 1), Slot(3, 1)])
    seen: list[dict[str, str]] = []

    class FakePopen:
        pid = 1

        def __init__(self, argv: list[str], env: dict[str, str], **kwargs: Any) -> None:
            seen.append(env)

    monkeypatch.setattr(supervisor_module.subprocess, "Popen", FakePopen)
    monkeypatch.setattr(supervisor_module, "usable_cores", lambda: 16)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(name, raising=False)
    sup._spawn(Slot(2, 1)).log_file.close()
    assert seen[0]["OMP_NUM_THREADS"] == seen[0]["MKL_NUM_THREADS"] == "4"  # GPU workers too, not only CPU ones
    assert seen[0]["OMP_WAIT_POLICY"] == "PASSIVE"  # idle OpenMP threads sleep instead of spinning
    assert seen[0]["CUDA_VISIBLE_DEVICES"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's own count wins, in the spawn and in the plan
    sup._spawn(Slot(3, 1)).log_file.close()
    assert seen[1]["OMP_NUM_THREADS"] == "3" and "MKL_NUM_THREADS" not in seen[1]
    assert sup.threads == 3


SLOW_DATA = '''
import os
import time
import numpy as np


def digits_slowly(root=None):
    from sklearn.datasets import load_digits
    print("loading the slow dataset", flush=True)
    deadline = time.monotonic() + 300  # a safety net only: the test releases it once the supervisor has spoken
    while not os.path.exists(os.environ["SLOW_DATA_RELEASE"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    bunch = load_digits()
    return bunch.images.astype(np.uint8), bunch.target
'''


@pytest.mark.slow
def test_a_worker_stuck_before_its_first_trial_is_shown_with_its_log(write_study: Callable[..., Path], workdir: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The workers stay in "loading data" until the supervisor has shown their logs and named the slow phase:
    each step waits on the one before (a line in the log, a report made), never on a guess of start-up time."""
    (workdir / "slow_data.py").write_text(SLOW_DATA)
    release = workdir / "release"
    monkeypatch.syspath_prepend(str(workdir))
    monkeypatch.setenv("PYTHONPATH", f"{Path(__file__).resolve().parent.parent}{os.pathsep}{workdir}")
    monkeypatch.setenv("SLOW_DATA_RELEASE", str(release))
    monkeypatch.setattr(supervisor_module, "STALL_S", 1.0)
    monkeypatch.setattr(monitor_module, "SLOW_PHASE_S", 1.0)
    report_stalls, log_phases = Supervisor._report_stalls, monitor_module.Monitor._log_phases
    reported: list[bool] = []

    def once_every_log_has_its_line(self: Supervisor) -> None:  # the check fires only once there is a line to show
        if all("loading the slow dataset" in Path(p.log_file.name).read_text() for p in self.procs.values()):
            report_stalls(self)
            reported.append(self.stalls_reported == set(self.procs))

    def release_once_named(self: monitor_module.Monitor) -> None:
        log_phases(self)
        if any(reported) and self.phases.get(0) == "loading data":
            release.touch()

    monkeypatch.setattr(Supervisor, "_report_stalls", once_every_log_has_its_line)
    monkeypatch.setattr(monitor_module.Monitor, "_log_phases", release_once_named)
    path = write_study(n_trials=2, data={"dataset": "slow_data:digits_slowly", "val_split": 0.25},
                       train={"epochs": 1, "batch_size": 64})
    assert main(["run", str(path), "--workers", "2"]) == 0
    assert release.exists()  # released by the events, not by the safety net
    text = capsys.readouterr().err
    assert "has not reached a trial" in text and "(phase: loading data" in text
    assert "  | loading the slow dataset" in text  # the worker's own last lines
    assert re.search(r"worker cpu#0: loading data for \d+ s so far", text)  # a slow phase is named in plain mode
    assert "2 workers running trials (pids: cpu#0 " in text
    status = read_status(Path("runs/tiny/logs/worker-0.json"))
    assert status is not None and status["phase"] == "done"
    assert [name for name, _ in status["phases"]] == ["process", "starting", "loading data", "placing data",
                                                      "building the model", "importing torch._dynamo",
                                                      "opening the study", "trials", "done"]


class _Died:
    """A stand-in for a worker process that was killed."""

    pid = 4243

    def poll(self) -> int:
        return -9


def test_a_worker_dying_before_the_study_is_opened_still_gets_its_trial_freed(
        write_study: Callable[..., Path], request: pytest.FixtureRequest) -> None:
    from hpsearch.errors import WorkerCrashError
    from hpsearch import records

    sup = _supervisor(write_study, n_trials=4, slots=[Slot(0, None)])
    sup.cfg = sup.cfg.model_copy(update={"workers": sup.cfg.workers.model_copy(update={"max_restarts": 0})})
    storage = f"sqlite:///{sup.cfg.out_dir}/study.db"
    optuna.delete_study(study_name="tiny", storage=storage)
    study = optuna.create_study(study_name="tiny", direction="maximize", storage=storage)
    sup.study = None  # the worker created the study and died before the supervisor's next poll
    log_file = open(os.devnull, "ab")  # noqa: SIM115
    request.addfinalizer(log_file.close)
    proc = _Process(Slot(0, None), _Died(), log_file)  # type: ignore[arg-type]
    trial = study.ask()
    trial.set_user_attr(records.WORKER, proc.worker_id)
    with pytest.raises(WorkerCrashError):
        sup._check(proc)
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {0: optuna.trial.TrialState.FAIL, 1: optuna.trial.TrialState.WAITING}  # freed, queued again


def test_a_storage_that_stops_answering_before_the_study_is_opened_is_a_failure_of_the_run(
        write_study: Callable[..., Path]) -> None:
    from hpsearch.errors import StorageFailure

    cfg = load_config(write_study(storage="postgresql+psycopg://nobody@127.0.0.1:1/gone"))  # nothing listens there
    sup = Supervisor(cfg, None, [Slot(0, None)], [])
    with pytest.raises(StorageFailure, match="storage: .*127.0.0.1:1/gone"):  # exit 1 (the run failed), not 2
        sup._attach_study({0: {"phase": "trials"}}, monitor_module.Monitor(None, cfg, sup.slots, live=False))
