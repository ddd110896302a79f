"""Turn bench/gpu_check.sh's logs into one JSON summary and a table of measured values against the targets.

    python bench/gpu_summary.py /tmp/gpu-logs --out gpu_check.json

Reads: steps.tsv (rc and wall time of each step), pytest_gpu.log, throughput.log (bench/throughput.py's
JSON lines), gpu-<kind>.db (the searches' studies), workers_<kind>/worker-*.json (each worker's
phases) and util_<kind>.csv (nvidia-smi samples). Missing pieces are reported as missing, not guessed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sqlite3
import statistics
import sys
from pathlib import Path
from typing import Any

TARGETS = {  # issue #10's targets (H100 or H200), engine images/s unless said otherwise
    "seednet/64": "engine >= 60,000 img/s",
    "seednet/512": "engine >= 150,000 img/s",
    "resnet18/512": "engine >= 80,000 img/s",
    "mlp/64": ">= 2x the classic loop",
    "busy seednet/64": ">= 60 % GPU busy",
    "search_one wall": "<= 24 s",
    "search_one util": ">= 60 %",
    "search_auto util": ">= 85 %",
    "outside trials": "<= 3 s + data loading",
    "first trial extra": "<= 1 s",
}


def read_steps(logs: Path) -> dict[str, dict[str, float]]:
    steps = {}
    path = logs / "steps.tsv"
    for line in path.read_text().splitlines() if path.exists() else []:
        name, rc, wall = line.split("\t")
        steps[name] = {"rc": int(rc), "wall_s": float(wall)}
    return steps


def read_pytest(logs: Path) -> dict[str, Any]:
    path = logs / "pytest_gpu.log"
    if not path.exists():
        return {"missing": True}
    text = path.read_text(errors="replace")
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", text.splitlines()[-1])}
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", text, re.MULTILINE)
    return {"counts": counts, "failed": failed}


def read_throughput(logs: Path) -> dict[str, Any]:
    path = logs / "throughput.log"
    rows: dict[str, dict[str, Any]] = {}
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if "loop" in row:
            key = f"{row['model']}/{row['batch_size']}"
            rows.setdefault(key, {})[row["loop"]] = row["images_per_s"]
            if "speedup" in row:
                rows[key]["speedup"] = row["speedup"]
        elif "profile" in row:
            key = f"{row['profile']}/{row['batch_size']}"
            rows.setdefault(key, {}).update({k: row.get(k) for k in ("gpu_busy_fraction", "kernels_per_step",
                                                                      "aten_ops_per_step", "wall_us_per_step")})
        elif "config" in row:
            rows["config"] = row["config"]
    return rows


def _time(text: str | None) -> float | None:
    return None if text is None else dt.datetime.fromisoformat(text).timestamp()


def read_search(logs: Path, kind: str, wall: float | None) -> dict[str, Any]:
    """One search of gpu_check.sh: its study, its workers' status files and its GPU samples."""
    return search_numbers(logs / f"gpu-{kind}.db", logs / f"workers_{kind}", logs / f"util_{kind}.csv", wall)


def search_numbers(db: Path, workers: Path, util: Path | None, wall: float | None) -> dict[str, Any]:
    """Wall time against the trials' span, first-trial overhead and start-up phases of one search."""
    if not db.exists():
        return {"missing": True}
    with sqlite3.connect(db) as conn:
        trials = conn.execute("SELECT trial_id, number, state, datetime_start, datetime_complete FROM trials").fetchall()
        attrs = conn.execute("SELECT trial_id, key, value_json FROM trial_user_attributes").fetchall()
    by_id: dict[int, dict[str, Any]] = {tid: {} for tid, *_ in trials}
    for tid, key, value in attrs:
        by_id[tid][key] = json.loads(value)
    done = [(number, state, _time(start), _time(end), by_id[tid]) for tid, number, state, start, end in trials
            if start and end]
    if not done:
        return {"trials": 0, "wall_s": wall}
    span = max(end for *_, end, _ in done) - min(start for _, _, start, *_ in done)
    first_extra = _first_trial_extra(done)
    result: dict[str, Any] = {
        "trials": len(done), "states": _count(state for _, state, *_ in done), "wall_s": wall,
        "trials_span_s": round(span, 2), "outside_trials_s": None if wall is None else round(wall - span, 2),
        "first_trial_extra_s": first_extra, "workers": len({a.get("worker") for *_, a in done}),
        "cuda_graphs": _count(str(a.get("cuda_graphs")) for *_, a in done),
    }
    result.update(_startup(workers))
    if util is not None:
        result.update(_utilisation(util))
    return result


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def _first_trial_extra(done: list[tuple[Any, ...]]) -> dict[str, float]:
    """Per worker: its first trial's duration minus the trial's own training time (epochs), in seconds."""
    first: dict[str, tuple[float, float, dict[str, Any]]] = {}
    for _, _, start, end, attrs in done:
        worker = str(attrs.get("worker"))
        if worker not in first or start < first[worker][0]:
            first[worker] = (start, end, attrs)
    extra = {}
    for worker, (start, end, attrs) in first.items():
        epochs = sum(float(h.get("epoch_time", 0.0)) for h in attrs.get("history") or [])
        extra[worker] = round(end - start - epochs, 2)
    return extra


