"""The names both sides of the torch boundary accept, defined once.

The study file's schema (config/, no torch) offers these names and the torch side (data, models,
settings, engine, steps) builds them; both import them from here, so a name is added in one place and
`tests/test_names.py` checks that every builder accepts every name the schema offers. Standard
library only.
"""

from __future__ import annotations

DATASETS = ("digits", "cifar10", "mnist", "fashion_mnist", "svhn", "image_folder")
# Builtin models and their extra arguments (each a positive integer; left out, the model's default).
MODELS: dict[str, tuple[str, ...]] = {"seednet": ("width",), "mlp": ("width", "depth"), "resnet18": ()}
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "step", "cosine", "exponential", "onecycle")
AMP_MODES = ("auto", "bf16", "fp16", "off")
GRAPH_MODES = ("auto", "on", "off")
AUGMENTATIONS = ("hflip", "crop")
METRICS: dict[str, str] = {"val_accuracy": "maximize", "val_loss": "minimize"}  # what evaluate reports, prefixed val_
# Space parameters that set a training setting rather than a model argument: the fields of TrainConfig and
# TrainSettings a study may search (tests/test_settings.py checks both sides).
TRAIN_PARAMS = (
    "lr", "batch_size", "optimizer", "momentum", "nesterov", "weight_decay", "scheduler",
    "warmup_epochs", "step_size", "gamma", "accum_steps", "label_smoothing",
)
# Costs measured with every trial (hpsearch.costs), each minimised: what objectives: and constraints: may name
# besides the metrics. `params` is known before training, the others only after it.
COSTS: dict[str, str] = {"params": "minimize", "latency_ms": "minimize", "peak_memory_mb": "minimize",
                         "train_time": "minimize"}
PRE_TRAINING_COSTS = ("params",)
