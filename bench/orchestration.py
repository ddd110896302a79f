"""Orchestration overhead per trial: sampling + storage, with an objective that only suggests and reports.

    PYTHONPATH=. .venv/bin/python bench/orchestration.py [--trials 1000] [--workers 4]
        [--backends sqlite,postgres] [--samplers tpe,random] [--session-sql SQL] [--cprofile DIR]

For each backend x sampler: a fresh study (a new SQLite file, or a new PostgreSQL database on
127.0.0.1:5432 made and dropped with tests/pg.py) is created in this process, as `hpsearch run`
does before it starts workers; then `--workers` spawned processes each open it with their own
sampler seed and run `hpsearch.worker.run_worker` until `--trials` trials finished study-wide. The
objective draws the space (lr, dropout, weight_decay, optimizer), reports two steps, sets one user
attr and returns. Wall time runs from the moment every worker is ready (study opened, imports
done) to the last worker's return. Each run checks the total is exact and nothing is left running.

Prints one JSON line per run and a JSON summary line. Each run also says where a worker's time
goes per trial (run_worker's loop phases, timed by wrapping its helpers), how many SQL statements
and commits one trial costs, and how long workers waited for locks (SQLite BEGIN IMMEDIATE,
PostgreSQL's study-row lock). `--cprofile DIR` adds per-worker cProfile dumps (slower);
`--session-sql` tries a connection setting (e.g. "PRAGMA synchronous=NORMAL"). Not a test.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import multiprocessing as mp
import os
import platform
import pstats
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import optuna  # noqa: E402
import sqlalchemy  # noqa: E402

import pg  # noqa: E402
from hpsearch.config import StudyConfig, build_config  # noqa: E402


def study_mapping(url: str, n_trials: int, sampler: str) -> dict[str, Any]:
    """The benchmark study: a four-parameter space like the quickstart's, no pruner."""
    sampler_cfg: dict[str, Any] = {"type": "tpe", "n_startup_trials": 10} if sampler == "tpe" else {"type": sampler}
    return {
        "name": f"orchestration-{sampler}",
        "storage": url,
        "n_trials": n_trials,
        "seed": 0,
        "sampler": sampler_cfg,
        "pruner": {"type": "none"},
        "train": {"epochs": 2, "batch_size": 32},
        "space": {
            "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "dropout": {"type": "float", "low": 0.0, "high": 0.5},
            "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
            "optimizer": {"type": "categorical", "choices": ["sgd", "adamw"]},
        },
    }


# run_worker's loop phases, timed by wrapping the module-level helpers it calls (a few µs per call).
LOOP_PHASES = ("fail_stale_trials", "_claimed", "_ask", "_is_surplus", "_run_one")


