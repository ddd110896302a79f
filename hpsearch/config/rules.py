"""Rules across keys: the search space against the settings it overrides, when:, grid, enqueue, pruner, direction."""

from __future__ import annotations

import re
import types
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import ValidationError

from hpsearch import names
from hpsearch.config.messages import _did_you_mean, _error, _number, _shown
from hpsearch.config.base import Strict
from hpsearch.config.search import (CategoricalParam, FloatParam, HyperbandPruner, IntParam, MedianPruner,
    PatientPruner, PercentilePruner, SuccessiveHalvingPruner, ThresholdPruner)
from hpsearch.config.schema import BUILTIN_MODEL_ARGS, StudyConfig, TrainConfig


def _rules_of(cfg: StudyConfig, name: str) -> type[Strict] | None:
    """The section whose field `name` holds the rule for a value of `name` (None: a custom model's argument)."""
    if name in names.TRAIN_PARAMS or name == "dropout":
        return TrainConfig
    return BUILTIN_MODEL_ARGS.get(cfg.model.name)


def _what(cfg: StudyConfig, name: str) -> str:
    return name if _rules_of(cfg, name) is TrainConfig else f"{name} for model '{cfg.model.name}'"


def _kind(rules: type[Strict], name: str) -> str:
    """'int', 'float', 'bool', 'choice' (a Literal) or 'other': the shape of values field `name` takes."""
    annotation = rules.model_fields[name].annotation
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(arg for arg in get_args(annotation) if arg is not type(None))
    if get_origin(annotation) is Literal:
        return "choice"
    return {bool: "bool", int: "int", float: "float"}.get(annotation, "other")


def _invalid(rules: type[Strict], name: str, value: Any) -> dict[str, Any] | None:
    """Pydantic's first error for `value` as field `name` of `rules` (strict: no "64" for 64), or None."""
    try:
        rules.model_validate({name: value}, strict=True)
    except ValidationError as exc:
        return dict(exc.errors()[0])
    return None


_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="), "less_than": ("lt", "<"),
           "less_than_equal": ("le", "<=")}

_TYPES = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false"}

_ENDPOINT_FIXES = {"gt": "raise {part} above {bound}", "ge": "raise {part} to {bound} or more",
                   "lt": "lower {part} below {bound}", "le": "lower {part} to {bound} or less"}


def _rule(err: dict[str, Any]) -> str:
    """What a pydantic error says the value must be: '> 0', 'an integer', "one of 'sgd', 'adam' or 'adamw'"."""
    if err["type"] in _BOUNDS:
        key, sign = _BOUNDS[err["type"]]
        return f"{sign} {_number(err['ctx'][key])}"
    if err["type"] == "literal_error":
        return f"one of {err['ctx']['expected']}"
    return _TYPES.get(err["type"], err["msg"].removeprefix("Input should be ").lower())


def _fix(err: dict[str, Any], part: str) -> str:
    """How to repair the value at `part`: 'low'/'high' of a range, 'choices', or 'value' (model.args)."""
    bound = _BOUNDS.get(err["type"])
    if part in ("low", "high") and bound is not None:
        return _ENDPOINT_FIXES[bound[0]].format(part=part, bound=_number(err["ctx"][bound[0]]))
    if part == "choices":
        return "remove it from choices"
    return f"use {'a value ' if bound is not None else ''}{_rule(err)}"


def _check_value(cfg: StudyConfig, where: str, name: str, value: Any, part: str) -> None:
    rules = _rules_of(cfg, name)
    err = None if rules is None else _invalid(rules, name, value)
    if err is not None:
        raise _error(cfg, where, f"{_shown(value)} is not a valid {_what(cfg, name)} (must be {_rule(err)}); "
                                 f"{_fix(err, part)}")


