"""Several real worker processes on one study: no lock errors, nothing left running, an exact total.

Each worker is its own Python process (as `hpsearch run --workers N` and `hpsearch worker` start
them): it builds the config, opens the study with its own sampler seed and runs `run_worker` with a
trivial objective (suggest, two reports, a user attr), so storage and sampling are all that is
exercised. Load (SQLite 4 x 200 trials on one file, PostgreSQL 3 workers), races for the last places
of small studies, processes opening a brand-new database together, and `hpsearch run --workers 3`
with real training on PostgreSQL. PostgreSQL tests use the `pg_url` fixture (tests/pg.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ContextManager

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from conftest import python_env

ROOT = Path(__file__).resolve().parents[2]

# One worker process, driven over stdin: a JSON line {"study": <raw study mapping>, "slot": int} makes it
# open that study and answer "opened"; the next line ("go") makes it run `run_worker` to the study's
# total and answer one JSON line. Opening first and starting on a shared "go" puts every worker's
# first ask at the same moment: the most contention the exactness checks can meet.
WORKER = """
import json, sys, time
from hpsearch.config import build_config
from hpsearch.space import suggest
from hpsearch.study import open_study
from hpsearch.worker import run_worker

print("ready", flush=True)
for line in sys.stdin:
    args = json.loads(line)
    cfg = build_config(args["study"], source="load.yaml")
    study = open_study(cfg, sampler_seed=1000 + args["slot"])
    print("opened", flush=True)
    sys.stdin.readline()
    started = time.perf_counter()

    def objective(trial):
        params = suggest(trial, cfg)
        trial.report(0.5, 0)
        trial.report(0.25, 1)
        trial.set_user_attr("slot", args["slot"])
        return params["lr"] + params["dropout"]

    outcome = run_worker(study, objective, cfg.n_trials, max_retries=cfg.workers.max_retries, poll_s=0.05)
    study._storage._backend.engine.dispose()
    print(json.dumps({"trials": len(outcome.trials), "interrupted": outcome.interrupted,
                      "run_s": time.perf_counter() - started}), flush=True)