class Meter:
    """Per-phase wall time and SQL statements in one worker; lock waits from the statements' own timing."""

    def __init__(self) -> None:
        self.phase = "other"
        self.seconds: Counter[str] = Counter()
        self.statements: Counter[str] = Counter()
        self.lock_wait_s = 0.0
        self.commits = 0

    def wrap(self, module: Any, name: str, label: str) -> None:
        inner = getattr(module, name, None)
        if inner is None:  # run_worker changed shape: say so instead of timing less than it claims
            raise SystemExit(f"bench/orchestration.py: {module.__name__}.{name} no longer exists; "
                             f"update LOOP_PHASES to the helpers run_worker calls now")

        def timed(*args: Any, **kwargs: Any) -> Any:
            outer, self.phase = self.phase, label
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - start
                self.phase = outer

        setattr(module, name, timed)

    def attach(self, engine: sqlalchemy.engine.Engine) -> None:
        @sqlalchemy.event.listens_for(engine, "before_cursor_execute")
        def _before(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
            self.statements[self.phase] += 1
            conn.info["bench_t0"] = time.perf_counter()

        @sqlalchemy.event.listens_for(engine, "after_cursor_execute")
        def _after(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
            # SQLite: BEGIN IMMEDIATE blocks while another worker holds the write lock.
            # PostgreSQL: trial creation locks the study row (SELECT ... FOR UPDATE).
            if statement.startswith("BEGIN") or "FOR UPDATE" in statement:
                self.lock_wait_s += time.perf_counter() - conn.info.get("bench_t0", time.perf_counter())

        @sqlalchemy.event.listens_for(engine, "commit")
        def _commit(conn: Any) -> None:
            self.commits += 1


def _apply_session_sql(engine: sqlalchemy.engine.Engine, session_sql: str) -> None:
    """Run `session_sql` on every new connection (an experiment knob, e.g. PRAGMA synchronous=NORMAL)."""

    @sqlalchemy.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(session_sql)
        cursor.close()
        if hasattr(dbapi_connection, "commit") and not getattr(dbapi_connection, "autocommit", True):
            dbapi_connection.commit()

    engine.dispose()


def worker(raw: dict[str, Any], slot: int, ready: Any, go: Any, results: Any, options: dict[str, Any]) -> None:
    """One worker process: open the study with its own seed, wait for the start signal, run to the total."""
    from hpsearch import worker as hw
    from hpsearch.space import suggest
    from hpsearch.study import open_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg: StudyConfig = build_config(raw, source="orchestration.yaml")
    study = open_study(cfg, sampler_seed=10_000 + slot)
    engine = getattr(study._storage, "_backend", study._storage).engine
    if options["session_sql"]:
        _apply_session_sql(engine, options["session_sql"])
    meter = Meter()
    meter.attach(engine)
    for name in LOOP_PHASES:
        meter.wrap(hw, name, name.lstrip("_"))

    def objective(trial: optuna.Trial) -> float:
        outer, meter.phase = meter.phase, "objective"
        start = time.perf_counter()
        params = suggest(trial, cfg)
        trial.report(0.5, 0)
        trial.report(0.25, 1)
        trial.set_user_attr("slot", slot)
        meter.seconds["objective"] += time.perf_counter() - start
        meter.phase = outer
        return params["lr"] + params["dropout"]

    ready.put(slot)
    go.wait()
    profiler = cProfile.Profile() if options["cprofile"] else None
    start = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    outcome = hw.run_worker(study, objective, cfg.n_trials, max_retries=cfg.workers.max_retries, poll_s=0.01)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(str(Path(options["cprofile"]) / f"{raw['name']}-{slot}.prof"))
    elapsed = time.perf_counter() - start
    results.put({"slot": slot, "run_s": elapsed, "trials": len(outcome.trials), "seconds": dict(meter.seconds),
                 "statements": dict(meter.statements), "lock_wait_s": meter.lock_wait_s, "commits": meter.commits})
    engine.dispose()


def one_run(backend: str, url: str, sampler: str, n_trials: int, n_workers: int,
            options: dict[str, Any]) -> dict[str, Any]:
    """Create the study here, run `n_workers` processes on it, check exactness; one result record."""
    from hpsearch.study import open_study

    raw = study_mapping(url, n_trials, sampler)
    cfg = build_config(raw, source="orchestration.yaml")
    study = open_study(cfg)  # as `hpsearch run` does before it starts workers
    ctx = mp.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=worker, args=(raw, slot, ready, go, results, options)) for slot in range(n_workers)]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=300)
    start = time.perf_counter()
    go.set()
    records = [results.get(timeout=3600) for _ in procs]
    wall = time.perf_counter() - start
    for proc in procs:
        proc.join()
    codes = [proc.exitcode for proc in procs]
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials)
    finished = counts["COMPLETE"] + counts["PRUNED"]
    failed = Counter(str(t.user_attrs.get("stop_reason")) for t in trials if t.state.name == "FAIL")
    getattr(study._storage, "_backend", study._storage).engine.dispose()
    run_trials = len(trials)  # asked trials, surplus included
    seconds: Counter[str] = Counter()
    statements: Counter[str] = Counter()
    for r in records:
        seconds.update(r["seconds"])
        statements.update(r["statements"])
    worker_s = sum(r["run_s"] for r in records)
    seconds["run_one.tell_and_heartbeat"] = seconds["run_one"] - seconds["objective"]
    seconds["run_one.objective"] = seconds.pop("objective")
    statements["run_one.objective"] = statements.pop("objective", 0)
    statements["run_one.tell_and_heartbeat"] = statements.pop("run_one", 0)
    seconds["idle_or_other"] = worker_s - sum(seconds[p.lstrip("_")] for p in LOOP_PHASES)
    row: dict[str, Any] = {
        "backend": backend, "sampler": sampler, "workers": n_workers, "trials": n_trials,
        "session_sql": options["session_sql"], "loadavg_1m_before": options["loadavg"],
        "wall_s": round(wall, 2), "trials_per_s": round(finished / wall, 1),
        "ms_per_trial_per_worker": round(1000 * wall * n_workers / finished, 1),
        "finished": finished, "states": {k: v for k, v in counts.items() if v},
        "surplus": failed.pop("surplus", 0), "other_failures": dict(failed), "exit_codes": codes,
        "exact": finished == n_trials and counts["RUNNING"] == 0 and not failed and all(c == 0 for c in codes),
        "per_worker_trials": [r["trials"] for r in sorted(records, key=lambda r: r["slot"])],
        "sql_statements_per_trial": round(sum(statements.values()) / run_trials, 1),
        "commits_per_trial": round(sum(r["commits"] for r in records) / run_trials, 1),
        "lock_wait_ms_per_trial": round(1000 * sum(r["lock_wait_s"] for r in records) / run_trials, 1),
        # Summed over workers, per asked trial: where one worker's time per trial goes.
        "ms_per_trial_by_phase": {k: round(1000 * v / run_trials, 1) for k, v in sorted(seconds.items())
                                  if k != "run_one"},
        "statements_per_trial_by_phase": {k: round(v / run_trials, 1) for k, v in sorted(statements.items())},
    }
    return row


