"""The study file: pydantic models (schema), the rules across keys (rules), YAML loading (loading).

`load_config(path)` is the entry point; everything after it trusts the returned `StudyConfig`.
"""

from __future__ import annotations

from hpsearch.config.schema import (BUILTIN_MODEL_ARGS, CALLABLE_RE, CategoricalParam, CmaesSampler, DataConfig,
    EarlyStoppingConfig, FloatParam, GpSampler, GridSampler, HyperbandPruner, IntParam, MAX_ALIAS_VALUES, MAX_ENQUEUE,
    MAX_STUDY_BYTES, MedianPruner, ModelConfig, NoPruner, ParamSpec, PatientPruner, PercentilePruner, PrunerConfig,
    QmcSampler, RUN_ENV, RandomSampler, STORAGE_ENV, SamplerConfig, Scalar, Strict, StudyConfig,
    SuccessiveHalvingPruner, ThresholdPruner, TpeSampler, TrainConfig, WorkersConfig)
from hpsearch.config.rules import space_order
from hpsearch.config.loading import build_config, load_config, with_overrides

__all__ = [
    "BUILTIN_MODEL_ARGS",
    "CALLABLE_RE",
    "CategoricalParam",
    "CmaesSampler",
    "DataConfig",
    "EarlyStoppingConfig",
    "FloatParam",
    "GpSampler",
    "GridSampler",
    "HyperbandPruner",
    "IntParam",
    "MAX_ALIAS_VALUES",
    "MAX_ENQUEUE",
    "MAX_STUDY_BYTES",
    "MedianPruner",
    "ModelConfig",
    "NoPruner",
    "ParamSpec",
    "PatientPruner",
    "PercentilePruner",
    "PrunerConfig",
    "QmcSampler",
    "RUN_ENV",
    "RandomSampler",
    "STORAGE_ENV",
    "SamplerConfig",
    "Scalar",
    "Strict",
    "StudyConfig",
    "SuccessiveHalvingPruner",
    "ThresholdPruner",
    "TpeSampler",
    "TrainConfig",
    "WorkersConfig",
    "build_config",
    "load_config",
    "space_order",
    "with_overrides",
]
