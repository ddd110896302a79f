"""Export a study's trials (CSV / JSON) and its best trial (params, weights, loader snippet).

Nothing here imports torch: the best weights are copied as bytes, and the generated loader
snippet imports ``hpsearch.engine`` / ``hpsearch.models`` only when the user runs it.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from hpsearch import names, records, trialsets
from hpsearch.errors import HpsearchError
from hpsearch.study import best_trial, state_counts
from hpsearch.study.queries import all_trials

__all__ = ["export_trials", "export_best", "predict_usage", "trial_record", "FORMATS"]

logger = logging.getLogger(__name__)

FORMATS = ("csv", "json")


def _json_safe(value: Any) -> Any:
    """Plain JSON: NaN and +-inf (a diverged trial's loss) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    return value


def trial_record(t: FrozenTrial) -> dict[str, Any]:
    """One trial as a JSON-able dict: what ``export_trials(..., "json")`` writes per trial."""
    return _json_safe({
        "number": t.number,
        "state": t.state.name,
        "value": records.first_value(t),
        "values": t.values,  # one per objective
        "feasible": records.is_feasible(t),
        "constraints": t.constraints,  # Optuna's values: <= 0 is within the bound
        "costs": records.costs(t),
        "params": dict(t.params),
        "datetime_start": t.datetime_start,
        "datetime_complete": t.datetime_complete,
        "duration_s": records.duration_s(t),
        "intermediate_values": {str(k): v for k, v in sorted(t.intermediate_values.items())},
        "user_attrs": dict(t.user_attrs),
    })


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # shortest repr that round-trips exactly
    return value


def _write_trials_csv(trials: list[FrozenTrial], out: Path) -> None:
    param_names: list[str] = []
    attr_names: list[str] = []
    for t in trials:
        for k in t.params:
            if k not in param_names:
                param_names.append(k)
        for k, v in t.user_attrs.items():
            # the history is not a scalar: it goes to the per-epoch file
            if k not in attr_names and k != records.HISTORY and _is_scalar(v):
                attr_names.append(k)
    n_values = max((len(t.values or []) for t in trials), default=1)
    cost_names = [c for c in names.COSTS if any(c in records.costs(t) for t in trials)]
    header = ["number", "state", "value", "datetime_start", "datetime_complete", "duration_s",
              *(f"values_{i}" for i in range(1, n_values)), "feasible", *(f"costs_{c}" for c in cost_names),
              *(f"params_{p}" for p in param_names), *(f"user_attrs_{a}" for a in attr_names)]
    with out.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for t in trials:
            values = list(t.values or [])
            row = [t.number, t.state.name, records.first_value(t),
                   t.datetime_start.isoformat() if t.datetime_start else None,
                   t.datetime_complete.isoformat() if t.datetime_complete else None,
                   records.duration_s(t),
                   *(values[i] if i < len(values) else None for i in range(1, n_values)), records.is_feasible(t),
                   *(records.costs(t).get(c) for c in cost_names)]
            row += [t.params.get(p) for p in param_names]
            row += [t.user_attrs.get(a) if _is_scalar(t.user_attrs.get(a)) else None for a in attr_names]
            w.writerow([_csv_value(v) for v in row])


def _epoch_fields(histories: list[list[dict[str, Any]]]) -> list[str]:
    """Every field of the history records but the epoch: the known ones in their order, then the rest by name."""
    fields: list[str] = []
    for history in histories:
        for record in history:
            fields += [k for k in record if k != records.EPOCH and k not in fields]
    known = records.EPOCH_FIELDS
    return sorted(fields, key=lambda m: (known.index(m) if m in known else len(known), m))


def _write_epochs_csv(trials: list[FrozenTrial], out: Path) -> None:
    """One row per trial and epoch: the history when present, else the intermediate values."""
    histories = [records.history(t) for t in trials]
    fields = _epoch_fields(histories)
    with out.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["trial", "state", "epoch", "intermediate_value", *fields])
        for t, history in zip(trials, histories):
            by_epoch = {records.epoch_number(h, i): h for i, h in enumerate(history, start=1)}
            for epoch in sorted(set(by_epoch) | set(t.intermediate_values)):
                h = by_epoch.get(epoch, {})
                w.writerow([_csv_value(v) for v in
                            [t.number, t.state.name, epoch, t.intermediate_values.get(epoch),
                             *(h.get(m) for m in fields)]])


