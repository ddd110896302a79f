"""Many workers on one PostgreSQL: throughput, overhead, ask/tell latency as the study grows, connections, exactness.

    PYTHONPATH=. nice -n 10 .venv/bin/python bench/scale.py [--workers 8,32,64] [--trials 400,800,1000]
        [--grow-workers 16] [--grow-to 1000,5000,10000,20000] [--grow-trials 64] [--own-server | --shared-server]

Each run starts N real worker processes (`hpsearch.worker.run_worker`, the worker loop `hpsearch
worker` runs, with hpsearch's own storage: `hpsearch.study.open_study`) on a fresh database. The
objective draws the quickstart's space, sleeps 0.5-2 s in 3 "epochs" and reports each; no torch
runs (the processes come from one forkserver that imported hpsearch.worker once, so 64 workers do
not each pay torch's import; the memory per worker is what one process adds: PSS and private, USS).

Per run: trials/s, overhead per trial per worker (a worker's time outside the objective's sleep,
divided by its trials; wall time, so a busy machine inflates it) and, per call, the wall and the CPU
time (the worker's main thread) it costs per trial, p50/p99 of `study.ask` and `study.tell`, peak
connections to the database (pg_stat_activity, sampled every 0.1 s) against max_connections, and exactness (finished == n,
none RUNNING, no trial number twice). The growth run fills one study with pre-made finished trials
(inserted in bulk through Optuna's table models; like a real trial: params, 3 intermediate values,
a history user attr) up to
each `--grow-to` size, runs `--grow-trials` real trials there, and times `hpsearch status` and
`hpsearch report` on the last size. By default the server is one of our own (tests/pg.py's
Cluster, default max_connections, fsync on), so 64 workers never crowd out other users of the
shared server on 5432. Prints JSON lines and a JSON summary. Not a test.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import optuna  # noqa: E402
import psycopg  # noqa: E402
import yaml  # noqa: E402

import pg  # noqa: E402
from hpsearch.config import build_config  # noqa: E402

QUICKSTART = ROOT / "studies" / "quickstart.yaml"
EPOCHS = 3


def study_mapping(url: str, n_trials: int) -> dict[str, Any]:
    """The quickstart's sampler and space on `url` (TPE, 8 start-up trials), no pruner."""
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw.update(name="scale", storage=url, n_trials=n_trials, pruner={"type": "none"}, device="cpu")
    raw["train"] = {"epochs": EPOCHS}
    return raw


def _memory_kb() -> dict[str, int]:
    """This process's PSS (its own pages plus its share of shared ones) and private memory (USS), in kB."""
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            fields[name] = int(rest.split()[0])
    return {"pss": fields.get("Pss", 0), "private": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)}


