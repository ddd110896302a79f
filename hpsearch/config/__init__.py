"""The study file: pydantic models (`base`, `search`, `schema`), the rules across keys (`rules`), how an
error reads (`messages`) and YAML loading (`loading`).

`load_config(path)` is the entry point; everything after it trusts the returned `StudyConfig`.
"""

from __future__ import annotations

from hpsearch.config.base import (CALLABLE_RE, MAX_ALIAS_VALUES, MAX_ENQUEUE, MAX_STUDY_BYTES, RUN_ENV, Scalar,
    STORAGE_ENV, Strict)
from hpsearch.config.search import (CategoricalParam, CmaesSampler, FloatParam, GpSampler, GridSampler,
    HyperbandPruner, IntParam, MedianPruner, NoPruner, ParamSpec, PatientPruner, PercentilePruner, PrunerConfig,
    QmcSampler, RandomSampler, SamplerConfig, SuccessiveHalvingPruner, ThresholdPruner, TpeSampler)
from hpsearch.config.schema import (BUILTIN_MODEL_ARGS, DataConfig, EarlyStoppingConfig, ModelConfig, StudyConfig,
    TrainConfig, WorkersConfig)
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
