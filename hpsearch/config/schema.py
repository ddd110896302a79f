"""Pydantic models of the study file: data, model, train, workers and the study itself (the search sections are in
`search`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import Field, PrivateAttr, create_model, field_validator, model_validator

from hpsearch import names
from hpsearch.config.base import CALLABLE_RE, MAX_ENQUEUE, Scalar, Strict
from hpsearch.config.messages import _did_you_mean
from hpsearch.config.objectives import Bound, Goal, ObjectiveSpec, check_constraints, check_objectives
from hpsearch.config.search import (AUTO_GP_MAX_DIM, AUTO_GP_MAX_TRIALS, BudgetConfig, GpSampler, MedianPruner,
    ParamSpec, PrunerConfig, SamplerConfig, TpeSampler, WarmStartConfig, auto_sampler_type, default_min_resource,
    default_pruner, default_sampler)
from hpsearch.ids import MAX_WORKERS

# The builtin models' arguments and their rule: a positive integer (None: the model's own default).
BUILTIN_MODEL_ARGS: dict[str, type[Strict]] = {
    name: create_model(f"{name.capitalize()}Args", __base__=Strict,
                       **{arg: (Optional[int], Field(None, ge=1)) for arg in args})  # type: ignore[call-overload]
    for name, args in names.MODELS.items()
}


def _builtin_or_callable(name: str, kind: str, builtins: Any, callable_word: str) -> str:
    """A builtin name, or user code as 'package.module:callable'; anything else is a clear error."""
    if name not in builtins and not CALLABLE_RE.match(name):
        raise ValueError(f"unknown {kind} '{name}'{_did_you_mean(name, builtins)}; use one of "
                         f"{', '.join(builtins)} or 'package.module:{callable_word}'")
    return name


class DataConfig(Strict):
    dataset: str = "digits"
    root: str = "./data"
    download: bool = False
    val_split: float | None = Field(None, gt=0, lt=1)
    cv_folds: int | None = Field(None, ge=2, le=20)
    bootstrap: int | None = None  # K out-of-bag splits, trained in lockstep like cv_folds (2..names.MAX_BOOTSTRAP)
    image_size: int | list[int] | None = None  # a square side, or [height, width] for label_folder
    labels: str | None = None  # label_folder's label file (relative to root), when not root/labels.json or .csv
    max_length: int | None = Field(None, ge=1, le=names.MAX_LENGTH_LIMIT)  # characters per sample (digit strings)
    memory_fraction: float = Field(0.5, gt=0, le=0.95)

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        return _builtin_or_callable(name, "dataset", names.DATASETS, "callable")

    @field_validator("bootstrap")
    @classmethod
    def _bootstrap_count(cls, k: int | None) -> int | None:
        if k is not None and not 2 <= k <= names.MAX_BOOTSTRAP:
            raise ValueError(f"bootstrap is the number of out-of-bag splits, between 2 and {names.MAX_BOOTSTRAP} "
                             f"(each one trains a model per trial), got {k}; set a count in that range")
        return k

    @field_validator("image_size")
    @classmethod
    def _image_side(cls, size: int | list[int] | None) -> int | list[int] | None:
        sides = [size] if isinstance(size, int) else size or []
        if isinstance(size, list) and len(size) != 2 or any(not 8 <= side <= 1024 for side in sides):
            raise ValueError(f"image_size is one side or [height, width], each from 8 to 1024 pixels, got {size}; "
                             f"for example image_size: 32 or image_size: [64, 128]")
        return size

    @model_validator(mode="after")
    def _label_folder_keys(self) -> DataConfig:
        if self.dataset != "label_folder" and (self.labels is not None or isinstance(self.image_size, list)):
            key = "labels" if self.labels is not None else "image_size: [height, width]"
            raise ValueError(f"{key} is for dataset label_folder, not '{self.dataset}'; "
                             f"{'remove it' if key == 'labels' else 'give one side, e.g. image_size: 32'}")
        return self

    @model_validator(mode="after")
    def _max_length_for_strings(self) -> DataConfig:
        if self.max_length is not None and self.dataset not in names.SEQUENCE_DATASETS:
            raise ValueError(f"max_length is for datasets of digit strings ({', '.join(names.SEQUENCE_DATASETS)}), "
                             f"not '{self.dataset}'; remove it")
        return self

    @model_validator(mode="after")
    def _one_split(self) -> DataConfig:
        chosen = [key for key in ("val_split", "cv_folds", "bootstrap") if getattr(self, key) is not None]
        if len(chosen) > 1:
            raise ValueError(f"{' and '.join(chosen)} are {'both' if len(chosen) == 2 else 'all'} set; keep one "
                             f"(val_split: hold-out, cv_folds: k-fold, bootstrap: out-of-bag)")
        return self

    @property
    def split(self) -> dict[str, Any]:
        """The split actually used: hold-out 0.2 unless the file asks for k-fold or bootstrap."""
        if self.cv_folds is not None or self.bootstrap is not None:
            return {"val_split": None, "cv_folds": self.cv_folds, "bootstrap": self.bootstrap}
        return {"val_split": self.val_split if self.val_split is not None else 0.2, "cv_folds": None, "bootstrap": None}


class ModelConfig(Strict):
    name: str = "mlp"
    args: dict[str, Scalar | list[Scalar]] = Field(default_factory=dict)
    # Start from weights: 'imagenet' (resnet18: torchvision's, from the torch hub cache) or a state-dict file.
    pretrained: str | None = Field(None, min_length=1)
    download: bool = False  # pretrained: imagenet may fetch the file into the hub cache (model's own key: data's
    #                         download is about datasets, and a study may want one without the other)

    @model_validator(mode="after")
    def _imagenet_for_resnet18(self) -> ModelConfig:
        if self.pretrained == names.PRETRAINED_BUILTIN and self.name != "resnet18":
            raise ValueError(f"pretrained: imagenet exists for resnet18 only, not '{self.name}'; "
                             f"give the path of a state dict instead")
        if self.download and self.pretrained != names.PRETRAINED_BUILTIN:
            raise ValueError("download: true fetches pretrained: imagenet only; remove it or set pretrained: imagenet")
        return self

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        return _builtin_or_callable(name, "model", names.MODELS, "factory")

    @model_validator(mode="after")
    def _known_args(self) -> ModelConfig:
        for key in self.args:
            _check_model_kwarg(self.name, key)
        return self

    @property
    def is_custom(self) -> bool:
        return self.name not in names.MODELS


class EarlyStoppingConfig(Strict):
    patience: int = Field(3, ge=1)
    min_delta: float = Field(0.0, ge=0)


class TrainConfig(Strict):
    epochs: int = Field(10, ge=1, le=100_000)
    lr: float | None = Field(None, gt=0)
    batch_size: int | None = Field(None, ge=1)
    optimizer: Literal[names.OPTIMIZERS] = "adamw"  # type: ignore[valid-type]
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    scheduler: Literal[names.SCHEDULERS] = "none"  # type: ignore[valid-type]
    warmup_epochs: float = Field(0.0, ge=0)
    step_size: int = Field(10, ge=1)
    gamma: float | None = Field(None, gt=0, le=1)  # None: 0.1 for step, 0.9 per epoch for exponential
    accum_steps: int = Field(1, ge=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    class_weighting: bool = False
    augment: list[Literal[names.AUGMENTATIONS]] = Field(default_factory=list)  # type: ignore[valid-type]
    amp: Literal[names.AMP_MODES] = "auto"  # type: ignore[valid-type]
    cuda_graphs: Literal[names.GRAPH_MODES] = "auto"  # type: ignore[valid-type]  # one CUDA graph per step (CUDA only)
    early_stopping: EarlyStoppingConfig | None = None
    checkpoint: bool = True
    resume_checkpoints: bool = True  # per-epoch state so a trial whose worker died resumes, not restarts
    freeze_epochs: int = Field(0, ge=0, le=100_000)  # the backbone at learning rate 0 for these first epochs
    backbone_lr_scale: float = Field(1.0, ge=0, le=100)  # backbone LR = lr * this (the head trains at lr)
    tta_val: int = Field(1, ge=1, le=64)  # validation logits averaged over this many views (1: none)

    @model_validator(mode="after")
    def _tta_needs_augment(self) -> TrainConfig:
        if self.tta_val > 1 and not self.augment:
            raise ValueError(f"tta_val = {self.tta_val} averages over augmented views, but augment is empty; "
                             f"set augment (e.g. [hflip, crop]) or tta_val: 1")
        return self


class WorkersConfig(Strict):
    n: int | None = Field(None, ge=1, le=MAX_WORKERS)
    gpus: Union[Literal["all", "none"], list[int]] = "all"
    # auto: sized from the first worker's memory probe, the GPU's free memory and the CPU cores
    trials_per_gpu: Union[int, str] = "auto"
    heartbeat_interval: int = Field(10, ge=1, le=3600)  # seconds between a running trial's heartbeats
    grace_period: int = Field(40, ge=2, le=86400)       # a trial silent this long is failed and retried
    max_retries: int = Field(3, ge=0, le=100)           # retries of a trial whose worker died
    max_restarts: int = Field(5, ge=0, le=1000)         # replacements of a dead worker per slot
    max_consecutive_failures: int = Field(5, ge=1, le=10_000)  # trials failing in a row that stop the study

    @model_validator(mode="after")
    def _grace_exceeds_heartbeat(self) -> WorkersConfig:
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError(f"grace_period ({self.grace_period}) must exceed heartbeat_interval "
                             f"({self.heartbeat_interval}); raise it to at least {2 * self.heartbeat_interval}")
        return self

    @field_validator("trials_per_gpu", mode="before")
    @classmethod
    def _auto_or_count(cls, value: Any) -> Any:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 64):
            return value
        raise ValueError(f"trials_per_gpu must be auto or a whole number from 1 to 64 (got {value!r})")

    @field_validator("gpus", mode="before")
    @classmethod
    def _parse_gpu_list(cls, gpus: Any) -> Any:
        if isinstance(gpus, str) and gpus not in ("all", "none"):
            try:
                return [int(part) for part in gpus.split(",") if part.strip()]
            except ValueError:
                raise ValueError(f"gpus must be 'all', 'none' or a list like [0, 1] (got '{gpus}')") from None
        if isinstance(gpus, int) and not isinstance(gpus, bool):
            return [gpus]
        return gpus


class StudyConfig(Strict):
    """The whole study file, resolved; `source` is the file it came from."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    storage: str | None = None
    output_dir: str | None = None
    direction: Literal["maximize", "minimize"] | None = None
    task: Literal[names.TASKS] = "classification"  # type: ignore[valid-type]  # what the model learns (hpsearch.tasks)
    metric: str = "val_accuracy"
    n_trials: int = Field(20, ge=1, le=1_000_000)
    timeout: float | None = Field(None, gt=0)
    seed: int = Field(0, ge=0, lt=2**31)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Unset (or sampler: auto): filled in from the space and the epochs after validation, see _fill_defaults.
    sampler: SamplerConfig = Field(default_factory=lambda: TpeSampler(type="tpe"))
    pruner: PrunerConfig = Field(default_factory=lambda: MedianPruner(type="median"))
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    baseline_first: bool = False  # trial 0 of a new study trains the baseline point (hpsearch.baseline)
    warm_start: WarmStartConfig | None = None
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    workers: WorkersConfig = Field(default_factory=WorkersConfig)
    space: dict[str, ParamSpec] = Field(default_factory=dict)
    enqueue: list[dict[str, Scalar]] = Field(default_factory=list, max_length=MAX_ENQUEUE)
    # ---- what to optimise besides one metric (config/objectives.py)
    objectives: list[ObjectiveSpec] | None = None  # two or three, instead of metric:
    constraints: dict[str, Bound] = Field(default_factory=dict)
    latency_batch: int = Field(1, ge=1, le=65_536)  # inputs per timed forward pass (latency_ms)
    # ----
    source: str = Field("<memory>", exclude=True)
    _sampler_auto: bool = PrivateAttr(False)

    @field_validator("objectives", mode="before")
    @classmethod
    def _a_list(cls, objectives: Any) -> Any:
        if objectives is not None and not isinstance(objectives, list):
            raise ValueError(f"objectives is a list of mappings, got {objectives!r}; write e.g. objectives: "
                             f"[{{metric: val_accuracy}}, {{metric: latency_ms}}]")
        return objectives

    @field_validator("constraints", mode="before")
    @classmethod
    def _a_mapping(cls, constraints: Any) -> Any:
        if not isinstance(constraints, dict):
            raise ValueError(f"constraints is a mapping of names to bounds, got {constraints!r}; write e.g. "
                             f"constraints: {{params: {{max: 1.0e6}}}}")
        return constraints

    @field_validator("objectives")
    @classmethod
    def _two_or_three(cls, objectives: list[ObjectiveSpec] | None) -> list[ObjectiveSpec] | None:
        return check_objectives(objectives)

    @field_validator("constraints")
    @classmethod
    def _known_constraints(cls, constraints: dict[str, Bound]) -> dict[str, Bound]:
        return check_constraints(constraints)

    @model_validator(mode="after")
    def _first_objective_is_the_metric(self) -> StudyConfig:
        if self.objectives is None or {"metric", "direction"} & self.model_fields_set:
            return self  # both given: rules._check_objectives names the clash
        self.__dict__["metric"] = self.objectives[0].metric  # the first objective is "the metric" everywhere else
        return self

    @property
    def goals(self) -> list[Goal]:
        """The objectives as (metric, direction) pairs: one pair for a study of one metric."""
        if self.objectives is None:
            return [Goal(self.metric, self.resolved_direction)]
        return [o.goal for o in self.objectives]

    @property
    def multi_objective(self) -> bool:
        return len(self.goals) > 1

    @model_validator(mode="wrap")
    @classmethod
    def _auto_sampler(cls, data: Any, handler: Any) -> StudyConfig:
        """`sampler: auto` validates as a TPE placeholder, then becomes what :func:`auto_sampler_type` picks."""
        auto = isinstance(data, dict) and data.get("sampler") == "auto"
        cfg = handler({**data, "sampler": {"type": "tpe"}} if auto else data)
        if auto:
            kind = auto_sampler_type(cfg.space, cfg.n_trials, cfg.pruner.type)
            cfg.__dict__["sampler"] = GpSampler(type="gp", n_startup_trials=len(cfg.space)) if kind == "gp" \
                else default_sampler(cfg.space)
            cfg._sampler_auto = True
        return cfg

    @model_validator(mode="after")
    def _fill_defaults(self) -> StudyConfig:
        # Written past the frozen model and left out of model_fields_set: a copy with other epochs or another
        # space (with_overrides) chooses again instead of inheriting this choice.
        if "sampler" not in self.model_fields_set:
            self.__dict__["sampler"] = default_sampler(self.space)
        if "pruner" not in self.model_fields_set:
            self.__dict__["pruner"] = default_pruner(self.train.epochs)
        return self

    @property
    def sampler_auto(self) -> bool:
        return self._sampler_auto

    @property
    def starts_from_baseline(self) -> bool:
        """Whether trial 0 takes the baseline point (a space to take it from; rules refuse what has no trial 0)."""
        return self.baseline_first and bool(self.space)

    @property
    def chosen(self) -> dict[str, str]:
        """Which of sampler/pruner the file left to hpsearch, and how it chose (what `validate` says)."""
        out = {}
        if self._sampler_auto:
            out["sampler"] = (f"auto: {self.sampler.type} (GP for <= {AUTO_GP_MAX_DIM} numeric parameters without "
                              f"when:, <= {AUTO_GP_MAX_TRIALS} trials and pruner: none, else TPE)")
        elif "sampler" not in self.model_fields_set:
            out["sampler"] = f"default: TPE, n_startup_trials = {len(self.space)} (the space's parameters)"
        if self.unused_pruner is not None:
            out["pruner"] = f"none used: {self.unused_pruner}"
        elif "pruner" not in self.model_fields_set:
            out["pruner"] = (f"default: successive halving (ASHA), min_resource = ceil(train.epochs / 9) = "
                             f"{default_min_resource(self.train.epochs)}, reduction_factor 3")
        return out

    @property
    def unused_pruner(self) -> str | None:
        """Why the pruner set (or chosen by default) is not used: several objectives; None when it is used."""
        if not self.multi_objective or self.pruner.type == "none":
            return None
        return (f"{len(self.goals)} objectives: Optuna prunes no multi-objective trial, so pruner {self.pruner.type} "
                f"is not used (early stopping on {self.metric} still is, when train.early_stopping is set)")

    @property
    def resolved_direction(self) -> str:
        return self.direction or names.METRICS[self.metric]

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{Path(self.out_dir) / 'study.db'}"

    @property
    def out_dir(self) -> str:
        return self.output_dir or str(Path("runs") / self.name)

    def resolved(self) -> dict[str, Any]:
        """Every setting with its default filled in, as plain data (what `validate` prints)."""
        data = self.model_dump(mode="json")
        data.update(direction=self.resolved_direction, storage=self.storage_url, output_dir=self.out_dir)
        data["objectives"] = [goal._asdict() for goal in self.goals]
        data["data"].update(self.data.split)
        return data


# --------------------------------------------------------------------------- cross-field rules


def _check_model_kwarg(model: str, key: str) -> None:
    known = names.MODELS.get(model)
    if known is not None and key not in known:
        raise ValueError(f"model '{model}' takes no argument '{key}'{_did_you_mean(key, known)}"
                         f" (it accepts: {', '.join(known) or 'none'})")