def worker(raw: dict[str, Any], slot: int, ready: Any, go: Any, results: Any) -> None:
    """One worker process: open the study with its own seed, wait for the start signal, run to the total."""
    from hpsearch import worker as hw
    from hpsearch.space import suggest
    from hpsearch.study import open_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = build_config(raw, source="scale.yaml")
    study = open_study(cfg, sampler_seed=10_000 + slot)
    rng = random.Random(slot)
    timings: dict[str, list[tuple[int, float]]] = {"ask": [], "tell": []}
    slept = [0.0]
    last_tell = [0.0]
    for name in ("ask", "tell"):
        inner = getattr(study, name)

        def timed(*args: Any, _inner: Any = inner, _name: str = name, **kwargs: Any) -> Any:
            start, start_cpu = time.perf_counter(), time.thread_time()
            result = _inner(*args, **kwargs)
            number = result.number if _name == "ask" else args[0].number
            timings[_name].append((number, time.perf_counter() - start))
            cpu[_name] += time.thread_time() - start_cpu
            if _name == "tell":
                last_tell[0] = time.perf_counter()
            return result

        setattr(study, name, timed)

    spent: dict[str, float] = {"claimed": 0.0, "surplus_check": 0.0, "stale_check": 0.0, "suggest": 0.0, "report": 0.0}
    cpu: dict[str, float] = dict.fromkeys([*spent, "ask", "tell"], 0.0)
    helpers = (("claimed", "_claimed"), ("surplus_check", "_is_surplus"), ("stale_check", "fail_stale_trials"))
    for label, name in helpers:
        helper = getattr(hw, name)

        def counted(*args: Any, _helper: Any = helper, _label: str = label, **kwargs: Any) -> Any:
            start, start_cpu = time.perf_counter(), time.thread_time()
            try:
                return _helper(*args, **kwargs)
            finally:
                spent[_label] += time.perf_counter() - start
                cpu[_label] += time.thread_time() - start_cpu

        setattr(hw, name, counted)

    def objective(trial: optuna.Trial) -> float:
        start, start_cpu = time.perf_counter(), time.thread_time()
        params = suggest(trial, cfg)
        spent["suggest"] += time.perf_counter() - start
        cpu["suggest"] += time.thread_time() - start_cpu
        total = rng.uniform(0.5, 2.0)
        for epoch in range(EPOCHS):
            time.sleep(total / EPOCHS)
            start, start_cpu = time.perf_counter(), time.thread_time()
            trial.report(params["lr"] * (epoch + 1), epoch)
            spent["report"] += time.perf_counter() - start
            cpu["report"] += time.thread_time() - start_cpu
        slept[0] += total
        return params["lr"] + params["dropout"]

    ready.put(slot)
    go.wait()
    start, start_process_cpu = time.perf_counter(), time.process_time()
    outcome = hw.run_worker(study, objective, cfg.n_trials, max_retries=cfg.workers.max_retries, poll_s=0.2,
                            grace_period=cfg.workers.grace_period)
    busy = last_tell[0] - start  # up to its last tell: waiting for the others' last trials is no overhead
    spent.update(ask=sum(s for _, s in timings["ask"]), tell=sum(s for _, s in timings["tell"]))
    results.put({"slot": slot, "run_s": busy, "slept_s": slept[0], "trials": len(outcome.trials),
                 "timings": timings, "memory_kb": _memory_kb(), "spent": spent, "cpu": cpu,
                 "process_cpu_s": time.process_time() - start_process_cpu})