"""


def load_study_config(url: str, n_trials: int, name: str = "load") -> dict[str, Any]:
    """A study mapping whose trials cost nothing but sampling and storage (TPE, the default sampler)."""
    return {
        "name": name,
        "storage": url,
        "n_trials": n_trials,
        "seed": 0,
        "sampler": {"type": "tpe", "n_startup_trials": 10},
        "pruner": {"type": "none"},
        "train": {"epochs": 2, "batch_size": 32},
        "space": {
            "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "dropout": {"type": "float", "low": 0.0, "high": 0.5},
        },
    }


def create_study(raw: dict[str, Any]) -> None:
    """Create the study (tables, study row, attrs) here first, as `hpsearch run --workers` does."""
    from hpsearch.config import build_config
    from hpsearch.study import open_study

    study = open_study(build_config(raw, source="load.yaml"))
    study._storage._backend.engine.dispose()


class Workers:
    """`n` worker processes (WORKER above) that run one study after another, all starting together."""

    def __init__(self, n: int, logs: Path) -> None:
        env = python_env(OMP_NUM_THREADS="1")
        logs.mkdir(parents=True, exist_ok=True)
        self.stderr_paths = [logs / f"worker-{slot}.stderr" for slot in range(n)]
        self.procs = []
        for path in self.stderr_paths:
            with path.open("w") as stderr:  # the child keeps its own descriptor
                self.procs.append(subprocess.Popen([sys.executable, "-c", WORKER], env=env, text=True,
                                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr))
        self._expect("ready")

    def _send(self, lines: list[str]) -> None:
        for proc, line in zip(self.procs, lines):
            assert proc.stdin is not None
            proc.stdin.write(line + "\n")
            proc.stdin.flush()

    def _read(self) -> list[str]:
        answers = []
        for proc, path in zip(self.procs, self.stderr_paths):
            assert proc.stdout is not None
            answer = proc.stdout.readline().strip()
            assert answer, f"worker {proc.pid} stopped (exit {proc.poll()}):\n{path.read_text()}"
            answers.append(answer)
        return answers

    def _expect(self, word: str) -> None:
        assert self._read() == [word] * len(self.procs)

    def run(self, raw: dict[str, Any]) -> list[dict[str, Any]]:
        """Create the study, have every worker open it, start them together, wait; one record per worker."""
        create_study(raw)
        self._send([json.dumps({"study": raw, "slot": slot}) for slot in range(len(self.procs))])
        self._expect("opened")
        self._send(["go"] * len(self.procs))
        return [json.loads(answer) for answer in self._read()]

    def close(self, timeout: float = 60) -> str:
        """End the workers (stdin closed); assert each exited 0; their stderr, all together."""
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()
        try:
            for proc in self.procs:
                proc.wait(timeout=timeout)
        finally:
            for proc in self.procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                if proc.stdout is not None:
                    proc.stdout.close()
        stderr = "\n".join(path.read_text() for path in self.stderr_paths)
        assert [proc.returncode for proc in self.procs] == [0] * len(self.procs), stderr
        return stderr


@contextmanager
def workers(n: int, logs: Path) -> Iterator[Workers]:
    pool = Workers(n, logs)
    try:
        yield pool
    finally:
        stderr = pool.close()
    assert "database is locked" not in stderr, stderr
    assert "Traceback" not in stderr, stderr


def check_exact(url: str, name: str, n_trials: int) -> Counter[str]:
    """Exactly n_trials finished; nothing RUNNING or WAITING; only surplus FAILs; numbers 0..N-1 once each."""
    storage = optuna.storages.RDBStorage(url)
    try:
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    finally:
        storage.engine.dispose()
    states = Counter(t.state.name for t in trials)
    assert states["COMPLETE"] + states["PRUNED"] == n_trials, states
    assert states["RUNNING"] == 0 and states["WAITING"] == 0, states
    reasons = Counter(t.user_attrs.get("stop_reason") for t in trials if t.state == TrialState.FAIL)
    assert set(reasons) <= {"surplus"}, reasons
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    for t in trials:
        if t.state == TrialState.COMPLETE:
            assert t.intermediate_values == {0: 0.5, 1: 0.25} and "slot" in t.user_attrs
    return states


@pytest.mark.slow
def test_sqlite_four_workers_800_trials_on_one_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'load.db'}"
    with workers(4, tmp_path / "logs") as pool:
        records = pool.run(load_study_config(url, n_trials=800))
    check_exact(url, "load", 800)
    assert all(r["trials"] > 0 and not r["interrupted"] for r in records), records


@pytest.mark.postgres
def test_postgres_three_workers_60_trials(pg_url: str, tmp_path: Path) -> None:
    with workers(3, tmp_path / "logs") as pool:
        records = pool.run(load_study_config(pg_url, n_trials=60, name="load-pg"))
    check_exact(pg_url, "load-pg", 60)
    assert all(r["trials"] > 0 and not r["interrupted"] for r in records), records


def race_for_last_places(url: str, tmp_path: Path, n_trials: int = 3, min_rounds: int = 6,
                         max_rounds: int = 30) -> int:
    """Four workers start together on fresh studies of `n_trials` trials until some worker has asked for
    a place already taken (a "surplus" trial) and at least `min_rounds` ran; every total must be exact."""
    surplus = 0
    with workers(4, tmp_path / "logs") as pool:
        for round_ in range(max_rounds):
            name = f"race-{round_}"
            pool.run({**load_study_config(url, n_trials=n_trials, name=name), "sampler": {"type": "random"}})
            surplus += check_exact(url, name, n_trials)["FAIL"]
            if surplus and round_ + 1 >= min_rounds:
                break
    assert surplus, f"no two workers raced for the last place in {max_rounds} rounds; the test proves nothing"
    return surplus


@pytest.mark.slow
def test_exact_total_when_four_workers_race_for_the_last_places_sqlite(tmp_path: Path) -> None:
    race_for_last_places(f"sqlite:///{tmp_path / 'race.db'}", tmp_path)


@pytest.mark.postgres
def test_exact_total_when_four_workers_race_for_the_last_places_postgres(pg_url: str, tmp_path: Path) -> None:
    race_for_last_places(pg_url, tmp_path)


@pytest.mark.postgres
@pytest.mark.slow
def test_cli_run_three_workers_on_postgres_trains_exactly_n_trials(pg_url: str, tmp_path: Path) -> None:
    study = {
        "name": "e2e-workers", "storage": pg_url, "n_trials": 6, "seed": 0, "device": "cpu",
        "sampler": {"type": "tpe", "n_startup_trials": 10}, "pruner": {"type": "none"},
        "data": {"dataset": "digits", "val_split": 0.25},
        "model": {"name": "mlp", "args": {"width": 16, "depth": 1}},
        "train": {"epochs": 1, "batch_size": 64},
        "space": {"lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
                  "dropout": {"type": "float", "low": 0.0, "high": 0.3}},
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    env = python_env()
    proc = subprocess.run([sys.executable, "-m", "hpsearch", "run", "study.yaml", "--workers", "3"], cwd=tmp_path,
                          env=env, text=True, capture_output=True, timeout=300)
    logs = "\n".join(p.read_text() for p in sorted((tmp_path / "runs" / "e2e-workers" / "logs").glob("*.log")))
    assert proc.returncode == 0, f"{proc.stderr}\n{logs}"
    storage = optuna.storages.RDBStorage(pg_url)
    try:
        trials = optuna.load_study(study_name="e2e-workers", storage=storage).get_trials(deepcopy=False)
    finally:
        storage.engine.dispose()
    states = Counter(t.state.name for t in trials)
    assert states["COMPLETE"] + states["PRUNED"] == 6, (states, logs)
    assert states["RUNNING"] == 0 and states["WAITING"] == 0, states
    assert {t.user_attrs.get("stop_reason") for t in trials if t.state == TrialState.FAIL} <= {"surplus"}
    assert len({t.user_attrs["slot"] for t in trials if "slot" in t.user_attrs}) >= 2, logs
    first = sorted(trials, key=lambda t: t.number)[:3]
    assert len({tuple(sorted(t.params.items())) for t in first}) == 3, [t.params for t in first]
    assert "database is locked" not in proc.stderr + logs


# Opens each storage URL that arrives on stdin and answers "ok" or the error: several of these
# processes given the same brand-new URL at once race exactly as workers starting together do.
OPEN_STORAGE = """
import sys
from hpsearch.config import WorkersConfig
from hpsearch.study import make_storage

