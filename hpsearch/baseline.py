"""The baseline point: what hpsearch trains when nothing is searched, evaluated as the study's first trial.

Each searched parameter takes hpsearch's own default for the setting it overrides (the `train:` defaults:
adamw, momentum 0.9, no dropout, ...; a builtin model's default width and depth) when the space holds that
value; otherwise the middle of its range: the geometric middle of a log range, the median of numeric
choices, the first of other choices. Parameters whose `when:` does not hold are left out, as a sampled
trial leaves them out. (A file cannot set a searched setting in train: or model.args: the default is all
there is; `enqueue:` is how a file names its own first points.)
"""

from __future__ import annotations

import math
from typing import Any

from hpsearch.config import CategoricalParam, IntParam, StudyConfig, space_order
from hpsearch.names import MODEL_DEFAULTS, TRAIN_PARAMS
from hpsearch.space import active, float_steps


def baseline_point(cfg: StudyConfig) -> dict[str, Any]:
    """The baseline value of every parameter that is active at the baseline, in the space's order."""
    known = _default_values(cfg)
    point: dict[str, Any] = {}
    for name in space_order(cfg.space):
        spec = cfg.space[name]
        if active(spec, point):
            value = known.get(name)
            point[name] = value if value is not None and holds(spec, value) else middle(spec)
    return point


def middle(spec: Any) -> Any:
    """The middle of a parameter's range (geometric for log), on its step; the median numeric choice, or the first."""
    if isinstance(spec, CategoricalParam):
        numbers = [c for c in spec.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
        return sorted(numbers)[(len(numbers) - 1) // 2] if len(numbers) == len(spec.choices) else spec.choices[0]
    centre = math.sqrt(spec.low * spec.high) if spec.log else (spec.low + spec.high) / 2
    if isinstance(spec, IntParam):
        return min(spec.high, spec.low + _nearest(centre - spec.low, spec.step) * spec.step)
    if spec.step is None:
        return min(spec.high, max(spec.low, centre))
    return min(float_steps(spec.low, spec.high, spec.step), key=lambda v: (abs(v - centre), -v))  # a tie: the upper


def _nearest(distance: float, step: float) -> int:
    """The number of steps nearest `distance`, a half rounded up (not Python's half to even)."""
    return math.floor(distance / step + 0.5)


def holds(spec: Any, value: Any) -> bool:
    """Whether the space can draw `value` for this parameter (a bool is not a number here)."""
    if isinstance(spec, CategoricalParam):
        return any(choice == value and isinstance(choice, bool) == isinstance(value, bool) for choice in spec.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not spec.low <= value <= spec.high:
        return False
    if isinstance(spec, IntParam):
        return isinstance(value, int) and (value - spec.low) % spec.step == 0
    return spec.step is None or value in float_steps(spec.low, spec.high, spec.step)


def _default_values(cfg: StudyConfig) -> dict[str, Any]:
    """hpsearch's default of every setting a space may search, and the builtin model's default arguments."""
    values: dict[str, Any] = dict(MODEL_DEFAULTS.get(cfg.model.name, {}))  # a user's model: no defaults known
    train = dict(cfg.train)
    values.update({name: train[name] for name in (*TRAIN_PARAMS, "dropout") if name in train})
    return values
