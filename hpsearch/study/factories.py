"""Sampler and pruner factories and sampler seeds."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial

from hpsearch import records, space
from hpsearch.baseline import baseline_point
from hpsearch.config import StudyConfig
from hpsearch.ids import derive_seed

__all__ = ["derive_seed", "make_pruner", "make_sampler"]


def make_sampler(cfg: StudyConfig, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The sampler the file asks for, seeded from the study seed (or `seed`, for one of several workers);
    with `baseline_first`, trial 0 takes the file's baseline point."""
    sampler = _file_sampler(cfg, seed)
    if not cfg.starts_from_baseline:
        return sampler
    return BaselineFirst(sampler, lambda: baseline_point(cfg))


class BaselineFirst(optuna.samplers.BaseSampler):
    """Trial 0 of the study takes the baseline point; every other trial, and every hook, is `inner`'s.

    By trial number, not by enqueueing: the storage gives number 0 to one trial only, so several workers
    opening a new study at once cannot queue the point twice, and a study that already has trials
    (warm-started, `enqueue:`d, continued) never asks for a trial 0.
    """

    def __init__(self, inner: optuna.samplers.BaseSampler, point: Callable[[], dict[str, Any]]) -> None:
        self.inner = inner
        self._point = point

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {} if trial.number == 0 else self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {} if trial.number == 0 else self.inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        if trial.number == 0:
            point = self._point()
            if param_name in point:  # the point is drawn in the space's own order and when: rule
                return point[param_name]
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.inner.before_trial(study, trial)
        if trial.number == 0 and records.OPTUNA_FIXED_PARAMS not in trial.system_attrs:
            study._storage.set_trial_user_attr(trial._trial_id, records.BASELINE, True)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: optuna.trial.TrialState,
                    values: Any) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


def _file_sampler(cfg: StudyConfig, seed: int | None) -> optuna.samplers.BaseSampler:
    s = cfg.sampler
    seed = cfg.seed if seed is None else seed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if s.type == "tpe":
            return optuna.samplers.TPESampler(n_startup_trials=s.n_startup_trials, multivariate=s.multivariate,
                                              group=s.group, constant_liar=s.constant_liar,
                                              seed=seed)
        if s.type == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if s.type == "cmaes":
            return optuna.samplers.CmaEsSampler(n_startup_trials=s.n_startup_trials, sigma0=s.sigma0, seed=seed,
                                                warn_independent_sampling=False)
        if s.type == "gp":
            return optuna.samplers.GPSampler(n_startup_trials=s.n_startup_trials, seed=seed,
                                             warn_independent_sampling=False)
        if s.type == "qmc":
            return optuna.samplers.QMCSampler(qmc_type=s.qmc_type, scramble=s.scramble, seed=seed,
                                              warn_asynchronous_seeding=False, warn_independent_sampling=False)
        return optuna.samplers.GridSampler(space.grid(cfg), seed=seed)


def make_pruner(cfg: StudyConfig) -> optuna.pruners.BasePruner:
    """The pruner the file asks for; hyperband's max resource is the epoch budget."""
    p = cfg.pruner
    if p.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps,
                                           interval_steps=p.interval_steps)
    if p.type == "percentile":
        return optuna.pruners.PercentilePruner(p.percentile, n_startup_trials=p.n_startup_trials,
                                               n_warmup_steps=p.n_warmup_steps, interval_steps=p.interval_steps)
    if p.type == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)
    if p.type == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=p.min_resource, max_resource=cfg.train.epochs,
                                              reduction_factor=p.reduction_factor)
    if p.type == "patient":
        wrapped = optuna.pruners.MedianPruner() if p.wrapped == "median" else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # stable in practice since 2.8
            return optuna.pruners.PatientPruner(wrapped, patience=p.patience, min_delta=p.min_delta)
    if p.type == "threshold":
        return optuna.pruners.ThresholdPruner(lower=p.lower, upper=p.upper, n_warmup_steps=p.n_warmup_steps)
    return optuna.pruners.NopPruner()