class Connections(threading.Thread):
    """Samples the database's connections (pg_stat_activity) every 0.1 s; keeps the peak."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        parsed = __import__("sqlalchemy").engine.make_url(url)
        self.conninfo = dict(host=parsed.host, port=parsed.port, user=parsed.username, dbname="postgres")
        self.database = parsed.database
        self.peak = 0
        self.stopping = threading.Event()
        with psycopg.connect(**self.conninfo, autocommit=True) as conn:
            self.max_connections = int(conn.execute("SHOW max_connections").fetchone()[0])

    def run(self) -> None:
        with psycopg.connect(**self.conninfo, autocommit=True) as conn:
            while not self.stopping.wait(0.1):
                (count,) = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                                        (self.database,)).fetchone()
                self.peak = max(self.peak, count)

    def stop(self) -> int:
        self.stopping.set()
        self.join(timeout=10)
        return self.peak


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50_ms": None, "p99_ms": None}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {"n": len(values), "p50_ms": round(1000 * statistics.median(ordered), 1), "p99_ms": round(1000 * p99, 1)}


def _exactness(url: str, n_trials: int) -> dict[str, Any]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            states = dict(conn.execute(text("SELECT state, count(*) FROM trials GROUP BY state")).all())
            duplicates = conn.execute(text("SELECT count(*) FROM (SELECT study_id, number FROM trials "
                                           "GROUP BY study_id, number HAVING count(*) > 1) d")).scalar()
    finally:
        engine.dispose()
    states = {getattr(k, "name", str(k)): v for k, v in states.items()}
    finished = states.get("COMPLETE", 0) + states.get("PRUNED", 0)
    return {"finished": finished, "states": states, "duplicate_numbers": duplicates,
            "exact": finished == n_trials and states.get("RUNNING", 0) == 0 and duplicates == 0}


def run_workers(ctx: Any, raw: dict[str, Any], n_workers: int, url: str) -> dict[str, Any]:
    """Start `n_workers` processes on the study in `raw`, run them to its n_trials; the measurements."""
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=worker, args=(raw, slot, ready, go, results)) for slot in range(n_workers)]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=900)
    connections = Connections(url)
    connections.start()
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    go.set()
    rows = [results.get(timeout=7200) for _ in procs]
    wall = time.perf_counter() - start
    peak = connections.stop()
    for proc in procs:
        proc.join(timeout=120)
    trials = sum(r["trials"] for r in rows)
    overhead = [(r["run_s"] - r["slept_s"]) / r["trials"] for r in rows if r["trials"]]
    phases = {k: round(1000 * sum(r["spent"][k] for r in rows) / max(trials, 1), 1) for k in rows[0]["spent"]}
    cpu = {k: round(1000 * sum(r["cpu"][k] for r in rows) / max(trials, 1), 1) for k in rows[0]["cpu"]}
    return {"wall_s": round(wall, 1), "asked_trials": trials, "trials_per_s": round(trials / wall, 2),
            "overhead_ms_per_trial_per_worker": round(1000 * statistics.mean(overhead), 1),
            "overhead_ms_worst_worker": round(1000 * max(overhead), 1), "overhead_ms_per_trial_by_call": phases,
            # CPU time, which the machine's load does not inflate: what one trial costs a worker.
            "worker_cpu_ms_per_trial": round(1000 * sum(r["process_cpu_s"] for r in rows) / max(trials, 1), 1),
            "cpu_ms_per_trial_by_call": cpu,
            "peak_connections": peak, "max_connections": connections.max_connections,
            "connections_per_worker": round(peak / n_workers, 2),
            "pss_mb_per_worker": round(statistics.mean(r["memory_kb"]["pss"] for r in rows) / 1024, 1),
            "private_mb_per_worker": round(statistics.mean(r["memory_kb"]["private"] for r in rows) / 1024, 1),
            "loadavg_1m_before": round(load_before, 1), "loadavg_1m_after": round(os.getloadavg()[0], 1),
            "exit_codes": sorted({p.exitcode for p in procs}), "timings": [r["timings"] for r in rows]}


def _latency(timings: list[dict[str, list[tuple[int, float]]]], low: int = 0) -> dict[str, Any]:
    return {name: _percentiles([s for t in timings for number, s in t[name] if number >= low])
            for name in ("ask", "tell")}


def _dispose(study: optuna.Study) -> None:
    """Close this (measuring) process's connections: only the workers' count."""
    storage = study._storage
    getattr(storage, "_backend", storage).engine.dispose()  # Optuna wraps an RDBStorage in a cache


def _created(raw: dict[str, Any]) -> None:
    """Create the study as `hpsearch run` does before it starts workers, then let go of the connection."""
    from hpsearch.study import open_study

    _dispose(open_study(build_config(raw, source="scale.yaml")))


def scale_run(ctx: Any, url: str, n_workers: int, n_trials: int) -> dict[str, Any]:
    raw = study_mapping(url, n_trials)
    _created(raw)
    measured = run_workers(ctx, raw, n_workers, url)
    timings = measured.pop("timings")
    return {"run": "scale", "workers": n_workers, "trials": n_trials, **measured, **_latency(timings),
            **_exactness(url, n_trials)}


def _premade(rng: random.Random, number: int) -> optuna.trial.FrozenTrial:
    """A finished trial like a real one: the quickstart's params, 3 intermediate values, a history."""
    optimizer = rng.choice(["sgd", "adam", "adamw"])
    params: dict[str, Any] = {"lr": 10 ** rng.uniform(-4, -1.53), "batch_size": rng.choice([32, 64, 128]),
                              "dropout": rng.uniform(0, 0.5), "weight_decay": 10 ** rng.uniform(-6, -2),
                              "optimizer": optimizer, "width": rng.choice([64, 128, 256])}
    dists: dict[str, Any] = {
        "lr": optuna.distributions.FloatDistribution(1e-4, 3e-2, log=True),
        "batch_size": optuna.distributions.CategoricalDistribution([32, 64, 128]),
        "dropout": optuna.distributions.FloatDistribution(0.0, 0.5),
        "weight_decay": optuna.distributions.FloatDistribution(1e-6, 1e-2, log=True),
        "optimizer": optuna.distributions.CategoricalDistribution(["sgd", "adam", "adamw"]),
        "width": optuna.distributions.CategoricalDistribution([64, 128, 256])}
    if optimizer == "sgd":
        params["momentum"] = rng.uniform(0.8, 0.99)
        dists["momentum"] = optuna.distributions.FloatDistribution(0.8, 0.99)
    params["lr"] = min(params["lr"], 3e-2)
    value = rng.uniform(0.5, 0.99)
    history = [{"epoch": e + 1, "train_loss": 1.0 / (e + 1), "val_accuracy": value * (e + 1) / EPOCHS,
                "epoch_time": rng.uniform(0.2, 0.7)} for e in range(EPOCHS)]
    return optuna.trial.create_trial(params=params, distributions=dists, value=value,
                                     intermediate_values={e: value * (e + 1) / EPOCHS for e in range(EPOCHS)},
                                     user_attrs={"history": history, "worker": f"premade:{number % 64}",
                                                 "slot": number % 64, "stop_reason": "complete"})