print("ready", flush=True)
for line in sys.stdin:
    try:
        make_storage(line.strip(), "race.yaml", WorkersConfig()).engine.dispose()
        print("ok", flush=True)
    except Exception as exc:
        print("error: " + " ".join(str(exc).split()), flush=True)
"""


def open_together(new_url: Callable[[], ContextManager[str]], n_procs: int, rounds: int) -> list[str]:
    """`n_procs` processes open each of `rounds` fresh databases at the same moment; the errors."""
    env = python_env()
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_STORAGE], env=env, text=True, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(n_procs)]
    errors: list[str] = []
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", proc.communicate()
        for _ in range(rounds):
            with new_url() as url:
                for proc in procs:  # imports are done: the processes open the URL within microseconds
                    assert proc.stdin is not None
                    proc.stdin.write(url + "\n")
                    proc.stdin.flush()
                answers = [proc.stdout.readline().strip() for proc in procs if proc.stdout is not None]
            errors += [answer for answer in answers if answer != "ok"]
    finally:
        for proc in procs:
            try:
                proc.communicate(timeout=30)  # closes stdin: the loop ends, the process exits
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
    return errors


@pytest.mark.slow
def test_workers_opening_a_new_sqlite_file_together_all_succeed(tmp_path: Path) -> None:
    files = iter(range(1000))

    @contextmanager
    def new_file() -> Iterator[str]:
        yield f"sqlite:///{tmp_path / f'race{next(files)}.db'}"

    errors = open_together(new_file, n_procs=4, rounds=20)
    assert not errors, errors


@pytest.mark.postgres
def test_workers_opening_a_new_postgres_database_together_all_succeed(pg_url: str) -> None:
    import pg

    errors = open_together(pg.temporary_database, n_procs=4, rounds=4)
    assert not errors, errors


class ConnectionSampler:
    """Samples pg_stat_activity every 50 ms from a thread: connections of each `hpsearch:<pid>` to `database`."""

    def __init__(self, database: str) -> None:
        import threading

        import pg

        self.database, self.peaks, self.samples = database, Counter[str](), 0
        self.conn, _ = pg.admin_connection()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.conn.cursor() as cur:
            while not self.stopping.wait(0.05):  # sampling, not a timed assertion
                cur.execute("SELECT application_name, count(*) FROM pg_stat_activity WHERE datname = %s "
                            "AND application_name LIKE 'hpsearch:%%' GROUP BY 1", (self.database,))
                for app, count in cur.fetchall():
                    self.peaks[app] = max(self.peaks[app], count)
                self.samples += 1

    def __enter__(self) -> ConnectionSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        self.thread.join()
        self.conn.close()


@pytest.mark.postgres
def test_cli_run_two_workers_hold_one_postgres_connection_per_process(empty_pg_url: str, tmp_path: Path) -> None:
    """Issue #21: the heartbeat thread and the main thread take turns on their process's one connection.

    Every process of `hpsearch run --workers 2` (the supervisor and each worker, `application_name`
    hpsearch:<pid>) holds at most one connection at any sampled moment, opening included. The tables are made
    first: the process that creates them uses a second connection for a moment (Optuna stamps the schema
    version inside an open connection), once per study.
    """
    from sqlalchemy.engine import make_url

    optuna.storages.RDBStorage(empty_pg_url).engine.dispose()  # the tables, as any earlier run leaves them
    study = {"name": "conn", "storage": empty_pg_url, "n_trials": 6, "seed": 0, "device": "cpu",
             "sampler": {"type": "random"}, "pruner": {"type": "none"},
             "data": {"dataset": "digits", "val_split": 0.25}, "model": {"name": "mlp", "args": {"width": 16}},
             "train": {"epochs": 3, "batch_size": 64}, "workers": {"heartbeat_interval": 1, "grace_period": 10},
             "space": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    with ConnectionSampler(str(make_url(empty_pg_url).database)) as sampler:
        proc = subprocess.run([sys.executable, "-m", "hpsearch", "run", "study.yaml", "--workers", "2"],
                              cwd=tmp_path, env=python_env(), text=True, capture_output=True, timeout=300)
    logs = tmp_path / "runs" / "conn" / "logs"
    assert proc.returncode == 0, proc.stderr + "\n".join(p.read_text() for p in sorted(logs.glob("*.log")))
    workers = {f"hpsearch:{json.loads(p.read_text())['pid']}" for p in logs.glob("worker-*.json")}
    assert len(workers) == 2 and workers <= set(sampler.peaks), (workers, sampler.peaks, sampler.samples)
    assert max(sampler.peaks.values()) == 1, sampler.peaks  # a beat overlapping a trial's write made it 2