def _sqlite_url(directory: str, sampler: str) -> str:
    return f"sqlite:///{Path(directory) / f'orchestration-{sampler}.db'}"


def _top_functions(directory: str, limit: int = 12) -> list[dict[str, Any]]:
    """The functions with the most own time over every worker's cProfile dump in `directory`."""
    files = sorted(Path(directory).glob("*.prof"))
    stats = pstats.Stats(*map(str, files))
    rows = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:limit]  # type: ignore[attr-defined]
    return [{"function": f"{Path(filename).name}:{line}({func})", "calls": nc, "tottime_s": round(tt, 2),
             "cumtime_s": round(ct, 2)} for (filename, line, func), (_cc, nc, tt, ct, _callers) in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000, help="study-wide total of finished trials (default 1000)")
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument("--backends", default="sqlite,postgres", help="comma list of sqlite, postgres")
    parser.add_argument("--samplers", default="tpe,random", help="comma list of sampler types (default tpe,random)")
    parser.add_argument("--session-sql", default="", metavar="SQL",
                        help="experiment: run SQL on every worker connection, e.g. 'PRAGMA synchronous=NORMAL'")
    parser.add_argument("--cprofile", metavar="DIR", help="also cProfile every worker into DIR; prints top functions")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.cprofile:
        Path(args.cprofile).mkdir(parents=True, exist_ok=True)
    header = {"config": {"python": platform.python_version(), "optuna": optuna.__version__,
                         "sqlalchemy": sqlalchemy.__version__, "machine": platform.machine(),
                         "cpus": os.cpu_count(), "trials": args.trials, "workers": args.workers,
                         "session_sql": args.session_sql, "cprofile": args.cprofile}}
    print(json.dumps(header), flush=True)
    rows = []
    for backend in args.backends.split(","):
        for sampler in args.samplers.split(","):
            options = {"session_sql": args.session_sql, "cprofile": args.cprofile,
                       "loadavg": round(os.getloadavg()[0], 2)}
            if backend == "sqlite":
                with tempfile.TemporaryDirectory(prefix="hpsearch-orch-") as tmp:
                    row = one_run(backend, _sqlite_url(tmp, sampler), sampler, args.trials, args.workers, options)
            elif backend == "postgres":
                try:
                    with pg.temporary_database("hpsearch_bench") as url:
                        row = one_run(backend, url, sampler, args.trials, args.workers, options)
                except pg.PostgresUnavailable as exc:
                    print(json.dumps({"backend": backend, "sampler": sampler, "skipped": str(exc)}), flush=True)
                    continue
            else:
                parser.error(f"unknown backend {backend!r} (sqlite, postgres)")
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.cprofile:
        print(json.dumps({"cprofile_top_tottime": _top_functions(args.cprofile)}), flush=True)
    keys = ("wall_s", "trials_per_s", "ms_per_trial_per_worker", "exact", "surplus")
    summary = {f"{r['backend']}/{r['sampler']}": {k: r[k] for k in keys} for r in rows}
    print(json.dumps({"summary": summary}), flush=True)
    return 0 if all(r["exact"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
