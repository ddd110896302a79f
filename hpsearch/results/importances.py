"""Param importances of one objective, read the way the report means them: what it takes to reach the best values."""

from __future__ import annotations

import warnings

import optuna

__all__ = ["param_importances"]

# Optuna's note that a given target is explained at its low end: param_importances negates maximised objectives.
_LOW_TARGET_WARNING = "low `target` values"


def param_importances(target: optuna.Study, varying: list[str], index: int) -> tuple[dict[str, float], list[str]]:
    """Optuna's importances of `varying` for reaching the best values of objective `index`, and the warnings worth
    showing. A maximised objective is negated: PED-ANOVA, Optuna 5's default evaluator, explains the *lowest*
    values of any target it is given, so without it the importances would explain the worst trials."""
    sign = -1.0 if target.directions[index] == optuna.study.StudyDirection.MAXIMIZE else 1.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = optuna.importance.get_param_importances(
            target, params=varying, target=lambda t: sign * t.values[index])
    shown = sorted({str(w.message) for w in caught if _LOW_TARGET_WARNING not in str(w.message)})
    return {k: float(v) for k, v in result.items()}, shown
