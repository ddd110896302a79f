"""Importances explain the best trials of each objective, in that objective's direction."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution

from hpsearch.results.importances import param_importances


def _two_gate_study(directions: list[str]) -> optuna.Study:
    """Objective i is best exactly where gate_i >= 0.9 (top 10% in its direction); `noise` orders the rest of both."""
    study = optuna.create_study(directions=directions)
    dists = {name: FloatDistribution(0, 1) for name in ("gate_0", "gate_1", "noise")}
    for i in range(200):
        params = {"gate_0": ((i * 37) % 200) / 200, "gate_1": ((i * 53 + 7) % 200) / 200,
                  "noise": ((i * 91 + 13) % 200) / 200}
        values = [(1.0 if params[f"gate_{k}"] >= 0.9 else 0.0) + 0.01 * params["noise"] for k in (0, 1)]
        values = [v if d == "maximize" else -v for v, d in zip(values, directions)]
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, values=values))
    return study


@pytest.mark.parametrize("directions", [["maximize", "minimize"], ["minimize", "maximize"]])
def test_each_objective_is_explained_by_its_own_gate(directions: list[str]) -> None:
    study = _two_gate_study(directions)
    for index in (0, 1):
        found, warned = param_importances(study, ["gate_0", "gate_1", "noise"], index)
        assert max(found, key=found.__getitem__) == f"gate_{index}", (index, found)
        assert not any("low `target` values" in w for w in warned)
