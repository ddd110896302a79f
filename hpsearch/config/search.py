"""The search sections of the schema: space parameters, samplers, pruners, the epoch budget, warm starts, and the
default pairing a file without sampler:/pruner: gets."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from hpsearch.config.base import Scalar, Strict


# --------------------------------------------------------------------------- search space


class _Param(Strict):
    when: dict[str, Union[Scalar, list[Scalar]]] | None = None


class FloatParam(_Param):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = None

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        _check_range(self.low, self.high, self.log, self.step)
        return self


class IntParam(_Param):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = 1

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        _check_range(self.low, self.high, self.log, None if self.step == 1 else self.step)
        if self.step < 1:
            raise ValueError(f"step must be >= 1 (got {self.step})")
        return self


class CategoricalParam(_Param):
    type: Literal["categorical"]
    choices: list[Scalar]

    @field_validator("choices")
    @classmethod
    def _non_empty_unique(cls, choices: list[Scalar]) -> list[Scalar]:
        if not choices:
            raise ValueError("choices is empty; list at least one value")
        if len({repr(c) for c in choices}) != len(choices):
            raise ValueError(f"choices has duplicates: {choices}")
        return choices


def _check_range(low: float, high: float, log: bool, step: float | None) -> None:
    if low > high:
        raise ValueError(f"low ({low}) is greater than high ({high}); swap them")
    if log and low <= 0:
        raise ValueError(f"log: true needs low > 0 (got low={low}); use a positive low such as 1e-6 or set log: false")
    if log and step is not None:
        raise ValueError("step and log: true cannot be combined; drop one")
    if step is not None and step <= 0:
        raise ValueError(f"step must be > 0 (got {step})")


ParamSpec = Annotated[Union[FloatParam, IntParam, CategoricalParam], Field(discriminator="type")]


# --------------------------------------------------------------------------- sections


class TpeSampler(Strict):
    type: Literal["tpe"]
    n_startup_trials: int = Field(10, ge=0)
    multivariate: bool = True
    group: bool = False  # multivariate per group of parameters that occur together (conditional spaces)
    constant_liar: bool = True

    @model_validator(mode="after")
    def _group_needs_multivariate(self) -> TpeSampler:
        if self.group and not self.multivariate:
            raise ValueError("group: true needs multivariate: true; set both or drop group")
        return self


class RandomSampler(Strict):
    type: Literal["random"]


class CmaesSampler(Strict):
    type: Literal["cmaes"]
    n_startup_trials: int = Field(1, ge=0)
    sigma0: float | None = Field(None, gt=0)


class GpSampler(Strict):
    type: Literal["gp"]
    n_startup_trials: int = Field(10, ge=0)


class QmcSampler(Strict):
    type: Literal["qmc"]
    qmc_type: Literal["sobol", "halton"] = "sobol"
    scramble: bool = True


class GridSampler(Strict):
    type: Literal["grid"]


SamplerConfig = Annotated[
    Union[TpeSampler, RandomSampler, CmaesSampler, GpSampler, QmcSampler, GridSampler],
    Field(discriminator="type"),
]


class MedianPruner(Strict):
    type: Literal["median"]
    n_startup_trials: int = Field(5, ge=0)
    n_warmup_steps: int = Field(2, ge=0)
    interval_steps: int = Field(1, ge=1)


class PercentilePruner(Strict):
    type: Literal["percentile"]
    percentile: float = Field(25.0, ge=0, le=100)
    n_startup_trials: int = Field(5, ge=0)
    n_warmup_steps: int = Field(2, ge=0)
    interval_steps: int = Field(1, ge=1)


class SuccessiveHalvingPruner(Strict):
    type: Literal["successive_halving"]
    min_resource: int = Field(1, ge=1)
    reduction_factor: int = Field(3, ge=2)


class HyperbandPruner(Strict):
    type: Literal["hyperband"]
    min_resource: int = Field(1, ge=1)
    reduction_factor: int = Field(3, ge=2)


class PatientPruner(Strict):
    type: Literal["patient"]
    patience: int = Field(2, ge=0)
    min_delta: float = Field(0.0, ge=0)
    wrapped: Literal["median", "none"] = "median"


class ThresholdPruner(Strict):
    type: Literal["threshold"]
    lower: float | None = None
    upper: float | None = None
    n_warmup_steps: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> ThresholdPruner:
        if self.lower is None and self.upper is None:
            raise ValueError("threshold pruner needs lower or upper (or both)")
        if self.lower is not None and self.upper is not None and self.lower > self.upper:
            raise ValueError(f"lower ({self.lower}) is greater than upper ({self.upper})")
        return self


class NoPruner(Strict):
    type: Literal["none"]


PrunerConfig = Annotated[
    Union[MedianPruner, PercentilePruner, SuccessiveHalvingPruner, HyperbandPruner, PatientPruner,
          ThresholdPruner, NoPruner],
    Field(discriminator="type"),
]


class BudgetConfig(Strict):
    epochs: int | None = Field(None, ge=1, le=10**9)  # training epochs study-wide (all trials, all workers)


class WarmStartConfig(Strict):
    """A previous study whose finished trials seed the sampler: `study_file:`, or `study:` (+ `storage:`)."""

    study: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    storage: str | None = None  # default: this study's storage
    study_file: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> WarmStartConfig:
        if (self.study is None) == (self.study_file is None):
            raise ValueError("warm_start needs either study: (with storage:) or study_file:, not both or neither")
        if self.study_file is not None and self.storage is not None:
            raise ValueError("warm_start.storage goes with study:, not study_file: (the file names its storage)")
        return self


AUTO_GP_MAX_DIM = 8  # sampler: auto picks GP up to this many parameters...

AUTO_GP_MAX_TRIALS = 100  # ...and this many trials (a GP fit grows with the cube of the trials)


def auto_sampler_type(space: dict[str, Any], n_trials: int, pruner: str = "none") -> str:
    """`sampler: auto`: GP for a small space of numbers only (no categorical, no when:), few trials and no pruner,
    else TPE. Optuna's GP fits complete trials only, so behind a pruner it learns from the few that finish (measured:
    bench/RESULTS.md, "Search quality")."""
    numeric = all(isinstance(spec, (FloatParam, IntParam)) and not spec.when for spec in space.values())
    small = len(space) <= AUTO_GP_MAX_DIM and n_trials <= AUTO_GP_MAX_TRIALS
    return "gp" if space and numeric and small and pruner == "none" else "tpe"


def default_min_resource(epochs: int) -> int:
    """The default pruner's first rung: a ninth of the epochs, rounded up (rungs at m, 3m, 9m >= epochs)."""
    return max(1, math.ceil(epochs / 9))


def default_sampler(space: dict[str, Any]) -> TpeSampler:
    """The default sampler: TPE with as many random start-up trials as the space has parameters."""
    return TpeSampler(type="tpe", n_startup_trials=len(space), multivariate=True, group=True, constant_liar=True)


def default_pruner(epochs: int) -> SuccessiveHalvingPruner:
    """The default pruner: asynchronous successive halving (ASHA), factor 3, from :func:`default_min_resource`."""
    return SuccessiveHalvingPruner(type="successive_halving", min_resource=default_min_resource(epochs),
                                   reduction_factor=3)