def _check_param_type(cfg: StudyConfig, name: str, spec: Any, rules: type[Strict]) -> None:
    kind, what, where = _kind(rules, name), _what(cfg, name), f"space.{name}.type"
    if kind == "int" and isinstance(spec, FloatParam):
        raise _error(cfg, where, f"{what} takes integers, so it cannot be searched as type: float; "
                                 f"use type: int or type: categorical")
    if kind == "choice" and not isinstance(spec, CategoricalParam):
        names = ", ".join(get_args(rules.model_fields[name].annotation))
        raise _error(cfg, where, f"{what} takes named values, so it cannot be searched as type: {spec.type}; "
                                 f"use type: categorical with choices from {names}")
    if kind == "bool" and not isinstance(spec, CategoricalParam):
        raise _error(cfg, where, f"{what} is true or false, so it cannot be searched as type: {spec.type}; "
                                 f"use type: categorical with choices: [true, false]")


def _check_param_values(cfg: StudyConfig, name: str, spec: Any) -> None:
    """Every endpoint and choice of `space.<name>` obeys the rule of the setting or argument it overrides."""
    rules = _rules_of(cfg, name)
    if rules is None:
        return
    _check_param_type(cfg, name, spec, rules)
    if isinstance(spec, CategoricalParam):
        for choice in spec.choices:
            _check_value(cfg, f"space.{name}.choices", name, choice, "choices")
    else:
        for part in ("low", "high"):
            _check_value(cfg, f"space.{name}.{part}", name, getattr(spec, part), part)


def _check_model_args(cfg: StudyConfig) -> None:
    for key, value in cfg.model.args.items():
        _check_value(cfg, f"model.args.{key}", key, value, "value")


def space_order(space: dict[str, Any]) -> list[str]:
    """The parameters in file order, except that each comes after the ones its `when:` tests.

    YAML mappings have no order (tools that write YAML sort keys), so `momentum: {when: {optimizer:
    sgd}}` may come before `optimizer`. A cycle raises ValueError naming it; an unknown parent is
    left to the checks.
    """
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = path[path.index(name):] + [name]
            raise ValueError(" -> ".join(cycle))
        state[name] = "visiting"
        for parent in space[name].when or {}:
            if parent in space:
                visit(parent, path + [name])
        state[name] = "done"
        order.append(name)

    for name in space:
        visit(name, [])
    return order


def _check_space(cfg: StudyConfig) -> None:
    try:
        order = space_order(cfg.space)
    except ValueError as exc:
        first = str(exc).split(" -> ")[0]
        raise _error(cfg, f"space.{first}.when", f"the when: conditions form a cycle ({exc}); a parameter "
                                                 f"cannot depend on itself, remove one of them") from None
    for name in order:
        spec = cfg.space[name]
        where = f"space.{name}"
        if name not in names.TRAIN_PARAMS and name != "dropout" and not cfg.model.is_custom:
            known = names.TRAIN_PARAMS + ("dropout",) + names.MODELS[cfg.model.name]
            if name not in names.MODELS[cfg.model.name]:
                raise _error(cfg, where, f"'{name}' is neither a training setting nor an argument of model "
                                         f"'{cfg.model.name}'{_did_you_mean(name, known)}; known: {', '.join(known)}")
        if name in names.TRAIN_PARAMS + ("dropout",) and name in cfg.train.model_fields_set:
            raise _error(cfg, where, f"'{name}' is set both in train.{name} and in space.{name}; remove one")
        if name in cfg.model.args:
            raise _error(cfg, where, f"'{name}' is set both in model.args.{name} and in space.{name}; remove one")
        _check_param_values(cfg, name, spec)
        _check_when(cfg, name, spec)
    for required in ("lr", "batch_size"):
        if required not in cfg.space and getattr(cfg.train, required) is None:
            raise _error(cfg, f"space.{required}", f"'{required}' is neither searched nor fixed; add space.{required} "
                                                   f"or train.{required}")


def _check_when(cfg: StudyConfig, name: str, spec: Any) -> None:
    for parent, wanted in (spec.when or {}).items():
        where = f"space.{name}.when.{parent}"
        if parent not in cfg.space:
            raise _error(cfg, where, f"condition on '{parent}', which is not a parameter of space"
                                     f"{_did_you_mean(parent, cfg.space)}; declare it in space or remove the condition")
        parent_spec = cfg.space[parent]
        if not isinstance(parent_spec, CategoricalParam):
            raise _error(cfg, where, f"conditions may only test categorical parameters; '{parent}' is {parent_spec.type}")
        for value in wanted if isinstance(wanted, list) else [wanted]:
            if value not in parent_spec.choices:
                raise _error(cfg, where, f"{_shown(value)} is not one of {parent}'s choices {_shown(parent_spec.choices, 120)}")
    if spec.when and cfg.sampler.type == "grid":
        raise _error(cfg, f"space.{name}.when", "the grid sampler cannot search conditional parameters; "
                                                "remove when: or choose another sampler")


def _check_baseline(cfg: StudyConfig) -> None:
    """baseline_first takes trial 0, which queued or warm-start trials would take first."""
    if not cfg.baseline_first:
        return
    if cfg.enqueue:
        raise _error(cfg, "baseline_first", "enqueue: names the first trials already, so no trial would train the "
                                            "baseline; drop baseline_first or add the baseline to enqueue:")
    if cfg.warm_start is not None:
        raise _error(cfg, "baseline_first", "warm_start: gives the sampler its first trials, so no trial would train "
                                            "the baseline; drop one of them")


def _check_grid(cfg: StudyConfig) -> None:
    if cfg.sampler.type != "grid":
        return
    if cfg.baseline_first:
        raise _error(cfg, "baseline_first", "the grid sampler visits its points in its own order, so it cannot start "
                                            "from the baseline; remove baseline_first or choose another sampler")
    for name, spec in cfg.space.items():
        if isinstance(spec, FloatParam) and spec.step is None:
            raise _error(cfg, f"space.{name}.step", "the grid sampler needs a step for float parameters; "
                                                    "add step: or make it categorical")
        if getattr(spec, "log", False):
            raise _error(cfg, f"space.{name}.log", "the grid sampler cannot use log: true; list the values "
                                                   "as a categorical instead")


def _check_enqueue(cfg: StudyConfig) -> None:
    for index, point in enumerate(cfg.enqueue):
        for name, value in point.items():
            where = f"enqueue[{index}].{name}"
            spec = cfg.space.get(name)
            if spec is None:
                raise _error(cfg, where, f"'{name}' is not a parameter of space; use one of {', '.join(cfg.space)}")
            if isinstance(spec, CategoricalParam):
                ok = value in spec.choices
            elif isinstance(spec, IntParam):
                ok = isinstance(value, int) and not isinstance(value, bool) and spec.low <= value <= spec.high
            else:
                ok = not isinstance(value, (bool, str)) and spec.low <= value <= spec.high
            if not ok:
                allowed = _shown(spec.choices, 120) if isinstance(spec, CategoricalParam) else f"[{spec.low}, {spec.high}]"
                allowed = f"integers in {allowed}" if isinstance(spec, IntParam) else allowed
                raise _error(cfg, where, f"{_shown(value)} is outside space.{name} ({allowed}); change the value")


def _check_pruner(cfg: StudyConfig) -> None:
    pruner = cfg.pruner
    if isinstance(pruner, (SuccessiveHalvingPruner, HyperbandPruner)) and pruner.min_resource > cfg.train.epochs:
        raise _error(cfg, "pruner.min_resource", f"min_resource ({pruner.min_resource}) exceeds train.epochs "
                                                 f"({cfg.train.epochs}); lower it")


def first_rung(cfg: StudyConfig) -> tuple[int, str]:
    """The epochs every trial trains before the pruner can first stop it, and why (what a budget must pay first)."""
    p, epochs = cfg.pruner, cfg.train.epochs
    if isinstance(p, (SuccessiveHalvingPruner, HyperbandPruner)):
        rung, why = p.min_resource, "the pruner's min_resource"
    elif isinstance(p, (MedianPruner, PercentilePruner, ThresholdPruner)):
        rung, why = max(1, p.n_warmup_steps), "the pruner's n_warmup_steps"
    elif isinstance(p, PatientPruner):
        rung, why = p.patience + 1, "the pruner's patience + 1"
    else:
        rung, why = epochs, "train.epochs: without a pruner every trial runs them all"
    return min(rung, epochs), why


def _check_budget(cfg: StudyConfig) -> None:
    budget = cfg.budget.epochs
    if budget is None:
        return
    rung, why = first_rung(cfg)
    if budget < rung:
        raise _error(cfg, "budget.epochs", f"{budget} epochs cannot pay for one trial's first rung ({rung} epochs: "
                                           f"{why}); raise it to at least {rung}")


def _check_task_names(cfg: StudyConfig, metrics: dict[str, str]) -> None:
    """Objectives and constraints that name a metric (not a cost) name one the task reports."""
    named = [(f"objectives.{i}.metric", o.metric) for i, o in enumerate(cfg.objectives or [])]
    named += [(f"constraints.{name}", name) for name in cfg.constraints]
    for where, name in named:
        if name not in names.COSTS and name not in metrics:
            raise _error(cfg, where, f"task {cfg.task} does not report '{name}'{_did_you_mean(name, metrics)}; use "
                                     f"one of {', '.join(metrics)} or a cost ({', '.join(names.COSTS)})")


def _check_task(cfg: StudyConfig) -> None:
    """The metric is one the task reports; class weights and label smoothing only where there are classes."""
    metrics = names.TASK_METRICS[cfg.task]
    _check_task_names(cfg, metrics)
    if cfg.metric not in names.METRICS:
        raise _error(cfg, "metric", f"unknown metric '{cfg.metric}'{_did_you_mean(cfg.metric, metrics)}; use one of "
                                    f"{', '.join(metrics)} (task {cfg.task})")
    if cfg.metric not in metrics:
        raise _error(cfg, "metric", f"task {cfg.task} does not report '{cfg.metric}'"
                                    f"{_did_you_mean(cfg.metric, metrics)}; use one of {', '.join(metrics)}")
    if cfg.task != "regression":
        return
    if cfg.train.class_weighting:
        raise _error(cfg, "train.class_weighting", "task regression has no classes to weight; remove it")
    if cfg.train.label_smoothing > 0 or "label_smoothing" in cfg.space:
        where = "space.label_smoothing" if "label_smoothing" in cfg.space else "train.label_smoothing"
        raise _error(cfg, where, "task regression has no classes to smooth; remove it")


def _check_direction(cfg: StudyConfig) -> None:
    natural = names.METRICS[cfg.metric]
    if cfg.direction is not None and cfg.direction != natural:
        raise _error(cfg, "direction", f"'{cfg.direction}' contradicts metric '{cfg.metric}' (which should be "
                                       f"{natural}d); set direction: {natural} or drop it")


def _check_objectives(cfg: StudyConfig) -> None:
    for key in ("metric", "direction"):
        if cfg.objectives is not None and key in cfg.model_fields_set:
            raise _error(cfg, "objectives", f"objectives and {key} are both set; keep objectives (each with its own "
                                            f"direction) or write {key}: alone")


def _check_braces(cfg: StudyConfig) -> None:
    """No '{' or '}' in output_dir or an SQLite path: Optuna fills a storage URL as a str.format template."""
    why = "Optuna reads braces in a storage URL as a template"
    if cfg.output_dir is not None and _BRACES.search(cfg.output_dir):
        raise _error(cfg, "output_dir", f"{_shown(cfg.output_dir)} holds '{{' or '}}', which a folder of a study may "
                                        f"not ({why}, and the default database lies in this folder); rename it, "
                                        f"e.g. {_shown(_BRACES.sub('', cfg.output_dir))}")
    if cfg.storage is not None and cfg.storage.startswith("sqlite") and _BRACES.search(cfg.storage):
        raise _error(cfg, "storage", f"{_shown(cfg.storage)} holds '{{' or '}}', which an SQLite path may not "
                                     f"({why}); rename the file or folder, e.g. {_shown(_BRACES.sub('', cfg.storage))}")


def _check_cross_fields(cfg: StudyConfig) -> None:
    _check_braces(cfg)
    _check_objectives(cfg)
    _check_task(cfg)
    _check_direction(cfg)
    _check_model_args(cfg)
    _check_space(cfg)
    _check_grid(cfg)
    _check_enqueue(cfg)
    _check_baseline(cfg)
    _check_pruner(cfg)
    _check_budget(cfg)


_BRACES = re.compile(r"[{}]")
