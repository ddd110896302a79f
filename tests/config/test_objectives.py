"""objectives: and constraints: in the study file: names checked against what trials report, directions implied."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import TINY_STUDY
from hpsearch import names
from hpsearch.config import build_config
from hpsearch.config.objectives import Bound
from hpsearch.errors import ConfigError

TWO = [{"metric": "val_accuracy"}, {"metric": "latency_ms", "direction": "minimize"}]


def _cfg(**changes: Any) -> Any:
    return build_config({**TINY_STUDY, **changes}, "s.yaml")


def test_one_metric_is_the_one_element_case() -> None:
    cfg = _cfg(metric="val_loss")
    assert [tuple(g) for g in cfg.goals] == [("val_loss", "minimize")] and not cfg.multi_objective


def test_objectives_resolve_with_implied_directions() -> None:
    cfg = _cfg(objectives=[{"metric": "val_accuracy"}, {"metric": "params"}, {"metric": "val_loss"}])
    assert [tuple(g) for g in cfg.goals] == [("val_accuracy", "maximize"), ("params", "minimize"),
                                             ("val_loss", "minimize")]
    assert cfg.metric == "val_accuracy" and cfg.resolved_direction == "maximize"  # the first objective drives
    assert cfg.resolved()["objectives"][1] == {"metric": "params", "direction": "minimize"}


@pytest.mark.parametrize("changes, pattern", [
    ({"objectives": [{"metric": "val_accuracy"}, {"metric": "latency"}]},
     r"s\.yaml: objectives\.1: unknown objective metric 'latency' \(did you mean 'latency_ms'\?\); use a metric "
     r"\(val_accuracy, val_loss.*\) or a measured cost \(params, latency_ms, peak_memory_mb, train_time\)"),
    ({"objectives": [{"metric": "val_accuracy"}, {"metric": "latency_ms", "direction": "maximize"}]},
     r"objectives\.1: direction 'maximize' contradicts metric 'latency_ms' \(which should be minimized\); "
     r"set direction: minimize or drop it"),
    ({"objectives": [{"metric": "val_loss", "direction": "maximize"}, {"metric": "params"}]},
     r"objectives\.0: direction 'maximize' contradicts metric 'val_loss'"),
    ({"objectives": TWO, "metric": "val_accuracy"}, r"s\.yaml: objectives: objectives and metric are both set"),
    ({"objectives": TWO, "direction": "maximize"}, r"objectives: objectives and direction are both set"),
    ({"objectives": TWO[:1]}, r"objectives: 1 objective\(s\): give 2 or 3 \(for one, write metric: instead\)"),
    ({"objectives": TWO + [{"metric": "params"}, {"metric": "val_loss"}]}, r"objectives: 4 objective\(s\)"),
    ({"objectives": [{"metric": "val_accuracy"}, {"metric": "val_accuracy"}]}, r"named twice"),
    ({"objectives": [{"metric": "params"}, {"metric": "val_accuracy"}]}, r"the first objective is 'params', a cost"),
    ({"constraints": {"flops": {"max": 1}}},
     r"constraints: unknown constraint 'flops'; use a metric \(val_accuracy.*\) or a measured cost \(params, "
     r"latency_ms, peak_memory_mb, train_time\)"),
    ({"objectives": [{"metric": "val_accuracy"}, {"metric": "val_char_accuracy"}]},
     r"s\.yaml: objectives\.1\.metric: task classification does not report 'val_char_accuracy'.*; use one of "
     r"val_accuracy, val_loss or a cost \(params, latency_ms, peak_memory_mb, train_time\)"),
    ({"constraints": {"val_mse": {"max": 3}}}, r"constraints\.val_mse: task classification does not report 'val_mse'"),
    ({"constraints": {"params": {}}}, r"constraints\.params: a constraint needs min:, max: or both"),
    ({"constraints": {"latency_ms": {"min": 3, "max": 2}}}, r"constraints\.latency_ms: min \(3\) exceeds max \(2\)"),
    ({"constraints": {"params": {"max": "1e6"}}}, r"constraints\.params\.max"),
    ({"constraints": {"params": {"most": 5}}}, r"constraints\.params\.most: unknown key 'most'"),
    ({"constraints": {"params": 3000}}, r"s\.yaml: constraints\.params: a constraint is a mapping of min: and/or "
                                        r"max:, got 3000; write e\.g\. \{max: 3000\}"),
    ({"constraints": {"params": None}}, r"constraints\.params: a constraint is a mapping .*; write e\.g\. \{max: "),
    ({"constraints": ["params"]}, r"s\.yaml: constraints: constraints is a mapping of names to bounds, got \['params'\]; "
                                  r"write e\.g\. constraints: \{params: \{max: 1\.0e6\}\}"),
    ({"objectives": ["val_accuracy", "latency_ms"]},
     r"s\.yaml: objectives\.0: an objective is a mapping, got 'val_accuracy'; write \{metric: val_accuracy\}"),
    ({"objectives": "val_accuracy"}, r"s\.yaml: objectives: objectives is a list of mappings, got 'val_accuracy'; "
                                     r"write e\.g\. objectives: \[\{metric: val_accuracy\}, \{metric: latency_ms\}\]"),
])
def test_bad_objectives_and_constraints_are_one_line(changes: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern) as info:
        _cfg(**changes)
    assert "\n" not in str(info.value)


def test_every_metric_of_the_task_and_every_cost_may_be_constrained() -> None:
    bounds = {name: {"max": 1.0e6} for name in {**names.TASK_METRICS["classification"], **names.COSTS}}
    assert set(_cfg(constraints=bounds).constraints) == set(bounds)


def test_a_bound_measures_its_violation_as_optuna_reads_it() -> None:
    assert Bound(max=10).violation(12) == 2 and Bound(max=10).violation(7) == -3
    assert Bound(min=0.9).violation(0.8) == pytest.approx(0.1) and Bound(min=1, max=2).violation(1.5) == -0.5
