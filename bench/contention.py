"""How a run degrades on a busy CPU: the quickstart idle and beside N busy processes, old and new thread policy.

Runs `hpsearch run studies/quickstart.yaml --n-trials N` as a real command (a fresh output folder
each time), once on its own and once beside `--busy` processes that each keep a core busy (`yes`
into /dev/null, started and killed here), for each policy, interleaved:

    python bench/contention.py [--trials 6] [--busy 2] [--repeats 1] [--limit 150] [--json out.jsonl]

Policies (the environment of the run; OMP_*, GOMP_* and MKL_NUM_THREADS are cleared first):
  old   GOMP_SPINCOUNT=300000: libgomp's default spin-then-sleep and torch's default threads, as before
  new   nothing set: this checkout's defaults (idle OpenMP threads sleep at once)
  new1  the same with OMP_NUM_THREADS=1 (what one thread gives on this small model)

A run still going after --limit seconds is stopped and counted as at least that long (ratios
then read ">="). Prints one JSON line per run (with the load average before and after, since a
shared machine is never idle) and a table of medians: loaded / idle is the number to watch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STUDY = ROOT / "studies" / "quickstart.yaml"
POLICIES = {"old": {"GOMP_SPINCOUNT": "300000"}, "new": {}, "new1": {"OMP_NUM_THREADS": "1"}}
CLEARED = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS", "OMP_DISPLAY_ENV")


def _env(policy: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**env, **POLICIES[policy]}


def _busy(count: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL) for _ in range(count)]


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.kill()
        proc.wait()


def one_run(policy: str, busy: int, trials: int, limit: float) -> dict[str, object]:
    folder = Path(tempfile.mkdtemp(prefix="hpsearch-contention-"))
    shutil.copy(STUDY, folder / "quickstart.yaml")
    argv = [sys.executable, "-m", "hpsearch", "run", "quickstart.yaml", "--n-trials", str(trials),
            "--output-dir", str(folder / "out")]
    load_before = os.getloadavg()
    hogs = _busy(busy)
    try:
        start = time.monotonic()
        try:
            done = subprocess.run(argv, cwd=folder, env=_env(policy), capture_output=True, text=True, timeout=limit,
                                  check=False)
            code, stopped = done.returncode, False
            if code != 0:
                raise SystemExit(f"{policy} run failed ({code}): {done.stderr[-2000:]}")
        except subprocess.TimeoutExpired:
            code, stopped = None, True
        wall = time.monotonic() - start
    finally:
        _stop(hogs)
        shutil.rmtree(folder, ignore_errors=True)
    return {"policy": policy, "busy": busy, "trials": trials, "wall_s": round(wall, 2), "stopped_at_limit": stopped,
            "returncode": code, "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()]}


def _median(rows: list[dict[str, object]]) -> tuple[float, bool]:
    return statistics.median(float(r["wall_s"]) for r in rows), any(r["stopped_at_limit"] for r in rows)


def table(rows: list[dict[str, object]], busy: int) -> str:
    lines = [f"{'policy':8} {'idle s':>9} {f'busy={busy} s':>10} {'loaded/idle':>12}"]
    for policy in dict.fromkeys(str(r["policy"]) for r in rows):
        idle, idle_cut = _median([r for r in rows if r["policy"] == policy and r["busy"] == 0])
        loaded, loaded_cut = _median([r for r in rows if r["policy"] == policy and r["busy"] == busy])
        ratio = f"{'>=' if loaded_cut else ''}{loaded / idle:.1f}x"
        lines.append(f"{policy:8} {idle:>8.1f}{'+' if idle_cut else ' '} {loaded:>9.1f}{'+' if loaded_cut else ' '}"
                     f" {ratio:>12}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=6, help="n_trials of each quickstart run")
    parser.add_argument("--busy", type=int, default=2, help="busy processes beside the loaded runs")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of every (policy, load) pair")
    parser.add_argument("--limit", type=float, default=150.0, help="seconds after which a run is stopped")
    parser.add_argument("--policies", default="old,new,new1", help=f"comma-separated, of {', '.join(POLICIES)}")
    parser.add_argument("--json", type=Path, help="also append the JSON lines to this file")
    args = parser.parse_args(argv)
    policies = args.policies.split(",")
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        parser.error(f"unknown policy {unknown[0]!r}; choose from {', '.join(POLICIES)}")
    print(f"# {os.cpu_count()} cores, usable {len(os.sched_getaffinity(0))}; loadavg at start "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    rows = []
    for _ in range(args.repeats):
        for policy in policies:
            for busy in (0, args.busy):
                row = one_run(policy, busy, args.trials, args.limit)
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.json is not None:
                    with args.json.open("a") as out:
                        out.write(json.dumps(row) + "\n")
    print(f"# loadavg at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(table(rows, args.busy))
    return 0


if __name__ == "__main__":
    sys.exit(main())
