"""bench/search_quality.py: the cost of a search (epochs until near-best), on hand-made histories."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from hpsearch.config import build_config

ROOT = Path(__file__).resolve().parent.parent


def _bench(name: str) -> ModuleType:
    """A bench/ script as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


sq = _bench("search_quality")
_bench("search_data")  # importable as bench_search_data

# completion order: a pruned trial (no value) after 1 epoch, a complete one, an early-stopped one, a better one
HISTORY = [
    {"epochs": 1, "value": None, "end_s": 0.5},
    {"epochs": 20, "value": 0.90, "end_s": 4.0},
    {"epochs": 3, "value": None, "end_s": 4.6},
    {"epochs": 12, "value": 0.95, "end_s": 7.0},
    {"epochs": 20, "value": 0.97, "end_s": 11.0},
]


def test_cost_counts_every_epoch_until_the_first_trial_at_the_target() -> None:
    assert sq.cost_to_target(HISTORY, 0.95) == (36, 7.0, True)
    assert sq.cost_to_target(HISTORY, 0.90) == (21, 4.0, True)
    assert sq.cost_to_target(HISTORY, 0.965) == (56, 11.0, True)


def test_a_target_never_reached_costs_every_epoch_spent_and_says_so() -> None:
    assert sq.cost_to_target(HISTORY, 0.99) == (56, 11.0, False)
    assert sq.cost_to_target([], 0.5) == (0, None, False)


def test_pruned_values_never_count_and_minimising_flips_the_comparison() -> None:
    losses = [{"epochs": 2, "value": None}, {"epochs": 5, "value": 0.40}, {"epochs": 5, "value": 0.25}]
    assert sq.cost_to_target(losses, 0.30, direction="minimize") == (12, None, True)
    assert sq.cost_to_target(losses, 0.50, direction="minimize") == (7, None, True)


def test_best_so_far_is_a_step_curve_over_cumulative_epochs() -> None:
    assert sq.best_so_far(HISTORY) == [(1, None), (21, 0.90), (24, 0.90), (36, 0.95), (56, 0.97)]
    assert sq.final_best(HISTORY) == 0.97


def test_summary_takes_the_target_per_task_and_seed_and_divides_by_random() -> None:
    def run(strategy: str, seed: int, trials: list[dict[str, object]]) -> dict[str, object]:
        return {"task": "quickstart", "strategy": strategy, "seed": seed, "trial_rows": trials, "wall_s": 1.0,
                "total_epochs": sum(int(t["epochs"]) for t in trials),  # type: ignore[call-overload]
                "final_best": sq.final_best(trials)}  # type: ignore[arg-type]

    rows = [run("random", 0, [{"epochs": 20, "value": 0.90}, {"epochs": 20, "value": 0.97}]),
            run("tpe-asha", 0, [{"epochs": 1, "value": None}, {"epochs": 9, "value": 0.968}]),
            run("random", 1, [{"epochs": 20, "value": 0.80}]),
            run("tpe-asha", 1, [{"epochs": 3, "value": 0.70}])]  # seed 1 is worse for both: its own target
    table = {r["strategy"]: r for r in sq.summarise(rows, deltas={"quickstart": 0.005})}
    assert table["random"]["cost"] == [40, 20] and table["random"]["reached"] == [True, True]
    assert table["tpe-asha"]["cost"] == [10, 3] and table["tpe-asha"]["reached"] == [True, False]
    assert table["tpe-asha"]["ratios"] == [0.25, 0.15] and table["tpe-asha"]["median_ratio"] == pytest.approx(0.2)
    assert table["tpe-asha"]["median_final_vs_random"] == pytest.approx((-0.002 - 0.10) / 2)


@pytest.mark.parametrize("name", list(sq.strategies(7)))
@pytest.mark.parametrize("task", list(sq.DELTAS))
def test_every_task_with_every_strategy_is_a_valid_study_file(task: str, name: str) -> None:
    raw = sq.study_mapping(task, sq.strategies(*sq.task_shape(task))[name], seed=3, trials=30, epochs=None)
    cfg = build_config(raw, source=f"{task}.yaml")
    assert cfg.n_trials == 30 and cfg.seed == 3 and cfg.train.checkpoint is False
    if name == "defaults":
        assert "sampler" not in cfg.model_fields_set and "pruner" not in cfg.model_fields_set
        assert not cfg.starts_from_baseline
    if name.startswith(("baseline-first", "b-")):
        assert cfg.starts_from_baseline
    if name == "random":
        assert cfg.sampler.type == "random" and cfg.pruner.type == "none" and cfg.train.early_stopping is None
        assert not cfg.starts_from_baseline


def test_the_tabular_data_is_ten_seeded_classes() -> None:
    from bench_search_data import make_task  # type: ignore[import-not-found]

    x, y = make_task(root="ignored")
    again, _ = make_task(root=None)
    assert x.shape == (3000, 30) and sorted(set(y.tolist())) == list(range(10)) and (x == again).all()

