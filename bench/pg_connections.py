"""PostgreSQL connections per hpsearch process during a real `hpsearch run --workers N` (small N: 1 or 2).

    PYTHONPATH=. nice -n 10 .venv/bin/python bench/pg_connections.py [--workers 1] [--trials 6] [--epochs 3]

A throw-away database (tests/pg.py), the tiny digits study of the tests with heartbeats every second; while it
runs, pg_stat_activity is sampled every 20 ms, grouped by application_name (`hpsearch:<pid>`, see
hpsearch/study/storage.py). Prints one JSON object: per process (the supervisor and each worker, from the workers'
status files) the peak and the time-weighted mean of its connections, and the workers' peak total per worker.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests")]

import pg  # noqa: E402
from conftest import TINY_STUDY  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args(argv)
    url, name = pg.create_database()
    conn, _ = pg.admin_connection()
    samples: list[Counter[str]] = []
    stop = threading.Event()

    def sample() -> None:
        with conn.cursor() as cur:
            while not stop.is_set():
                cur.execute("SELECT application_name, count(*) FROM pg_stat_activity WHERE datname = %s "
                            "GROUP BY 1", (name,))
                samples.append(Counter({app: n for app, n in cur.fetchall()}))
                time.sleep(0.02)

    with tempfile.TemporaryDirectory() as tmp:
        study = {**TINY_STUDY, "n_trials": args.trials, "storage": url, "train": {"epochs": args.epochs,
                 "batch_size": 64}, "workers": {"heartbeat_interval": 1, "grace_period": 10}}
        Path(tmp, "study.yaml").write_text(yaml.safe_dump(study))
        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "hpsearch", "run", "study.yaml", "--workers", str(args.workers)],
                              cwd=tmp, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        stop.set()
        thread.join()
        workers = {f"hpsearch:{json.loads(p.read_text())['pid']}" for p in Path(tmp, "runs", "tiny", "logs").glob("worker-*.json")}
    conn.close()
    pg.drop_database(name)
    per_app: dict[str, list[int]] = defaultdict(list)
    apps = {app for s in samples for app in s}
    for s in samples:
        for app in apps:
            per_app[app].append(s.get(app, 0))
    worker_total = [sum(s.get(w, 0) for w in workers) for s in samples]
    result = {
        "workers": args.workers, "trials": args.trials, "epochs": args.epochs, "exit": done.returncode,
        "wall_s": round(wall, 1), "samples": len(samples),
        "processes": {("worker " if app in workers else "other ") + app: {
            "peak": max(v), "mean_while_connected": round(sum(v) / max(1, sum(1 for x in v if x)), 2)}
            for app, v in sorted(per_app.items())},
        "workers_peak_per_worker": round(max(worker_total, default=0) / max(1, len(workers)), 2),
        "loadavg_1m": round(os.getloadavg()[0], 1),
    }
    if done.returncode:
        result["stderr_tail"] = done.stderr[-2000:]
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
