"""The search space as data: the only place that calls ``trial.suggest_*``."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import optuna

from hpsearch.config import CategoricalParam, FloatParam, IntParam, StudyConfig, space_order


def active(spec: Any, params: dict[str, Any]) -> bool:
    """A parameter is sampled only when every `when:` condition holds for the values drawn so far."""
    for parent, wanted in (spec.when or {}).items():
        allowed = wanted if isinstance(wanted, list) else [wanted]
        if parent not in params or params[parent] not in allowed:
            return False
    return True


def distribution(spec: Any) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution that `trial.suggest_*` records for `spec` (what the storage keeps)."""
    if isinstance(spec, FloatParam):
        return optuna.distributions.FloatDistribution(spec.low, spec.high, log=spec.log, step=spec.step)
    if isinstance(spec, IntParam):
        return optuna.distributions.IntDistribution(spec.low, spec.high, log=spec.log, step=spec.step)
    return optuna.distributions.CategoricalDistribution(spec.choices)


def _suggest_one(trial: optuna.trial.BaseTrial, name: str, spec: Any) -> Any:
    if isinstance(spec, FloatParam):
        return trial.suggest_float(name, spec.low, spec.high, log=spec.log, step=spec.step)
    if isinstance(spec, IntParam):
        return trial.suggest_int(name, spec.low, spec.high, log=spec.log, step=spec.step)
    if isinstance(spec, CategoricalParam):
        return trial.suggest_categorical(name, spec.choices)
    raise TypeError(f"unsupported parameter spec {type(spec).__name__}")


def suggest(trial: optuna.trial.BaseTrial, cfg: StudyConfig) -> dict[str, Any]:
    """Draw every active parameter of `cfg.space`, each after the ones its `when:` tests."""
    params: dict[str, Any] = {}
    for name in space_order(cfg.space):
        spec = cfg.space[name]
        if active(spec, params):
            params[name] = _suggest_one(trial, name, spec)
    return params


def largest_point(cfg: StudyConfig, names: tuple[str, ...]) -> dict[str, Any]:
    """For a memory probe: each of `names` in the space at its largest value (numbers only), the rest left out."""
    point: dict[str, Any] = {}
    for name in names:
        spec = cfg.space.get(name)
        if isinstance(spec, (FloatParam, IntParam)):
            point[name] = spec.high
        elif isinstance(spec, CategoricalParam):
            numbers = [c for c in spec.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
            if numbers:
                point[name] = max(numbers)
    return point


def grid(cfg: StudyConfig) -> dict[str, list[Any]]:
    """The full grid for the grid sampler: every value each parameter can take."""
    values: dict[str, list[Any]] = {}
    for name, spec in cfg.space.items():
        if isinstance(spec, CategoricalParam):
            values[name] = list(spec.choices)
        elif isinstance(spec, IntParam):
            values[name] = list(range(spec.low, spec.high + 1, spec.step))
        else:
            values[name] = float_steps(spec.low, spec.high, spec.step)
    return values


def float_steps(low: float, high: float, step: float) -> list[float]:
    """low, low + step, ... up to high, in decimal: 0.001 + 9 * 0.001 in floats is 0.010000000000000002 > 0.01."""
    first, last, size = Decimal(repr(low)), Decimal(repr(high)), Decimal(repr(step))
    return [float(first + i * size) for i in range(int((last - first) / size) + 1)]
