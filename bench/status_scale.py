"""`status`, `best` and the epoch budget's checks on a large study: the old code path (every trial read) beside
the new one (counts and sums in SQL), in one process, on one SQLite file or PostgreSQL database.

    PYTHONPATH=. nice -n 10 .venv/bin/python bench/status_scale.py [--trials 20000] [--storage URL] [--repeat 5]

Fills the study with ``bench/report_scale.fill`` (one bulk transaction; skipped with --reuse when the study
exists), then times, each on a fresh Study (no warm cache) unless said otherwise:
- status: ``summary.print_summary`` as of commit ea18a9c (loaded from git) against today's; both outputs are
  compared line by line (only the `workers by host` line changed on purpose);
- best: ``trialsets.best_trial`` (every complete trial) against ``study.best_trial`` by query;
- budget: a worker's per-trial / per-epoch check with a warm cache (``budget.committed(study.get_trials())``, as
  the worker loop called it) against ``budget.committed_of(study)`` (SQL, reading what changed since its last call), median of --repeat calls;
- report: how many times ``write_report`` has the storage load trials (the backend's ``_get_trials``).
Prints one JSON object. Not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import study_fixtures  # noqa: E402
from report_scale import fill  # noqa: E402

from hpsearch import budget, summary, trialsets  # noqa: E402
from hpsearch.config import build_config  # noqa: E402
from hpsearch.study import best_trial  # noqa: E402

OLD_COMMIT = "ea18a9c"  # the last commit that read every trial for status and the budget


def old_summary() -> types.ModuleType:
    """hpsearch/summary.py as of OLD_COMMIT, as a module (its imports all still exist)."""
    source = subprocess.run(["git", "show", f"{OLD_COMMIT}:hpsearch/summary.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType("old_summary")
    sys.modules["old_summary"] = module  # dataclasses look their module up
    exec(compile(source, "old_summary.py", "exec"), module.__dict__)  # noqa: S102 - our own file at a commit
    return module


def timed(fn, *args):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - t0, result


def printed(fn, *args) -> tuple[float, list[str]]:  # type: ignore[no-untyped-def]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        seconds, _ = timed(fn, *args)
    return seconds, out.getvalue().splitlines()


def count_loads(study: optuna.Study) -> list[int]:
    """Wrap the study's backend so each trial load is recorded (how many trials it returned)."""
    backend = study._storage._backend  # type: ignore[attr-defined]
    loads: list[int] = []
    original = backend._get_trials

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        trials = original(*args, **kwargs)
        loads.append(len(trials))
        return trials

    backend._get_trials = counted
    return loads


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--storage", default=None, help="default: a fresh SQLite file in a temporary folder")
    ap.add_argument("--reuse", action="store_true", help="keep the study at --storage if it exists")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--skip-report", action="store_true")
    args = ap.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tmp = tempfile.TemporaryDirectory()
    url = args.storage or f"sqlite:///{Path(tmp.name) / 'status.db'}"
    load = lambda: optuna.load_study(study_name="scale", storage=url)  # noqa: E731 - a fresh cache each time

    fill_s = 0.0
    if not (args.reuse and "scale" in optuna.get_all_study_names(url)):
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name="scale", storage=url)
        fill_s, _ = timed(fill, url, args.trials, args.epochs)
    cfg = build_config({**study_fixtures.study_config("scale", args.epochs), "storage": url, "n_trials": args.trials},
                       source="scale.yaml")
    result: dict[str, object] = {"trials": len(load().get_trials(deepcopy=False)), "fill_s": round(fill_s, 1)}

    old_s, old_out = printed(old_summary().print_summary, load(), cfg)
    new_s, new_out = printed(summary.print_summary, load(), cfg)
    differs = [(a, b) for a, b in zip(old_out, new_out) if a != b]
    result["status_s"] = {"old": round(old_s, 2), "new": round(new_s, 2)}
    result["status_lines_that_differ"] = differs + ([("length", len(old_out), len(new_out))]
                                                    if len(old_out) != len(new_out) else [])

    old_best_s, old_best = timed(trialsets.best_trial, load())
    new_best_s, new_best = timed(best_trial, load())
    result["best_s"] = {"old": round(old_best_s, 2), "new": round(new_best_s, 3),
                        "same": (old_best.number, old_best.value) == (new_best.number, new_best.value)}

    warm = load()
    warm.get_trials(deepcopy=False)  # a worker's cache holds every trial already
    olds, news = [], []
    for _ in range(args.repeat):
        seconds, old_value = timed(lambda: budget.committed(warm.get_trials(deepcopy=False)))
        olds.append(seconds)
        seconds, new_value = timed(lambda: budget.committed_of(warm))
        news.append(seconds)
    result["budget_check_ms"] = {"old": round(1000 * statistics.median(olds), 1),
                                 "new": round(1000 * statistics.median(news), 1), "same": old_value == new_value,
                                 "committed": new_value}

    if not args.skip_report:
        from hpsearch.results.html import write_report

        study = load()
        loads = count_loads(study)
        report_s, _ = timed(write_report, [study], Path(tmp.name) / "report.html")
        result["report"] = {"s": round(report_s, 1), "trial_loads": loads}
    result["loadavg_1m"] = round(os.getloadavg()[0], 1)
    result["optuna"] = optuna.__version__
    print(json.dumps(result, indent=2))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