def _startup(folder: Path) -> dict[str, Any]:
    """Each worker's phases before its first trial, in seconds, from its status file."""
    workers = {}
    for path in sorted(folder.glob("worker-*.json")):
        phases = json.loads(path.read_text()).get("phases", [])
        durations: dict[str, float] = {}
        for (name, start), (_, end) in zip(phases, phases[1:]):
            if name in ("trials", "done"):
                break
            durations[name] = round(end - start, 2)
        workers[path.stem] = durations
    return {"startup_s": workers} if workers else {}


def _utilisation(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    util, memory = [], []
    for line in path.read_text(errors="replace").splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) == 3 and parts[1].isdigit():
            util.append(int(parts[1]))
            memory.append(int(parts[2]))
    busy = [u for u in util if u > 0]
    if not util:
        return {"utilisation": "no samples"}
    return {"util_while_busy_pct": round(statistics.mean(busy), 1) if busy else 0.0,
            "util_samples": len(util), "gpu_memory_max_mib": max(memory)}


def summarise(logs: Path) -> dict[str, Any]:
    steps = read_steps(logs)
    return {
        "env": (logs / "env.txt").read_text(errors="replace").splitlines() if (logs / "env.txt").exists() else [],
        "steps": steps,
        "pytest_gpu": read_pytest(logs),
        "throughput": read_throughput(logs),
        "search_one": read_search(logs, "one", steps.get("search_one", {}).get("wall_s")),
        "search_auto": read_search(logs, "auto", steps.get("search_auto", {}).get("wall_s")),
    }


def table(summary: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(what, measured, target) rows for the terminal."""
    rows = [("pytest -m gpu", json.dumps(summary["pytest_gpu"].get("counts")) + " " +
             " ".join(summary["pytest_gpu"].get("failed", [])), "all pass")]
    for key, row in summary["throughput"].items():
        if key == "config":
            continue
        measured = f"engine {row.get('engine', '-'):,} vs classic {row.get('classic', '-'):,} img/s" \
            if isinstance(row.get("engine"), (int, float)) and isinstance(row.get("classic"), (int, float)) else str(row)
        if row.get("gpu_busy_fraction") is not None:
            measured += f"; busy {row['gpu_busy_fraction']:.0%}, {row.get('kernels_per_step')} kernels/step"
        rows.append((f"throughput {key}", measured, TARGETS.get(key, "-")))
    for kind in ("one", "auto"):
        s = summary[f"search_{kind}"]
        measured = (f"wall {s.get('wall_s')} s, trials span {s.get('trials_span_s')} s, outside {s.get('outside_trials_s')} s, "
                    f"{s.get('trials')} trials by {s.get('workers')} workers, util {s.get('util_while_busy_pct', '-')} %, "
                    f"max {s.get('gpu_memory_max_mib', '-')} MiB, graphs {s.get('cuda_graphs')}")
        rows.append((f"search {kind}", measured, f"{TARGETS.get(f'search_{kind} wall', '-')}; util "
                                                 f"{TARGETS.get(f'search_{kind} util', '-')}"))
        rows.append((f"search {kind} first-trial extra", json.dumps(s.get("first_trial_extra_s")),
                     TARGETS["first trial extra"]))
        rows.append((f"search {kind} start-up phases", json.dumps(s.get("startup_s")), TARGETS["outside trials"]))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("logs", type=Path)
    parser.add_argument("--out", type=Path, help="write the JSON summary here")
    args = parser.parse_args(argv)
    summary = summarise(args.logs)
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1))
    for what, measured, target in table(summary):
        print(f"{what:32} | {measured} | target: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
