"""Time the report (``hpsearch.results.html.write_report``) on a synthetic 5,000-trial study in SQLite.

    PYTHONPATH=. .venv/bin/python bench/report_scale.py [--trials 5000] [--epochs 10] [--keep DIR]

Writes the study straight into a fresh SQLite file (one bulk transaction, see ``fill``), then times collect_study,
build_figures and write_report separately and prints one JSON object. Target: write_report
under 60 s on 2 cores. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import study_fixtures  # noqa: E402

from hpsearch.results.collect import collect_study  # noqa: E402
from hpsearch.results.figures import build_figures  # noqa: E402
from hpsearch.results.html import write_report  # noqa: E402


def fill(url: str, n: int, epochs: int) -> None:
    """Create the study and bulk-insert ``n`` synthetic trials in one transaction.

    Study.add_trials costs ~15 ms per trial here (one commit and a SELECT-then-INSERT per attribute
    row); the same rows written with executemany take a second for thousands of trials. Rows are
    built with Optuna's own stored-representation helpers so the study loads back unchanged.
    """
    import datetime as dt

    from optuna.distributions import distribution_to_json
    from optuna.storages._rdb import models

    storage = optuna.storages.RDBStorage(url)
    study = study_fixtures.new_study(storage, "scale", epochs=epochs)
    trials = list(study_fixtures.synthetic_trials(n, epochs=epochs, seed=0, n_slots=8,
                                                  fail_every=97, checkpoint_dir="runs/scale"))

    def utc(t: dt.datetime | None) -> dt.datetime | None:
        return None if t is None else t.astimezone(dt.timezone.utc).replace(tzinfo=None)

    rows: dict[str, list[dict]] = {"trials": [], "params": [], "values": [], "inter": [], "attrs": []}
    for number, t in enumerate(trials):
        tid = number + 1  # fresh database: trial ids start at 1
        rows["trials"].append({"trial_id": tid, "number": number, "study_id": study._study_id,
                               "state": t.state, "datetime_start": utc(t.datetime_start),
                               "datetime_complete": utc(t.datetime_complete)})
        for name, value in t.params.items():
            dist = t.distributions[name]
            rows["params"].append({"trial_id": tid, "param_name": name,
                                   "param_value": dist.to_internal_repr(value),
                                   "distribution_json": distribution_to_json(dist)})
        if t.value is not None:
            v, vtype = models.TrialValueModel.value_to_stored_repr(t.value)
            rows["values"].append({"trial_id": tid, "objective": 0, "value": v, "value_type": vtype})
        for step, value in t.intermediate_values.items():
            v, vtype = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(value)
            rows["inter"].append({"trial_id": tid, "step": step, "intermediate_value": v,
                                  "intermediate_value_type": vtype})
        for key, value in t.user_attrs.items():
            rows["attrs"].append({"trial_id": tid, "key": key, "value_json": json.dumps(value)})
    tables = {"trials": models.TrialModel, "params": models.TrialParamModel,
              "values": models.TrialValueModel, "inter": models.TrialIntermediateValueModel,
              "attrs": models.TrialUserAttributeModel}
    with storage.engine.begin() as conn:
        for key, model in tables.items():
            if rows[key]:
                conn.execute(model.__table__.insert(), rows[key])
    storage.engine.dispose()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--keep", type=Path, default=None, help="write the DB and report here")
    args = ap.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    tmp = tempfile.TemporaryDirectory()
    where = args.keep or Path(tmp.name)
    where.mkdir(parents=True, exist_ok=True)
    db = where / "scale.db"
    if db.exists():
        db.unlink()
    url = f"sqlite:///{db}"

    t0 = time.perf_counter()
    fill(url, args.trials, args.epochs)
    t_fill = time.perf_counter() - t0

    study = optuna.load_study(study_name="scale", storage=url)
    t0 = time.perf_counter()
    data = collect_study(study)
    t_collect = time.perf_counter() - t0
    t0 = time.perf_counter()
    figs = build_figures([data])
    t_figs = time.perf_counter() - t0

    out = where / "report_scale.html"
    # a fresh Study: load_study's storage cache would otherwise already hold every trial
    study = optuna.load_study(study_name="scale", storage=url)
    t0 = time.perf_counter()
    write_report([study], out)
    t_report = time.perf_counter() - t0

    result = {
        "trials": args.trials,
        "epochs": args.epochs,
        "fill_s": round(t_fill, 2),
        "collect_study_s": round(t_collect, 2),
        "build_figures_s": round(t_figs, 2),
        "write_report_s": round(t_report, 2),
        "figures": len(figs),
        "html_mb": round(out.stat().st_size / 2**20, 2),
        "db_mb": round(db.stat().st_size / 2**20, 2),
        "importance_note": data.importance_note,
        "cpus": os.cpu_count(),
        "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "optuna": optuna.__version__,
        "target_s": 60,
        "ok": t_report < 60,
    }
    print(json.dumps(result, indent=2))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
