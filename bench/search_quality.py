"""Search quality: training epochs each sampler/pruner pairing spends before it finds a near-best model.

Every run is a real `hpsearch run` (a fresh study in a temporary folder, one worker, CPU, one
thread, under `nice -n 10`) of one task file under bench/search_tasks/ with one strategy's
sampler:/pruner: put in, for `--trials` trials and one study seed:

    PYTHONPATH=. .venv/bin/python bench/search_quality.py [--tasks quickstart,seednet,tabular,floats]
        [--strategies random,defaults,...] [--seeds 0,1,2] [--trials 30] [--jobs 2] [--quick]
    PYTHONPATH=. .venv/bin/python bench/search_quality.py --summarise-only   # table + figure from the JSON lines

Cost of a run: the training epochs spent, summed over its trials in completion order (pruned and
early-stopped trials count the epochs they ran), until the best complete trial so far reaches
best-known - delta; best-known is the best final value any strategy reached on that task with that
seed (the seed also draws the validation split, so values are comparable only within a seed).
A run that never gets there costs all the epochs it spent and is flagged not reached. Runs are
interleaved (seed, then task, then strategies in an order rotated per seed). Each run appends one
JSON line to --out; a run already there (same seed, task, strategy, trials) is skipped unless --redo; the summary prints a Markdown table and writes a plotly figure (best-so-far
against cumulative epochs, every seed faint, the median over seeds bold).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
TASKS_DIR = ROOT / "bench" / "search_tasks"
RESULTS = ROOT / "bench" / "results"

# delta per task: how close to best-known (in accuracy) counts as "found a near-best model".
DELTAS = {"quickstart": 0.005, "seednet": 0.005, "tabular": 0.01, "floats": 0.005}
BASELINE = "random"


def _tpe(startup: int) -> dict[str, Any]:
    return {"type": "tpe", "n_startup_trials": startup, "multivariate": True, "group": True, "constant_liar": True}


ASHA = {"type": "successive_halving", "min_resource": 1, "reduction_factor": 3}


def strategies(dim: int, epochs: int = 9) -> dict[str, dict[str, Any]]:
    """Each strategy's sampler/pruner (None: the key is removed, the project default applies) for a space of `dim`
    parameters and trials of `epochs`; `early_stopping: False` drops the task's early stopping; `baseline_first`
    is put in the file when given. The `b-` strategies are `baseline-first` (the defaults with trial 0 the
    baseline point) with one thing changed."""
    first = math.ceil(epochs / 9)  # the default pruner's first rung
    return {
        "random": {"sampler": {"type": "random"}, "pruner": {"type": "none"}, "early_stopping": False},
        "defaults": {"sampler": None, "pruner": None},
        # the defaults with trial 0 the baseline point (hpsearch.baseline), not a random start-up trial
        "baseline-first": {"sampler": None, "pruner": None, "baseline_first": True},
        # the defaults before 2026-12-02: TPE after 10 random trials, the median pruner after 5 trials and 2 epochs
        "defaults-v0": {"sampler": {"type": "tpe", "n_startup_trials": 10},
                        "pruner": {"type": "median", "n_startup_trials": 5, "n_warmup_steps": 2}},
        "auto": {"sampler": "auto", "pruner": None},  # sampler: auto + the default pruner (TPE since 2026-12-04)
        "auto-v1": {"sampler": {"type": "gp", "n_startup_trials": dim}, "pruner": None},  # what auto picked before
        "auto-nopruner": {"sampler": "auto", "pruner": {"type": "none"}},  # GP on the floats task
        "tpe-median": {"sampler": _tpe(dim), "pruner": {"type": "median", "n_startup_trials": 5, "n_warmup_steps": 1}},
        "tpe-asha": {"sampler": _tpe(dim), "pruner": ASHA},
        "tpe2d-asha": {"sampler": _tpe(2 * dim), "pruner": ASHA},
        "tpe-asha2": {"sampler": _tpe(dim), "pruner": {**ASHA, "min_resource": 2}},
        "tpe-hyperband": {"sampler": _tpe(dim), "pruner": {"type": "hyperband", "min_resource": 1,
                                                           "reduction_factor": 3}},
        "random-asha": {"sampler": {"type": "random"}, "pruner": ASHA},
        "gp-asha": {"sampler": {"type": "gp", "n_startup_trials": dim}, "pruner": ASHA},
        "defaults-noes": {"sampler": None, "pruner": None, "early_stopping": False},
        "defaults-es3": {"sampler": None, "pruner": None, "patience": 3},  # a task's early stopping, patience 3
        "defaults-es2": {"sampler": None, "pruner": None, "patience": 2},
        "baseline-first-noes": {"sampler": None, "pruner": None, "baseline_first": True, "early_stopping": False},
        "b-startup-half": {"sampler": _tpe(max(2, dim // 2)), "pruner": None, "baseline_first": True},
        "b-rf2": {"sampler": None, "pruner": {**ASHA, "min_resource": first, "reduction_factor": 2},
                  "baseline_first": True},
        "b-late": {"sampler": None, "pruner": {**ASHA, "min_resource": math.ceil(epochs / 4)},
                   "baseline_first": True},
        "b-hyperband": {"sampler": None, "pruner": {"type": "hyperband", "min_resource": first,
                                                     "reduction_factor": 3}, "baseline_first": True},
    }


# ------------------------------------------------------------------ the cost: plain functions

def cost_to_target(trials: Sequence[Mapping[str, Any]], target: float,
                   direction: str = "maximize") -> tuple[int, float | None, bool]:
    """(epochs, seconds, reached) until the best complete trial so far reaches `target`.

    `trials` in completion order, each {"epochs": epochs it ran, "value": its value when complete
    else None, "end_s": seconds from the run's first trial start to its end}. Best-so-far reaches the
    target exactly when a trial does, so the cost is the epochs up to and including that trial.
    Not reached: every epoch spent, the last trial's end, False.
    """
    sign = 1.0 if direction == "maximize" else -1.0
    spent, end = 0, None
    for trial in trials:
        spent += int(trial["epochs"])
        end = trial.get("end_s")
        value = trial.get("value")
        if value is not None and math.isfinite(value) and sign * value >= sign * target:
            return spent, end, True
    return spent, end, False


def best_so_far(trials: Sequence[Mapping[str, Any]], direction: str = "maximize") -> list[tuple[int, float | None]]:
    """(cumulative epochs, best complete value so far or None) after each trial, in completion order."""
    pick = max if direction == "maximize" else min
    spent, best, points = 0, None, []
    for trial in trials:
        spent += int(trial["epochs"])
        value = trial.get("value")
        if value is not None and math.isfinite(value):
            best = value if best is None else pick(best, value)
        points.append((spent, best))
    return points


def final_best(trials: Sequence[Mapping[str, Any]], direction: str = "maximize") -> float | None:
    points = best_so_far(trials, direction)
    return points[-1][1] if points else None


# ------------------------------------------------------------------ one run

def study_mapping(task: str, strategy: Mapping[str, Any], seed: int, trials: int, epochs: int | None) -> dict[str, Any]:
    """The task file with the strategy's sampler/pruner in, `trials` trials, `seed`, no checkpoints."""
    raw = yaml.safe_load((TASKS_DIR / f"{task}.yaml").read_text())
    for key in ("sampler", "pruner"):
        raw.pop(key, None)
        if strategy.get(key) is not None:
            raw[key] = strategy[key]
    if "baseline_first" in strategy:
        raw["baseline_first"] = strategy["baseline_first"]
    train = raw.setdefault("train", {})
    if strategy.get("early_stopping") is False:
        train.pop("early_stopping", None)
    elif "patience" in strategy and "early_stopping" in train:
        train["early_stopping"] = {**train["early_stopping"], "patience": strategy["patience"]}
    if epochs is not None:
        train["epochs"] = epochs
    train.update(checkpoint=False, resume_checkpoints=False)  # disk writes only: nothing the search sees
    raw.update(n_trials=trials, seed=seed, device="cpu", output_dir="runs/study")
    raw.pop("storage", None)
    return raw


def read_trials(db: Path, name: str) -> list[dict[str, Any]]:
    """The study's finished trials in completion order: epochs run, value (complete only), end time, state."""
    import optuna

    from hpsearch import records, trialsets

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    done = [t for t in study.get_trials(deepcopy=False) if t.datetime_complete is not None and t.datetime_start]
    done.sort(key=lambda t: (t.datetime_complete, t.number))
    if not done:
        return []
    start = min(t.datetime_start for t in done)
    complete = {t.number for t in trialsets.complete_trials(done)}
    return [{"number": t.number, "state": t.state.name, "stop_reason": records.stop_reason(t),
             "epochs": records.epochs_run(t) or 0, "value": t.value if t.number in complete else None,
             "end_s": round((t.datetime_complete - start).total_seconds(), 3)} for t in done]


def one_run(task: str, name: str, strategy: Mapping[str, Any], seed: int, trials: int,
            epochs: int | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sq-") as tmp:
        folder = Path(tmp)
        raw = study_mapping(task, strategy, seed, trials, epochs)
        (folder / "study.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        argv = ["nice", "-n", "10", sys.executable, "-m", "hpsearch", "run", "study.yaml"]
        start = time.time()
        done = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, check=False)
        wall = time.time() - start
        if done.returncode != 0:
            raise SystemExit(f"{task}/{name}/seed {seed}: hpsearch run exited {done.returncode}: {done.stderr[-2000:]}")
        rows = read_trials(folder / "runs/study/study.db", raw["name"])
    return {"task": task, "strategy": name, "seed": seed, "trials": trials, "epochs_per_trial": raw["train"]["epochs"],
            "sampler": raw.get("sampler", "default"), "pruner": raw.get("pruner", "default"),
            "early_stopping": raw["train"].get("early_stopping"), "wall_s": round(wall, 2),
            "total_epochs": sum(r["epochs"] for r in rows), "final_best": final_best(rows), "trial_rows": rows}


def task_shape(task: str) -> tuple[int, int]:
    """The task's number of parameters and its epochs per trial."""
    raw = yaml.safe_load((TASKS_DIR / f"{task}.yaml").read_text())
    return len(raw["space"]), raw["train"]["epochs"]


def plan(tasks: list[str], names: list[str], seeds: list[int]) -> list[tuple[int, str, str]]:
    """(seed, task, strategy), interleaved: strategies in an order rotated per seed and task."""
    order = []
    for s_index, seed in enumerate(seeds):
        for t_index, task in enumerate(tasks):
            shift = (s_index + t_index) % len(names)
            order += [(seed, task, name) for name in names[shift:] + names[:shift]]
    return order


# ------------------------------------------------------------------ summary

def summarise(rows: list[dict[str, Any]], deltas: Mapping[str, float] = DELTAS,
              order: Sequence[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
    """Per task x strategy: medians over seeds of epochs-to-target, ratio to the baseline, final best, wall."""
    best_known: dict[tuple[str, int], float] = {}
    for row in rows:
        key = (row["task"], row["seed"])
        if row["final_best"] is not None:
            best_known[key] = max(best_known.get(key, -math.inf), row["final_best"])
    per_run: dict[tuple[str, str, int], dict[str, Any]] = {}
    for row in rows:
        target = best_known[(row["task"], row["seed"])] - deltas[row["task"]]
        epochs, seconds, reached = cost_to_target(row["trial_rows"], target)
        per_run[(row["task"], row["strategy"], row["seed"])] = {**row, "cost": epochs, "cost_s": seconds,
                                                                "reached": reached, "target": target}
    table = []
    present = {(r["task"], r["strategy"]) for r in rows}
    for task, name in [pair for pair in order or sorted(present) if pair in present]:
        runs = [v for (t, n, _), v in sorted(per_run.items()) if (t, n) == (task, name)]
        ratios, final_vs = [], []
        for run in runs:
            base = per_run.get((task, BASELINE, run["seed"]))
            if base is not None:
                ratios.append(run["cost"] / base["cost"])
                if run["final_best"] is not None and base["final_best"] is not None:
                    final_vs.append(run["final_best"] - base["final_best"])
        table.append({
            "task": task, "strategy": name, "delta": deltas[task], "seeds": [r["seed"] for r in runs],
            "cost": [r["cost"] for r in runs], "reached": [r["reached"] for r in runs],
            "median_cost": statistics.median(r["cost"] for r in runs),
            "ratios": [round(x, 3) for x in ratios], "median_ratio": statistics.median(ratios) if ratios else None,
            "final_best": [r["final_best"] for r in runs],
            "median_final_best": statistics.median(r["final_best"] for r in runs if r["final_best"] is not None),
            "median_final_vs_random": statistics.median(final_vs) if final_vs else None,
            "median_total_epochs": statistics.median(r["total_epochs"] for r in runs),
            "median_cost_s": _median([r["cost_s"] for r in runs]),
            "median_wall_s": statistics.median(r["wall_s"] for r in runs),
        })
    return table


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def markdown(table: list[dict[str, Any]]) -> str:
    lines = ["| task (δ) | strategy | epochs to target, per seed (* not reached) | median | ratio to random, per seed | median ratio "
             "| final best, median (Δ vs random) | epochs spent | s to target | run wall s |",
             "|---|---|---|---:|---|---:|---|---:|---:|---:|"]
    for row in table:
        costs = ", ".join(f"s{seed}: {c}{'' if ok else '*'}"
                          for seed, c, ok in zip(row["seeds"], row["cost"], row["reached"], strict=True))
        ratio = "—" if row["median_ratio"] is None else f"{row['median_ratio']:.2f}"
        delta = row["median_final_vs_random"]
        final = f"{row['median_final_best']:.4f}" + ("" if delta is None else f" ({delta:+.4f})")
        cost_s = "—" if row["median_cost_s"] is None else f"{row['median_cost_s']:.0f}"
        lines.append(f"| {row['task']} ({row['delta']}) | {row['strategy']} | {costs} | {row['median_cost']:g} "
                     f"| {', '.join(f'{r:.2f}' for r in row['ratios'])} | {ratio} | {final} "
                     f"| {row['median_total_epochs']:g} | {cost_s} | {row['median_wall_s']:.0f} |")
    return "\n".join(lines)


def figure(rows: list[dict[str, Any]], path: Path, png: bool = False) -> None:
    """Best-so-far against cumulative epochs: one panel per task, one colour per strategy, seeds faint, median bold."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    names = list(dict.fromkeys(r["strategy"] for r in rows))
    fig = make_subplots(rows=1, cols=len(tasks), subplot_titles=tasks)
    legend: set[str] = set()
    for col, task in enumerate(tasks, start=1):
        for index, name in enumerate(names):
            colour = qualitative.Plotly[index % len(qualitative.Plotly)]
            curves = [best_so_far(r["trial_rows"]) for r in rows if (r["task"], r["strategy"]) == (task, name)]
            for curve in curves:
                xs, ys = zip(*[(x, y) for x, y in curve if y is not None], strict=True) if curve else ((), ())
                fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"color": colour, "width": 1, "shape": "hv"},
                                         opacity=0.3, legendgroup=name, showlegend=False, hoverinfo="skip"),
                              row=1, col=col)
            grid = sorted({x for curve in curves for x, _ in curve})
            median = [_median([_at(curve, x) for curve in curves]) for x in grid]
            fig.add_trace(go.Scatter(x=grid, y=median, mode="lines", name=name, legendgroup=name,
                                     line={"color": colour, "width": 2.5, "shape": "hv"},
                                     showlegend=bool(curves) and name not in legend), row=1, col=col)
            if curves:
                legend.add(name)
        fig.update_xaxes(title_text="cumulative training epochs", row=1, col=col)
    fig.update_yaxes(title_text="best val_accuracy so far (median over seeds)", row=1, col=1)
    fig.update_layout(title="Search quality: best-so-far against training epochs", height=520, width=560 * len(tasks))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs="cdn")  # ~40 kB instead of 4.6 MB of plotly.js in the repository
    if png:
        fig.write_image(path.with_suffix(".png"))  # viewable offline (kaleido + Chromium)


def _at(curve: list[tuple[int, float | None]], x: int) -> float | None:
    """A best-so-far step curve's value at `x` epochs (its last value after its end; None before its first)."""
    value = None
    for spent, best in curve:
        if spent > x:
            break
        value = best
    return value


# ------------------------------------------------------------------ command line

def _list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _rows(path: Path) -> list[dict[str, Any]]:
    """The runs recorded in a JSON-lines file (header lines left out; none when the file is not there)."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if "task" in row]


def _key(row: Mapping[str, Any]) -> tuple[int, str, str, int]:
    return row["seed"], row["task"], row["strategy"], row["trials"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default=",".join(DELTAS))
    parser.add_argument("--strategies", default=",".join(strategies(1)))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--epochs", type=int, help="override every task's train.epochs")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (each trains on one thread)")
    parser.add_argument("--quick", action="store_true", help="smoke run: random and tpe-asha, seed 0, 6 trials, "
                                                             "3 epochs, results beside the real ones (*.quick.*)")
    parser.add_argument("--out", type=Path, default=RESULTS / "search_quality.jsonl")
    parser.add_argument("--delta", default="", help="override delta per task, e.g. quickstart=0.01,tabular=0.02 "
                                                    "(the summary only; the runs do not depend on it)")
    parser.add_argument("--png", action="store_true", help="also write the figure as PNG (needs kaleido)")
    parser.add_argument("--redo", action="store_true", help="rerun runs already in --out (default: skip them)")
    parser.add_argument("--summarise-only", action="store_true", help="no runs: table and figure from --out")
    args = parser.parse_args(argv)
    tasks, names, seeds = _list(args.tasks), _list(args.strategies), [int(s) for s in _list(args.seeds)]
    if args.quick:
        names, seeds, args.trials, args.epochs = [BASELINE, "tpe-asha"], [0], 6, 3
        args.out = args.out.with_suffix(".quick.jsonl")
    unknown = [t for t in tasks if t not in DELTAS] + [n for n in names if n not in strategies(1)]
    if unknown:
        parser.error(f"unknown task or strategy: {', '.join(unknown)}; tasks: {', '.join(DELTAS)}; "
                     f"strategies: {', '.join(strategies(1))}")
    if not args.summarise_only:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        header = {"config": {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                             "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.processor() or ''}",
                             "loadavg_start": os.getloadavg(), "python": sys.version.split()[0], "tasks": tasks,
                             "strategies": names, "seeds": seeds, "trials": args.trials, "epochs": args.epochs,
                             "jobs": args.jobs, "argv": sys.argv[1:]}}
        with args.out.open("a") as out:
            out.write(json.dumps(header) + "\n")
        done = set() if args.redo else {_key(r) for r in _rows(args.out)}
        todo = [item for item in plan(tasks, names, seeds) if (*item, args.trials) not in done]

        def run(item: tuple[int, str, str]) -> None:
            seed, task, name = item
            row = one_run(task, name, strategies(*task_shape(task))[name], seed, args.trials, args.epochs)
            row["loadavg_end"] = os.getloadavg()[0]
            with args.out.open("a") as out:
                out.write(json.dumps(row) + "\n")
            print(f"{task:10} {name:14} seed {seed}: {row['total_epochs']:4d} epochs, best {row['final_best']}, "
                  f"{row['wall_s']:.0f} s", flush=True)

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            list(pool.map(run, todo))
    rows = [r for r in _rows(args.out) if r["task"] in tasks and r["strategy"] in names and r["seed"] in seeds]
    latest = {(r["task"], r["strategy"], r["seed"]): r for r in rows}  # a rerun of a subset replaces those runs
    deltas = {**DELTAS, **{k: float(v) for k, v in (part.split("=") for part in _list(args.delta))}}
    table = summarise(list(latest.values()), deltas, order=[(task, name) for task in tasks for name in names])
    text = markdown(table)
    print(text)
    args.out.with_suffix(".md").write_text(text + "\n")
    args.out.with_name(args.out.stem + "_summary.json").write_text(json.dumps(table, indent=1) + "\n")
    figure(list(latest.values()), args.out.with_suffix(".html"), png=args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