def _bulk_add(url: str, study_id: int, trials: list[optuna.trial.FrozenTrial], first_number: int) -> None:
    """Insert finished trials in one transaction through Optuna's own table models (add_trials does one per trial,
    ~8 trials/s on a busy 2-core machine: 40 minutes for 20,000)."""
    import datetime as dt

    from optuna import distributions as od
    from optuna.storages._rdb import models
    from sqlalchemy import create_engine, orm

    engine = create_engine(url)
    now = dt.datetime.now()
    finite = models.TrialValueModel.TrialValueType.FINITE
    step_finite = models.TrialIntermediateValueModel.TrialIntermediateValueType.FINITE
    try:
        with orm.Session(engine) as session:
            for offset, trial in enumerate(trials):
                row = models.TrialModel(number=first_number + offset, study_id=study_id, state=trial.state)
                row.datetime_start, row.datetime_complete = now - dt.timedelta(seconds=2), now
                dists = trial.distributions
                row.params = [models.TrialParamModel(param_name=k, param_value=dists[k].to_internal_repr(v),
                                                     distribution_json=od.distribution_to_json(dists[k]))
                              for k, v in trial.params.items()]
                row.values = [models.TrialValueModel(objective=0, value=trial.value, value_type=finite)]
                row.intermediate_values = [models.TrialIntermediateValueModel(step=k, intermediate_value=v,
                                                                              intermediate_value_type=step_finite)
                                           for k, v in trial.intermediate_values.items()]
                row.user_attributes = [models.TrialUserAttributeModel(key=k, value_json=json.dumps(v))
                                       for k, v in trial.user_attrs.items()]
                session.add(row)
            session.commit()
    finally:
        engine.dispose()


def _timed_cli(verb: str, study_file: Path, url: str, cwd: Path, *extra: str) -> float:
    env = {**os.environ, "HPSEARCH_STORAGE": url, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "hpsearch", verb, str(study_file), *extra], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"hpsearch {verb} failed: {done.stderr.strip()[-500:]}")
    return round(time.perf_counter() - start, 2)