def _write_csv(trials: list[FrozenTrial], out: Path) -> Path:
    epochs_out = out.with_name(f"{out.stem}_epochs.csv")
    _write_trials_csv(trials, out)
    _write_epochs_csv(trials, epochs_out)
    logger.debug("wrote %s (one row per trial) and %s (one row per trial and epoch)", out, epochs_out)
    return out


def export_trials(study: optuna.Study, out: str | Path, fmt: str) -> Path:
    """Write every trial of ``study`` to ``out`` and return its path.

    ``fmt="csv"``: one row per trial (number, state, value, datetimes, duration_s, ``params_*``,
    scalar ``user_attrs_*``); the per-epoch curves go to a second file next to it,
    ``<out stem>_epochs.csv`` (trial, state, epoch, intermediate_value and every history metric).
    ``fmt="json"``: a JSON list with one object per trial (params, state, value, datetimes,
    intermediate values and all user attrs, history included); NaN/inf become ``null``.
    """
    fmt = fmt.lower().lstrip(".")
    if fmt not in FORMATS:
        raise HpsearchError(f"export format {fmt!r} is not supported; use one of: {', '.join(FORMATS)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    if fmt == "json":
        out.write_text(json.dumps([trial_record(t) for t in trials], indent=1, allow_nan=False) + "\n",
                       encoding="utf-8")
        logger.debug("wrote %d trials to %s", len(trials), out)
        return out
    return _write_csv(trials, out)


# ---------------------------------------------------------------------------------------------

LOADER_TEMPLATE = '''"""Load the best model of hpsearch study {study!r}: trial {number}, {metric} = {value}.

Generated by `hpsearch best --export`. Run it from the project that ran the study (it imports
hpsearch for the model's architecture and the input normalisation):

    python {rel}

or import it:

    from load_model import predict, predict_text, class_names
    labels = predict(x)  # {expects}
    labels = predict(x, tta=4)  # logits averaged over x and 3 fixed views of the study's train.augment
    text = predict_text(x)  # one string per sample: a class name, a digit string, or numbers

predict() applies the normalisation the trial trained with (weights.pt keeps the training data's
per-channel mean and std); load_model() gives the bare model, which expects normalised inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hpsearch.data import prepare_inputs
from hpsearch.data.tta import tta_logits, tta_rows
from hpsearch.engine import load_checkpoint
from hpsearch.models import build_model
from hpsearch.tasks import task_from_record

WEIGHTS = Path(__file__).resolve().with_name("weights.pt")
PARAMS = {params!r}  # the trial's hyperparameters
_CHECKPOINTS: dict[str, dict[str, Any]] = {{}}
_MODELS: dict[str, torch.nn.Module] = {{}}


def _checkpoint(weights: str | Path = WEIGHTS) -> dict[str, Any]:
    key = str(Path(weights).resolve())
    if key not in _CHECKPOINTS:  # read once per file: predict() is called again and again
        _CHECKPOINTS[key] = load_checkpoint(key)
    return _CHECKPOINTS[key]


def load_model(weights: str | Path = WEIGHTS) -> torch.nn.Module:
    """Rebuild the model from the checkpoint's model_spec and load its best weights (eval mode)."""
    ckpt = _checkpoint(weights)
    spec = ckpt["model_spec"]
    model = build_model(
        spec["name"],
        tuple(spec["input_shape"]),
        spec["num_classes"],
        dropout=spec.get("dropout", 0.0),
        **spec.get("kwargs", {{}}),
    )
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model


def inputs(weights: str | Path = WEIGHTS) -> dict[str, Any] | None:
    """What the model was trained on: mean, std, input_shape, dtype, num_classes, class_names (None: older checkpoint)."""
    return _checkpoint(weights).get("inputs")


def class_names(weights: str | Path = WEIGHTS) -> list[str]:
    """The name of each class index predict() returns."""
    record = inputs(weights)
    if record is None:
        return [str(i) for i in range(_checkpoint(weights)["model_spec"]["num_classes"])]
    return list(record["class_names"])


def tta_views(tta: int, weights: str | Path = WEIGHTS) -> torch.Tensor:
    """The pixel maps of the tta - 1 extra views: the study's train.augment, fixed by the trial's seed."""
    if tta == 1:
        return tta_rows((), (), 1, 0)
    saved = _checkpoint(weights).get("tta")
    if saved is None:
        raise ValueError("this checkpoint records no augmentations (older hpsearch): use tta=1")
    return tta_rows(inputs(weights)["input_shape"], saved["augment"], tta, int(saved["seed"]))


def _outputs(x: Any, model: torch.nn.Module | None, weights: str | Path, tta: int) -> torch.Tensor:
    if model is None:
        key = str(Path(weights).resolve())
        model = _MODELS[key] = _MODELS.get(key) or load_model(weights)
    batch = prepare_inputs(x, inputs(weights))
    device = next(model.parameters()).device
    with torch.no_grad():
        return tta_logits(model, batch.to(device), tta_views(tta, weights).to(device)).cpu()


def predict(x: Any, model: torch.nn.Module | None = None, weights: str | Path = WEIGHTS, tta: int = 1) -> torch.Tensor:
    """Predictions for raw inputs `x`: a tensor or numpy array of one sample or a batch, in the dataset's
    raw units (uint8 pixels 0..255 for images, the raw feature values otherwise), normalised here exactly
    as in training; inputs far outside the training range get a warning. Class indices (int64, one per
    sample) for classification, (N, L) class indices per position for multihead (the blank included),
    float32 (N, k) values in the data's own units for regression.
    `tta` > 1 averages the logits over x and tta - 1 fixed augmented views (as `hpsearch predict --tta`)."""
    outputs = _outputs(x, model, weights, tta)  # first: a checkpoint without an inputs record is refused there
    return task_from_record(inputs(weights)).predict(outputs)


def predict_text(x: Any, model: torch.nn.Module | None = None, weights: str | Path = WEIGHTS,
                 tta: int = 1) -> list[str]:
    """One string per sample, as `hpsearch predict` writes it: the class name, the digit string (blanks
    dropped), or the values in the data's units."""
    outputs = _outputs(x, model, weights, tta)
    return task_from_record(inputs(weights)).rows(outputs)


if __name__ == "__main__":
    model = load_model()
    n_params = sum(p.numel() for p in model.parameters())
    print(model)
    print(f"loaded {{WEIGHTS.name}}: {{n_params}} parameters; params: {{PARAMS}}")
    record = inputs()
    if record is None:
        print("no input normalisation recorded (older checkpoint): normalise inputs yourself before model(x)")
    else:
        print(f"predict(x): {{tuple(record['input_shape'])}} per sample, raw {{record['dtype']}} values; "
              f"classes: {{record['class_names']}}")
'''


def _expects(inputs: dict[str, Any] | None) -> str:
    """What predict() takes, in one line, from the trial's input record."""
    if inputs is None:
        return ("this trial predates the input record: predict() refuses; normalise x yourself "
                "((x - mean) / std per channel) and call load_model()(x)")
    shape = ", ".join(str(d) for d in inputs["input_shape"])
    units = "raw uint8 pixel values" if inputs["dtype"] == "uint8" else f"raw {inputs['dtype']} feature values"
    returns = {"multihead": f"returns (N, {inputs.get('max_length')}) class indices into class_names(), "
                            f"{inputs.get('blank')} the blank",
               "regression": f"returns (N, {inputs['num_classes']}) values in the data's units"}.get(
        inputs.get("task", ""), f"returns class indices into class_names() ({inputs['num_classes']} classes)")
    return f"x: shape (N, {shape}) or one sample, {units} as the dataset holds them (not normalised); {returns}"


def predict_usage(study: optuna.Study, trial: int | None = None) -> str:
    """How to call the exported ``predict`` for the study's best trial, or trial ``trial`` (what the CLI prints)."""
    best, _ = _best_trial(study, trial)
    return f"from load_model import predict; predict(x)  # {_expects(records.inputs(best))}"


def _best_trial(study: optuna.Study, number: int | None = None) -> tuple[FrozenTrial, int]:
    """The best feasible trial, or trial ``number`` when it may be chosen: complete and feasible, and on the Pareto
    set when the study has several objectives."""
    complete = state_counts(study).get(TrialState.COMPLETE, 0)  # a count query, not every trial
    if number is not None:
        return _chosen_trial(study, number), complete
    goals = records.goals_of(study)
    if len(goals) > 1:  # the Pareto set's best in the first objective: a trial `best` lists
        best = trialsets.best_on_front(all_trials(study), [d for _, d in goals])
    else:
        best = best_trial(study)  # one query where the study allows it (see study.queries.best_trial)
    if best is None:
        within = " within its constraints" if records.constraints_of(study) else ""
        raise HpsearchError(f"study {study.study_name!r} has no completed trial{within} yet; run it first")
    return best, complete


def _chosen_trial(study: optuna.Study, number: int) -> FrozenTrial:
    goals = records.goals_of(study)
    trials = all_trials(study)
    if len(goals) > 1:
        allowed, what = trialsets.pareto_front(trials, [d for _, d in goals]), "the Pareto set"
    else:
        allowed, what = trialsets.complete_trials(trials), "the complete feasible trials"
    chosen = next((t for t in allowed if t.number == number), None)
    if chosen is None:
        listed = ", ".join(str(t.number) for t in allowed[:20]) or "none yet"
        raise HpsearchError(f"--trial: trial {number} of study {study.study_name!r} is not in {what} ({listed}); "
                            f"pick one of them (`hpsearch best` lists them)")
    return chosen


def _params_header(study: optuna.Study, best: FrozenTrial, n_complete: int, chosen: bool = False) -> list[str]:
    """The comment lines at the top of params.yaml (``chosen``: picked with --trial, not found as the best)."""
    goals = records.goals_of(study)
    if len(goals) > 1:  # a trial of the Pareto set: its value for every objective
        header = [f"Trial of the Pareto set of hpsearch study {study.study_name!r}: trial {best.number}",
                  "objectives: " + ", ".join(f"{m} = {v!r} ({d})" for (m, d), v in zip(goals, best.values))]
    else:
        header = [
            f"{'Chosen' if chosen else 'Best'} trial of hpsearch study {study.study_name!r}: trial {best.number}",
            f"{records.metric_of(study)} = {records.first_value(best)!r} ({records.direction_of(study)}; "
            f"{'one' if chosen else 'best'} of {n_complete} complete trials)",
        ]
    if records.costs(best):
        header.append("costs: " + ", ".join(f"{k} = {v!r}" for k, v in records.costs(best).items()))
    best_epoch, epochs_run = records.best_epoch(best), records.epochs_run(best)
    if best_epoch is not None:
        header.append(f"best epoch: {best_epoch} of {'?' if epochs_run is None else epochs_run} run")
    if records.checkpoint(best):
        header.append(f"checkpoint: {records.checkpoint(best)}")
    header += ["", "Paste `enqueue` into a study file: the new study evaluates these params first."]
    return header


def export_best(study: optuna.Study, out_dir: str | Path, trial: int | None = None) -> dict[str, Path]:
    """Write the best trial of ``study`` to ``out_dir``; return ``{"params", "weights", "loader"}`` paths.

    - ``params.yaml``: ``enqueue: [{...best params...}]`` (paste into a study file to evaluate
      them first in a new study), with comments on the value and trial number;
    - ``weights.pt``: a byte copy of the trial's checkpoint (its ``checkpoint`` user attr);
    - ``load_model.py``: a runnable snippet that rebuilds the model and loads the weights, with
      ``predict(x)`` that normalises raw inputs as the trial's training did and returns class indices.

    Without a checkpoint user attr only ``params.yaml`` is written. A checkpoint that is recorded
    but missing on disk raises :class:`HpsearchError` (after ``params.yaml`` is written). No
    completed trial raises :class:`HpsearchError`. ``trial`` picks another trial (one of the Pareto set of a
    study of several objectives).
    """
    best, n_complete = _best_trial(study, trial)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    header = _params_header(study, best, n_complete, chosen=trial is not None)
    body = yaml.safe_dump({"enqueue": [dict(best.params)]}, sort_keys=False, default_flow_style=False)
    params_path = out_dir / "params.yaml"
    params_path.write_text("".join(f"# {line}".rstrip() + "\n" for line in header) + body, encoding="utf-8")
    paths: dict[str, Path] = {"params": params_path}

    checkpoint = records.checkpoint(best)
    if not checkpoint:
        logger.warning("trial %d has no checkpoint; wrote only %s", best.number, params_path)
        return paths
    src = Path(checkpoint).expanduser()
    if not src.is_file():
        raise HpsearchError(
            f"checkpoint of best trial {best.number} not found: {src} (relative paths are taken from "
            f"the current directory {Path.cwd()}); run from the directory the study ran in, or restore "
            f"the file. The params were written to {params_path}"
        )
    weights_path = out_dir / "weights.pt"
    shutil.copyfile(src, weights_path)
    paths["weights"] = weights_path

    loader_path = out_dir / "load_model.py"
    loader_path.write_text(LOADER_TEMPLATE.format(
        study=study.study_name, number=best.number, metric=records.metric_of(study), value=records.first_value(best),
        rel=loader_path, params=dict(best.params), expects=_expects(records.inputs(best)),
    ), encoding="utf-8")
    paths["loader"] = loader_path
    logger.debug("wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths
