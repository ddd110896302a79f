"""The study file: pydantic models, defaults and every validation rule, in one place.

`load_config(path)` is the only entry point; everything after it trusts the returned `StudyConfig`.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from hpsearch import names, signals
from hpsearch.errors import ConfigError


class Strict(BaseModel):
    """Base for every section: unknown keys, NaN and infinities are errors, defaults are validated too.

    Strict types: true is not the number 1, 2.0 is not an integer and "64" is not a number.
    """

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True, allow_inf_nan=False, strict=True)


# The builtin models' arguments and their rule: a positive integer (None: the model's own default).
BUILTIN_MODEL_ARGS: dict[str, type[Strict]] = {
    name: create_model(f"{name.capitalize()}Args", __base__=Strict,
                       **{arg: (Optional[int], Field(None, ge=1)) for arg in args})  # type: ignore[call-overload]
    for name, args in names.MODELS.items()
}
BUILTIN_MODELS = names.MODELS
BUILTIN_DATASETS = names.DATASETS
METRICS = names.METRICS
TRAIN_PARAMS = names.TRAIN_PARAMS
Scalar = Union[bool, int, float, str]
CALLABLE_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
MAX_STUDY_BYTES = 2 * 1024 * 1024  # parsing is the cost: PyYAML builds a Python object per value
MAX_ENQUEUE = 10_000
MAX_ALIAS_VALUES = 100_000  # values that aliases may add: far above sharing a list, far below a YAML bomb
STORAGE_ENV = "HPSEARCH_STORAGE"  # overrides storage: like --storage, without showing a password in `ps`
RUN_ENV = "HPSEARCH_RUN"  # the id of the `hpsearch run` a worker belongs to (set by run for its workers)


# --------------------------------------------------------------------------- search space

class _Param(Strict):
    when: dict[str, Union[Scalar, list[Scalar]]] | None = None


class FloatParam(_Param):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = None

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        _check_range(self.low, self.high, self.log, self.step)
        return self


class IntParam(_Param):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = 1

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        _check_range(self.low, self.high, self.log, None if self.step == 1 else self.step)
        if self.step < 1:
            raise ValueError(f"step must be >= 1 (got {self.step})")
        return self


class CategoricalParam(_Param):
    type: Literal["categorical"]
    choices: list[Scalar]

    @field_validator("choices")
    @classmethod
    def _non_empty_unique(cls, choices: list[Scalar]) -> list[Scalar]:
        if not choices:
            raise ValueError("choices is empty; list at least one value")
        if len({repr(c) for c in choices}) != len(choices):
            raise ValueError(f"choices has duplicates: {choices}")
        return choices


def _check_range(low: float, high: float, log: bool, step: float | None) -> None:
    if low > high:
        raise ValueError(f"low ({low}) is greater than high ({high}); swap them")
    if log and low <= 0:
        raise ValueError(f"log: true needs low > 0 (got low={low}); use a positive low such as 1e-6 or set log: false")
    if log and step is not None:
        raise ValueError("step and log: true cannot be combined; drop one")
    if step is not None and step <= 0:
        raise ValueError(f"step must be > 0 (got {step})")


ParamSpec = Annotated[Union[FloatParam, IntParam, CategoricalParam], Field(discriminator="type")]


# --------------------------------------------------------------------------- sections

class TpeSampler(Strict):
    type: Literal["tpe"]
    n_startup_trials: int = Field(10, ge=0)
    multivariate: bool = True
    group: bool = False  # multivariate per group of parameters that occur together (conditional spaces)
    constant_liar: bool = True

    @model_validator(mode="after")
    def _group_needs_multivariate(self) -> TpeSampler:
        if self.group and not self.multivariate:
            raise ValueError("group: true needs multivariate: true; set both or drop group")
        return self


class RandomSampler(Strict):
    type: Literal["random"]


class CmaesSampler(Strict):
    type: Literal["cmaes"]
    n_startup_trials: int = Field(1, ge=0)
    sigma0: float | None = Field(None, gt=0)


class GpSampler(Strict):
    type: Literal["gp"]
    n_startup_trials: int = Field(10, ge=0)


class QmcSampler(Strict):
    type: Literal["qmc"]
    qmc_type: Literal["sobol", "halton"] = "sobol"
    scramble: bool = True


class GridSampler(Strict):
    type: Literal["grid"]


SamplerConfig = Annotated[
    Union[TpeSampler, RandomSampler, CmaesSampler, GpSampler, QmcSampler, GridSampler],
    Field(discriminator="type"),
]


class MedianPruner(Strict):
    type: Literal["median"]
    n_startup_trials: int = Field(5, ge=0)
    n_warmup_steps: int = Field(2, ge=0)
    interval_steps: int = Field(1, ge=1)


class PercentilePruner(Strict):
    type: Literal["percentile"]
    percentile: float = Field(25.0, ge=0, le=100)
    n_startup_trials: int = Field(5, ge=0)
    n_warmup_steps: int = Field(2, ge=0)
    interval_steps: int = Field(1, ge=1)


class SuccessiveHalvingPruner(Strict):
    type: Literal["successive_halving"]
    min_resource: int = Field(1, ge=1)
    reduction_factor: int = Field(3, ge=2)


class HyperbandPruner(Strict):
    type: Literal["hyperband"]
    min_resource: int = Field(1, ge=1)
    reduction_factor: int = Field(3, ge=2)


class PatientPruner(Strict):
    type: Literal["patient"]
    patience: int = Field(2, ge=0)
    min_delta: float = Field(0.0, ge=0)
    wrapped: Literal["median", "none"] = "median"


class ThresholdPruner(Strict):
    type: Literal["threshold"]
    lower: float | None = None
    upper: float | None = None
    n_warmup_steps: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> ThresholdPruner:
        if self.lower is None and self.upper is None:
            raise ValueError("threshold pruner needs lower or upper (or both)")
        if self.lower is not None and self.upper is not None and self.lower > self.upper:
            raise ValueError(f"lower ({self.lower}) is greater than upper ({self.upper})")
        return self


class NoPruner(Strict):
    type: Literal["none"]


PrunerConfig = Annotated[
    Union[MedianPruner, PercentilePruner, SuccessiveHalvingPruner, HyperbandPruner, PatientPruner,
          ThresholdPruner, NoPruner],
    Field(discriminator="type"),
]


def _builtin_or_callable(name: str, kind: str, builtins: Any, callable_word: str) -> str:
    """A builtin name, or user code as 'package.module:callable'; anything else is a clear error."""
    if name not in builtins and not CALLABLE_RE.match(name):
        raise ValueError(f"unknown {kind} '{name}'{_did_you_mean(name, builtins)}; use one of "
                         f"{', '.join(builtins)} or 'package.module:{callable_word}'")
    return name


class DataConfig(Strict):
    dataset: str = "digits"
    root: str = "./data"
    download: bool = False
    val_split: float | None = Field(None, gt=0, lt=1)
    cv_folds: int | None = Field(None, ge=2, le=20)
    image_size: int | None = Field(None, ge=8, le=1024)
    memory_fraction: float = Field(0.5, gt=0, le=0.95)

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        return _builtin_or_callable(name, "dataset", BUILTIN_DATASETS, "callable")

    @model_validator(mode="after")
    def _one_split(self) -> DataConfig:
        if self.val_split is not None and self.cv_folds is not None:
            raise ValueError("val_split and cv_folds are both set; keep one (hold-out or k-fold)")
        return self

    @property
    def split(self) -> dict[str, Any]:
        """The split actually used: hold-out 0.2 unless the file asks for k-fold."""
        if self.cv_folds is not None:
            return {"val_split": None, "cv_folds": self.cv_folds}
        return {"val_split": self.val_split if self.val_split is not None else 0.2, "cv_folds": None}


class ModelConfig(Strict):
    name: str = "mlp"
    args: dict[str, Scalar | list[Scalar]] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        return _builtin_or_callable(name, "model", BUILTIN_MODELS, "factory")

    @model_validator(mode="after")
    def _known_args(self) -> ModelConfig:
        for key in self.args:
            _check_model_kwarg(self.name, key)
        return self

    @property
    def is_custom(self) -> bool:
        return self.name not in BUILTIN_MODELS


class EarlyStoppingConfig(Strict):
    patience: int = Field(3, ge=1)
    min_delta: float = Field(0.0, ge=0)


class TrainConfig(Strict):
    epochs: int = Field(10, ge=1, le=100_000)
    lr: float | None = Field(None, gt=0)
    batch_size: int | None = Field(None, ge=1)
    optimizer: Literal[names.OPTIMIZERS] = "adamw"  # type: ignore[valid-type]
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    scheduler: Literal[names.SCHEDULERS] = "none"  # type: ignore[valid-type]
    warmup_epochs: float = Field(0.0, ge=0)
    step_size: int = Field(10, ge=1)
    gamma: float | None = Field(None, gt=0, le=1)  # None: 0.1 for step, 0.9 per epoch for exponential
    accum_steps: int = Field(1, ge=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    class_weighting: bool = False
    augment: list[Literal[names.AUGMENTATIONS]] = Field(default_factory=list)  # type: ignore[valid-type]
    amp: Literal[names.AMP_MODES] = "auto"  # type: ignore[valid-type]
    cuda_graphs: Literal[names.GRAPH_MODES] = "auto"  # type: ignore[valid-type]  # one CUDA graph per step (CUDA only)
    early_stopping: EarlyStoppingConfig | None = None
    checkpoint: bool = True
    resume_checkpoints: bool = True  # per-epoch state so a trial whose worker died resumes, not restarts


class WorkersConfig(Strict):
    n: int | None = Field(None, ge=1, le=1024)
    gpus: Union[Literal["all", "none"], list[int]] = "all"
    # auto: sized from the first worker's memory probe, the GPU's free memory and the CPU cores
    trials_per_gpu: Union[int, str] = "auto"
    heartbeat_interval: int = Field(10, ge=1, le=3600)  # seconds between a running trial's heartbeats
    grace_period: int = Field(40, ge=2, le=86400)       # a trial silent this long is failed and retried
    max_retries: int = Field(3, ge=0, le=100)           # retries of a trial whose worker died
    max_restarts: int = Field(5, ge=0, le=1000)         # replacements of a dead worker per slot
    max_consecutive_failures: int = Field(5, ge=1, le=10_000)  # trials failing in a row that stop the study

    @model_validator(mode="after")
    def _grace_exceeds_heartbeat(self) -> WorkersConfig:
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError(f"grace_period ({self.grace_period}) must exceed heartbeat_interval "
                             f"({self.heartbeat_interval}); raise it to at least {2 * self.heartbeat_interval}")
        return self

    @field_validator("trials_per_gpu", mode="before")
    @classmethod
    def _auto_or_count(cls, value: Any) -> Any:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 64):
            return value
        raise ValueError(f"trials_per_gpu must be auto or a whole number from 1 to 64 (got {value!r})")

    @field_validator("gpus", mode="before")
    @classmethod
    def _parse_gpu_list(cls, gpus: Any) -> Any:
        if isinstance(gpus, str) and gpus not in ("all", "none"):
            try:
                return [int(part) for part in gpus.split(",") if part.strip()]
            except ValueError:
                raise ValueError(f"gpus must be 'all', 'none' or a list like [0, 1] (got '{gpus}')") from None
        if isinstance(gpus, int) and not isinstance(gpus, bool):
            return [gpus]
        return gpus


class StudyConfig(Strict):
    """The whole study file, resolved; `source` is the file it came from."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    storage: str | None = None
    output_dir: str | None = None
    direction: Literal["maximize", "minimize"] | None = None
    metric: str = "val_accuracy"
    n_trials: int = Field(20, ge=1, le=1_000_000)
    timeout: float | None = Field(None, gt=0)
    seed: int = Field(0, ge=0, lt=2**31)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    sampler: SamplerConfig = Field(default_factory=lambda: TpeSampler(type="tpe"))
    pruner: PrunerConfig = Field(default_factory=lambda: MedianPruner(type="median"))
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    workers: WorkersConfig = Field(default_factory=WorkersConfig)
    space: dict[str, ParamSpec] = Field(default_factory=dict)
    enqueue: list[dict[str, Scalar]] = Field(default_factory=list, max_length=MAX_ENQUEUE)
    source: str = Field("<memory>", exclude=True)

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric not in METRICS:
            raise ValueError(f"unknown metric '{metric}'{_did_you_mean(metric, METRICS)}; use one of {', '.join(METRICS)}")
        return metric

    @property
    def resolved_direction(self) -> str:
        return self.direction or METRICS[self.metric]

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{Path(self.out_dir) / 'study.db'}"

    @property
    def out_dir(self) -> str:
        return self.output_dir or str(Path("runs") / self.name)

    def resolved(self) -> dict[str, Any]:
        """Every setting with its default filled in, as plain data (what `validate` prints)."""
        data = self.model_dump(mode="json")
        data.update(direction=self.resolved_direction, storage=self.storage_url, output_dir=self.out_dir)
        data["data"].update(self.data.split)
        return data


# --------------------------------------------------------------------------- cross-field rules

def _check_model_kwarg(model: str, key: str) -> None:
    known = BUILTIN_MODELS.get(model)
    if known is not None and key not in known:
        raise ValueError(f"model '{model}' takes no argument '{key}'{_did_you_mean(key, known)}"
                         f" (it accepts: {', '.join(known) or 'none'})")


def _rules_of(cfg: StudyConfig, name: str) -> type[Strict] | None:
    """The section whose field `name` holds the rule for a value of `name` (None: a custom model's argument)."""
    if name in TRAIN_PARAMS or name == "dropout":
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


def _shown(value: Any, limit: int = 60) -> str:
    """repr(value), cut short: an error line must stay one readable line even for a huge list."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 5]}...{text[-2:]}"


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


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
        if name not in TRAIN_PARAMS and name != "dropout" and not cfg.model.is_custom:
            known = TRAIN_PARAMS + ("dropout",) + BUILTIN_MODELS[cfg.model.name]
            if name not in BUILTIN_MODELS[cfg.model.name]:
                raise _error(cfg, where, f"'{name}' is neither a training setting nor an argument of model "
                                         f"'{cfg.model.name}'{_did_you_mean(name, known)}; known: {', '.join(known)}")
        if name in TRAIN_PARAMS + ("dropout",) and name in cfg.train.model_fields_set:
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


def _check_grid(cfg: StudyConfig) -> None:
    if cfg.sampler.type != "grid":
        return
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


def _check_direction(cfg: StudyConfig) -> None:
    natural = METRICS[cfg.metric]
    if cfg.direction is not None and cfg.direction != natural:
        raise _error(cfg, "direction", f"'{cfg.direction}' contradicts metric '{cfg.metric}' (which should be "
                                       f"{natural}d); set direction: {natural} or drop it")


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
    _check_direction(cfg)
    _check_model_args(cfg)
    _check_space(cfg)
    _check_grid(cfg)
    _check_enqueue(cfg)
    _check_pruner(cfg)


# --------------------------------------------------------------------------- loading

def _did_you_mean(word: str, options: Any) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _error(cfg_or_source: Any, where: str, message: str) -> ConfigError:
    source = getattr(cfg_or_source, "source", cfg_or_source)
    return ConfigError(f"{source}: {where}: {message}")


_BRACES = re.compile(r"[{}]")
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_env(value: str, source: str, where: str) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise _error(source, where, f"environment variable {name} is not set; export it or write the value")
        return os.environ[name]

    return _ENV_RE.sub(replace, value)


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key, self.line = key, line


# libyaml's parser when PyYAML has it: the pure-Python one takes ~3x as long on a large enqueue: list.
_SafeBase: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _AliasBomb(yaml.YAMLError):
    def __init__(self, line: int, why: str) -> None:
        super().__init__(why)
        self.line, self.why = line, why


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_aliases(root: yaml.Node) -> None:
    """Refuse a node graph whose aliases expand to over MAX_ALIAS_VALUES values more than it holds, or a cycle.

    Counted once per node on the composed graph, before anything is built: nine anchors nested nine
    deep are 400 bytes that expand to 387 million values, which every later step would walk.
    """
    distinct = _distinct_nodes(root)
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[key] > distinct + MAX_ALIAS_VALUES:
                raise _AliasBomb(node.start_mark.line + 1, f"YAML aliases expand to over {MAX_ALIAS_VALUES:,} values")
            continue
        if key in sizes:
            continue
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in on_path:
                raise _AliasBomb(node.start_mark.line + 1, "a YAML alias refers to a value that contains it")
            if id(child) not in sizes:
                stack.append((child, False))


def _distinct_nodes(root: yaml.Node) -> int:
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) not in seen:
            seen.add(id(node))
            stack.extend(_children(node))
    return len(seen)


class _StudyLoader(_SafeBase):  # type: ignore[misc, valid-type]
    """safe_load's loader (plain values only, no !!python tags) that refuses a key given twice in one mapping
    and aliases that expand without bound."""

    def construct_document(self, node: yaml.Node) -> Any:
        _check_aliases(node)
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<:` merges may repeat keys on purpose; explicit keys still may not
            # A plain string key (nearly all of them) needs no second construction: a third of the load time.
            str_key = key_node.tag == "tag:yaml.org,2002:str" and isinstance(key_node.value, str)
            key = key_node.value if str_key else self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # unhashable: the base class reports it
            if duplicate:
                raise _DuplicateKey(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.2 reads 1e-3 as a float; PyYAML's YAML 1.1 rules need a dot (1.0e-3) and read '1e-3' as a string,
# which strict numbers would then refuse. Exponent forms only: a plain 10 stays an int.
_StudyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def _read_text(path: Path) -> str:
    source = str(path)
    try:
        with path.open("rb") as file:
            data = file.read(MAX_STUDY_BYTES + 1)  # a bounded read: a pipe or device has no size to check first
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such study file; check the path") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the study file ({exc}); check permissions and encoding") from None
    if len(data) > MAX_STUDY_BYTES:
        size = path.stat().st_size if path.is_file() else 0
        shown = f"{size / 2**20:.1f} MiB" if size > MAX_STUDY_BYTES else f"over {MAX_STUDY_BYTES // 2**20} MiB"
        raise ConfigError(f"{source}: the study file is {shown}; study files are limited to "
                          f"{MAX_STUDY_BYTES // 2**20} MiB (enqueue: at most {MAX_ENQUEUE:,} points); "
                          f"keep a few starting points in the file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: cannot read the study file ({exc}); check permissions and encoding") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    source = str(path)
    text = _read_text(path)
    try:
        # The safe constructor refuses !!python tags, so a study file can never build Python objects.
        raw = yaml.load(text, Loader=_StudyLoader)  # noqa: S506 - _StudyLoader is a SafeLoader
    except _DuplicateKey as exc:
        raise ConfigError(f"{source}: line {exc.line}: duplicate key {_shown(exc.key)}; keep one") from None
    except _AliasBomb as exc:
        raise ConfigError(f"{source}: line {exc.line}: {exc.why}; study files may use anchors and aliases, "
                          f"but not nest them this deep or inside themselves; write the values out") from None
    except yaml.constructor.ConstructorError as exc:
        raise ConfigError(f"{source}: line {_line(exc)}: unsupported YAML tag ({exc.problem}); "
                          f"study files hold plain values only") from None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}: line {_line(exc)}: YAML syntax error ({problem}); fix the file") from None
    if raw is None:
        raise ConfigError(f"{source}: the study file is empty; start from studies/quickstart.yaml")
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the study file must be a mapping of keys (name:, space:, ...), "
                          f"not a {type(raw).__name__}")
    return raw


def _line(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return str(mark.line + 1) if mark is not None else "?"


def _pydantic_message(source: str, exc: ValidationError) -> ConfigError:
    err = exc.errors()[0]
    walk = _walk(err["loc"])
    loc = walk.keys
    where = ".".join(loc) or "(top level)"
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        fields = [name for name in (walk.owner.model_fields if walk.owner else ()) if name != "source"]
        return _error(source, where, f"unknown key '{loc[-1]}'{_did_you_mean(loc[-1], fields)}; remove it or "
                                     f"check the spelling")
    if kind == "missing":
        return _error(source, where, "required key is missing; add it")
    if kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        return _error(source, f"{where}.type", f"unknown type '{ctx.get('tag')}'; use one of {ctx.get('expected_tags')}")
    if kind == "union_tag_not_found":
        return _error(source, f"{where}.type", "type is missing; add type:")
    if kind in ("int_type", "float_type") and isinstance(value, bool):
        return _error(source, where, f"{str(value).lower()} is not a number; write {_TYPES[kind]}")
    if walk.union is not None:
        where = ".".join(loc[:walk.union_depth])
        return _error(source, where, f"must be {_describe(walk.union)}; change the value")
    message = err["msg"].removeprefix("Value error, ")
    shown = "" if isinstance(value, (dict, list)) or kind == "value_error" else f" (got {_shown(value)})"
    return _error(source, where, f"{message}{shown}")


class _Walk:
    """A pydantic error location read against the schema: the keys a user wrote, without union member labels."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.owner: type[BaseModel] | None = None  # the section holding the last key
        self.union: Any = None  # the innermost plain (not discriminated) union the error went through
        self.union_depth = 0


def _unwrap(annotation: Any) -> Any:
    """`annotation` without Annotated[...] and Optional[...]."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
        elif get_origin(annotation) in (Union, types.UnionType) and type(None) in get_args(annotation):
            members = [arg for arg in get_args(annotation) if arg is not type(None)]
            annotation = members[0] if len(members) == 1 else Union[tuple(members)]
        else:
            return annotation


def _member(union: Any, label: str) -> Any:
    """The member of `union` that pydantic labels `label` in an error location (a type tag or a type's name)."""
    for member in get_args(union):
        if isinstance(member, type) and issubclass(member, BaseModel):
            tag = member.model_fields.get("type")
            if label == member.__name__ or (tag is not None and label in get_args(tag.annotation)):
                return member
        origin = get_origin(member)
        name = getattr(origin or member, "__name__", None) or getattr(origin, "_name", "") or ""
        if label == name or label.startswith(f"{name.lower()}["):
            return member
    return None


def _walk(loc: tuple[Any, ...]) -> _Walk:
    walk, annotation = _Walk(), StudyConfig
    for part in loc:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            walk.owner = annotation
            walk.keys.append(str(part))
            field = annotation.model_fields.get(str(part))
            annotation = None if field is None else field.annotation
        elif get_origin(annotation) in (Union, types.UnionType):
            member = _member(annotation, str(part))
            plain = not (isinstance(member, type) and issubclass(member, BaseModel))
            if plain:
                walk.union, walk.union_depth = annotation, len(walk.keys)
            annotation = member
        elif get_origin(annotation) in (dict, list):
            walk.keys.append(str(part))
            annotation = get_args(annotation)[-1]
        else:
            walk.keys.append(str(part))
            annotation = None
    return walk


def _either(words: Any) -> str:
    unique = list(dict.fromkeys(words))
    return ", ".join(unique[:-1]) + f" or {unique[-1]}" if len(unique) > 1 else unique[0]


def _words(member: Any, plural: bool) -> list[str]:
    literal = get_origin(member) is Literal
    return [repr(value) for value in get_args(member)] if literal else [_describe(member, plural)]


_NOUNS = {bool: ("true or false", "true/false values"), int: ("an integer", "integers"),
          float: ("a number", "numbers"), str: ("a string", "strings")}


def _describe(annotation: Any, plural: bool = False) -> str:
    """What values `annotation` takes, in words: "'all', 'none' or a list of integers"."""
    annotation = _unwrap(annotation)
    if get_origin(annotation) in (Union, types.UnionType):
        return _either(word for member in get_args(annotation) for word in _words(member, plural))
    if get_origin(annotation) is Literal:
        return _either(_words(annotation, plural))
    if get_origin(annotation) is list:
        return f"lists of {_describe(get_args(annotation)[0], True)}" if plural else \
            f"a list of {_describe(get_args(annotation)[0], True)}"
    if annotation in _NOUNS:
        return _NOUNS[annotation][plural]
    return "mappings" if plural else "a mapping"


def _non_finite(value: Any, path: str = "", clean: set[int] | None = None) -> tuple[str, float] | None:
    """The key path and value of the first NaN or infinity anywhere in `value`, or None.

    A list or mapping shared through YAML aliases is walked once (`clean`: the ids of those already visited).
    """
    if isinstance(value, float) and not math.isfinite(value):
        return path or "(top level)", value
    clean = set() if clean is None else clean
    if id(value) in clean:
        return None
    clean.add(id(value))  # before its items: the first NaN ends the walk, so a visited value is a clean one
    if isinstance(value, dict):
        items: Any = ((f"{path}.{key}" if path else str(key), item) for key, item in value.items())
    elif isinstance(value, list):
        items = ((f"{path}[{index}]", item) for index, item in enumerate(value))
    else:
        return None
    for where, item in items:
        found = _non_finite(item, where, clean)
        if found is not None:
            return found
    return None


def _check_raw(raw: dict[str, Any], source: str) -> None:
    """What must be refused before pydantic sees the mapping: NaN/inf, an oversized enqueue:, the key 'source'."""
    found = _non_finite(raw)
    if found is not None:
        raise _error(source, found[0], f"{found[1]} is not allowed; use a finite number")
    enqueue = raw.get("enqueue")
    if isinstance(enqueue, list) and len(enqueue) > MAX_ENQUEUE:
        raise _error(source, "enqueue", f"{len(enqueue):,} points; at most {MAX_ENQUEUE:,} can be queued; keep the "
                                        f"most promising ones")
    if "source" in raw:
        raise _error(source, "source", "unknown key 'source'; remove it")


def build_config(raw: dict[str, Any], source: str = "<memory>") -> StudyConfig:
    """Validate an already-parsed study mapping; raise ConfigError naming the key path."""
    _check_raw(raw, source)
    raw = dict(raw)
    for key in ("storage", "output_dir"):
        if isinstance(raw.get(key), str):
            raw[key] = _expand_env(raw[key], source, key)
    if isinstance(raw.get("data"), dict) and isinstance(raw["data"].get("root"), str):
        raw["data"] = {**raw["data"], "root": _expand_env(raw["data"]["root"], source, "data.root")}
    try:
        cfg = StudyConfig.model_validate({**raw, "source": source})
    except ValidationError as exc:
        raise _pydantic_message(source, exc) from None
    _check_cross_fields(cfg)
    return cfg


def load_config(path: str | Path, storage: str | None = None) -> StudyConfig:
    """Read and validate a study file; every problem becomes one ConfigError line.

    `storage` (--storage, $HPSEARCH_STORAGE) replaces the file's storage: before it is expanded: a
    ${VAR} in the URL it replaces is never needed.
    """
    path = Path(path)
    with signals.interruptible():  # under `run` a stop signal is only recorded: here it ends the loading at once
        raw = _read_yaml(path)
        if storage is not None:
            raw["storage"] = storage  # before ${VAR} expansion: the file's storage is not used, nor its variables
        return build_config(raw, source=str(path))


def with_overrides(cfg: StudyConfig, **overrides: Any) -> StudyConfig:
    """A copy of `cfg` with command-line overrides (n_trials, timeout, storage, epochs, device, output_dir) applied."""
    raw = cfg.model_dump(mode="json", exclude_unset=True)
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "epochs":
            raw.setdefault("train", {})["epochs"] = value
        else:
            raw[key] = value
    with signals.interruptible():
        return build_config(raw, source=cfg.source)