def grow_run(ctx: Any, url: str, n_workers: int, sizes: list[int], per_stage: int) -> list[dict[str, Any]]:
    """Fill the study to each size with pre-made trials, run `per_stage` real ones there; time status/report."""
    from hpsearch.study import open_study

    rng = random.Random(0)
    rows = []
    for size in sizes:
        raw = study_mapping(url, size + per_stage)
        study = open_study(build_config(raw, source="scale.yaml"))
        have = len(study.get_trials(deepcopy=False))
        study_id = study._study_id
        _dispose(study)
        fill_start = time.perf_counter()
        for first in range(have, size, 1000):
            _bulk_add(url, study_id, [_premade(rng, n) for n in range(first, min(size, first + 1000))], first)
        fill_s = time.perf_counter() - fill_start
        measured = run_workers(ctx, raw, n_workers, url)
        timings = measured.pop("timings")
        row = {"run": "grow", "workers": n_workers, "study_size": size, "real_trials": per_stage,
               "fill_s": round(fill_s, 1), **measured, **_latency(timings, low=size),
               **_exactness(url, size + per_stage)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    with tempfile.TemporaryDirectory(prefix="hpsearch-scale-") as tmp:
        study_file = Path(tmp) / "scale.yaml"
        raw = study_mapping(url, sizes[-1] + per_stage)
        raw.pop("storage")
        study_file.write_text(yaml.safe_dump(raw, sort_keys=False))
        rows[-1]["status_s"] = _timed_cli("status", study_file, url, Path(tmp))
        rows[-1]["report_s"] = _timed_cli("report", study_file, url, Path(tmp), "--out", str(Path(tmp) / "r.html"))
    return rows


class OwnServer(pg.Cluster):
    """tests/pg.py's throw-away server, with fsync on (a benchmark must pay what a real server pays)."""

    def start(self) -> None:
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses={pg.LOCAL}"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "-t", "60", "start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="8,32,64", help="comma list of worker counts (default 8,32,64)")
    parser.add_argument("--trials", default="400,800,1000", help="trials per run, one per worker count")
    parser.add_argument("--grow-workers", type=int, default=16, help="workers of the growth run (0: skip it)")
    parser.add_argument("--grow-to", default="1000,5000,10000,20000", help="study sizes of the growth run")
    parser.add_argument("--grow-trials", type=int, default=64, help="real trials at each size")
    parser.add_argument("--shared-server", action="store_true", help="use the server on 127.0.0.1:5432 instead")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    workers = [int(w) for w in args.workers.split(",") if w]
    trials = [int(t) for t in args.trials.split(",") if t]
    if len(trials) != len(workers):
        parser.error("--trials needs one number per --workers entry")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["hpsearch.worker", "hpsearch.space", "hpsearch.study"])
    server = None if args.shared_server else OwnServer()
    header = {"config": {"python": platform.python_version(), "optuna": optuna.__version__, "cpus": os.cpu_count(),
                         "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                         "server": "shared 127.0.0.1:5432" if server is None else "own (fsync on)",
                         "argv": sys.argv[1:], "date": time.strftime("%Y-%m-%d %H:%M")}}
    print(json.dumps(header), flush=True)
    rows: list[dict[str, Any]] = []
    try:
        def database() -> str:
            return server.create_database() if server is not None else pg.create_database("hpsearch_bench")[0]

        for n_workers, n_trials in zip(workers, trials):
            row = scale_run(ctx, database(), n_workers, n_trials)
            print(json.dumps(row), flush=True)
            rows.append(row)
        if args.grow_workers:
            rows += grow_run(ctx, database(), args.grow_workers, [int(s) for s in args.grow_to.split(",")],
                             args.grow_trials)
    finally:
        if server is not None:
            server.close()
    keys = ("workers", "trials_per_s", "overhead_ms_per_trial_per_worker", "connections_per_worker",
            "peak_connections", "exact")
    summary = [{k: r.get(k) for k in (*keys, "study_size", "ask", "tell", "status_s", "report_s") if k in r}
               for r in rows]
    print(json.dumps({"summary": summary}), flush=True)
    return 0 if all(r["exact"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
