"""The names both sides of the torch boundary accept, defined once.

The study file's schema (config/, no torch) offers these names and the torch side (data, models,
settings, engine, steps) builds them; both import them from here, so a name is added in one place and
`tests/test_names.py` checks that every builder accepts every name the schema offers. Standard
library only.
"""

from __future__ import annotations

DATASETS = ("digits", "cifar10", "mnist", "fashion_mnist", "svhn", "image_folder", "digit_strings", "diabetes",
            "label_folder")
# Datasets whose labels are rows of characters padded with a blank class: they take data.max_length.
SEQUENCE_DATASETS = ("digit_strings", "label_folder")
DEFAULT_MAX_LENGTH = 5  # data.max_length of digit_strings: characters per image at most
MAX_LENGTH_LIMIT = 32
# Builtin models and their extra arguments (each a positive integer; left out, the model's default).
# heads: one linear head per character position (task multihead), output (N, heads, classes).
MODELS: dict[str, tuple[str, ...]] = {"seednet": ("width", "heads"), "mlp": ("width", "depth"), "resnet18": ("heads",)}
# Their defaults, as the builders' signatures have them (tests/test_models.py checks both sides): the baseline's.
MODEL_DEFAULTS: dict[str, dict[str, int | None]] = {"seednet": {"width": 32, "heads": None},
                                                    "mlp": {"width": 128, "depth": 2}, "resnet18": {"heads": None}}
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "step", "cosine", "exponential", "onecycle")
AMP_MODES = ("auto", "bf16", "fp16", "off")
GRAPH_MODES = ("auto", "on", "off")
AUGMENTATIONS = ("hflip", "crop")
# What the model learns (the study file's `task:`); hpsearch/tasks.py owns each one's loss, metrics and decoding.
TASKS = ("classification", "multihead", "regression")
# Each task's validation metrics (what evaluate reports, prefixed val_) and the direction that improves them.
TASK_METRICS: dict[str, dict[str, str]] = {
    "classification": {"val_accuracy": "maximize", "val_loss": "minimize"},
    "multihead": {"val_accuracy": "maximize", "val_char_accuracy": "maximize", "val_loss": "minimize"},
    "regression": {"val_mse": "minimize", "val_mae": "minimize", "val_r2": "maximize", "val_loss": "minimize"},
}
# Every metric name of any task and its direction (a name means the same in every task that reports it).
METRICS: dict[str, str] = {name: way for metrics in TASK_METRICS.values() for name, way in metrics.items()}
# Space parameters that set a training setting rather than a model argument: the fields of TrainConfig and
# TrainSettings a study may search (tests/test_settings.py checks both sides).
TRAIN_PARAMS = (
    "lr", "batch_size", "optimizer", "momentum", "nesterov", "weight_decay", "scheduler",
    "warmup_epochs", "step_size", "gamma", "accum_steps", "label_smoothing", "freeze_epochs", "backbone_lr_scale",
)

# data.bootstrap: out-of-bag splits per trial, 2 to this (each one trains a model), checked by the schema and data.splits.
MAX_BOOTSTRAP = 50
PRETRAINED_BUILTIN = "imagenet"  # model.pretrained's one named source (torchvision's ResNet-18 ImageNet weights)
# Costs measured with every trial (hpsearch.costs), each minimised: what objectives: and constraints: may name
# besides the metrics. `params` is known before training, the others only after it.
COSTS: dict[str, str] = {"params": "minimize", "latency_ms": "minimize", "peak_memory_mb": "minimize",
                         "train_time": "minimize"}
PRE_TRAINING_COSTS = ("params",)
