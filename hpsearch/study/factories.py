"""Sampler and pruner factories and sampler seeds."""

from __future__ import annotations

import warnings

import optuna

from hpsearch import space
from hpsearch.config import StudyConfig
from hpsearch.ids import derive_seed

__all__ = ["derive_seed", "make_pruner", "make_sampler"]


def make_sampler(cfg: StudyConfig, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The sampler the file asks for, seeded from the study seed (or `seed`, for one of several workers)."""
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
