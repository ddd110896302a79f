"""Where a run's time outside its trials goes, on this machine: one in-process worker and two supervised ones.

Runs `hpsearch run` as a real command (as a user does) on a tiny digits study of short trials, then
reads the study (trial start and end times, training time per epoch) and each worker's status
file (its phases: process start, imports, data, model, study) to split the wall time:

    python bench/startup.py --trials 6 --repeats 3 [--baseline /path/to/an/older/checkout]

Prints one JSON line per run and one summary line per configuration (medians).
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

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from gpu_summary import search_numbers  # noqa: E402

STUDY = {
    "name": "startup", "seed": 0, "device": "cpu", "sampler": {"type": "random"}, "pruner": {"type": "none"},
    "data": {"dataset": "digits", "val_split": 0.25}, "model": {"name": "mlp", "args": {"width": 32, "depth": 1}},
    "train": {"epochs": 1, "batch_size": 64},
    "space": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
}


def one_run(folder: Path, trials: int, workers: int, tree: Path = ROOT) -> dict[str, object]:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "study.yaml").write_text(yaml.safe_dump({**STUDY, "n_trials": trials}))
    argv = [sys.executable, "-m", "hpsearch", "run", "study.yaml"] + (["--workers", str(workers)] if workers > 1 else [])
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.time()
    done = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, check=False)
    wall = time.time() - start
    if done.returncode != 0:
        raise SystemExit(f"run failed ({done.returncode}): {done.stderr[-2000:]}")
    numbers = search_numbers(folder / "runs/startup/study.db", folder / "runs/startup/logs", None, round(wall, 2))
    return {"tree": str(tree), "workers": workers, **numbers}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another source tree (e.g. a git worktree of an older commit), "
                                                      "run alternately with this one")
    args = parser.parse_args(argv)
    trees = [ROOT] + ([args.baseline.resolve()] if args.baseline else [])
    print(json.dumps({"config": {"cores": os.cpu_count(), "python": sys.version.split()[0], "trials": args.trials,
                                 "trees": [str(t) for t in trees]}}))
    results: dict[tuple[str, int], list[dict[str, object]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for tree in trees if repeat % 2 == 0 else trees[::-1]:  # interleaved: drift hits both alike
                for workers in (1, 2):
                    row = one_run(Path(tmp) / f"w{workers}", args.trials, workers, tree)
                    results.setdefault((str(tree), workers), []).append(row)
                    print(json.dumps(row), flush=True)
    for (tree, workers), rows in results.items():
        summary = {key: statistics.median(float(r[key]) for r in rows if r.get(key) is not None)
                   for key in ("wall_s", "trials_span_s", "outside_trials_s")}
        extras = [v for r in rows for v in (r.get("first_trial_extra_s") or {}).values()]
        summary["first_trial_extra_s_median"] = statistics.median(extras) if extras else None
        print(json.dumps({"summary": f"{workers} worker(s)", "tree": tree,
                          **{k: round(v, 2) if v is not None else None for k, v in summary.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
