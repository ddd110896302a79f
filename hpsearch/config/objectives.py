"""What a study optimises besides one metric: `objectives:` (two or three, each a metric or a measured cost) and
`constraints:` (bounds on any metric or cost). The names come from `names.METRICS` (what a trial's validation
reports) and `names.COSTS` (what `hpsearch.costs` measures); each implies its direction."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from pydantic import model_validator

from hpsearch import names
from hpsearch.config.base import Strict
from hpsearch.config.messages import _did_you_mean

MIN_OBJECTIVES, MAX_OBJECTIVES = 2, 3


class Goal(NamedTuple):
    """One resolved objective: a metric or cost and its direction."""

    metric: str
    direction: str


def known_names() -> dict[str, str]:
    """Every name an objective or constraint may use, with the direction it implies."""
    return {**names.METRICS, **names.COSTS}


def check_name(name: str, what: str) -> str:
    """A known metric or cost, else a ValueError naming the known ones."""
    known = known_names()
    if name not in known:
        raise ValueError(f"unknown {what} '{name}'{_did_you_mean(name, known)}; use a metric "
                         f"({', '.join(names.METRICS)}) or a measured cost ({', '.join(names.COSTS)})")
    return name


class ObjectiveSpec(Strict):
    metric: str
    direction: Literal["maximize", "minimize"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _a_mapping(cls, data: Any) -> Any:
        if isinstance(data, str):  # objectives: [val_accuracy, latency_ms]
            raise ValueError(f"an objective is a mapping, got '{data}'; write {{metric: {data}}}")
        return data

    @model_validator(mode="after")
    def _known_and_consistent(self) -> ObjectiveSpec:
        natural = known_names()[check_name(self.metric, "objective metric")]
        if self.direction is not None and self.direction != natural:
            raise ValueError(f"direction '{self.direction}' contradicts metric '{self.metric}' (which should be "
                             f"{natural}d); set direction: {natural} or drop it")
        return self

    @property
    def goal(self) -> Goal:
        return Goal(self.metric, self.direction or known_names()[self.metric])


class Bound(Strict):
    """`{min: a, max: b}`: the feasible values of one metric or cost (either end may be left open)."""

    min: float | int | None = None
    max: float | int | None = None

    @model_validator(mode="before")
    @classmethod
    def _a_mapping(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            number = isinstance(data, (int, float)) and not isinstance(data, bool)  # params: 3000
            raise ValueError(f"a constraint is a mapping of min: and/or max:, got {data!r}; "
                             f"write e.g. {{max: {repr(data) if number else '1.0e6'}}}")
        return data

    @model_validator(mode="after")
    def _one_end_in_order(self) -> Bound:
        if self.min is None and self.max is None:
            raise ValueError("a constraint needs min:, max: or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) exceeds max ({self.max}); swap them")
        return self

    def violation(self, value: float) -> float:
        """How far ``value`` lies outside the bound (<= 0: feasible), Optuna's constraint value."""
        below = float(self.min) - value if self.min is not None else -float("inf")
        above = value - float(self.max) if self.max is not None else -float("inf")
        return max(below, above)


def check_objectives(objectives: list[ObjectiveSpec] | None) -> list[ObjectiveSpec] | None:
    """Two or three distinct objectives, the first a per-epoch metric (it picks the best epoch and early-stops)."""
    if objectives is None:
        return None
    if not MIN_OBJECTIVES <= len(objectives) <= MAX_OBJECTIVES:
        raise ValueError(f"{len(objectives)} objective(s): give {MIN_OBJECTIVES} or {MAX_OBJECTIVES} (for one, "
                         f"write metric: instead)")
    seen = [o.metric for o in objectives]
    twice = sorted({m for m in seen if seen.count(m) > 1})
    if twice:
        raise ValueError(f"metric '{twice[0]}' is named twice; name each objective once")
    if objectives[0].metric not in names.METRICS:
        raise ValueError(f"the first objective is '{objectives[0].metric}', a cost; put a metric "
                         f"({', '.join(names.METRICS)}) first: it picks each trial's best epoch and drives early stopping")
    return objectives


def check_constraints(constraints: dict[str, Bound]) -> dict[str, Bound]:
    for name in constraints:
        check_name(name, "constraint")
    return constraints


def is_pre_training(name: str) -> bool:
    """Known before the first epoch (the trial is refused at once when it falls outside its bound)."""
    return name in names.PRE_TRAINING_COSTS

