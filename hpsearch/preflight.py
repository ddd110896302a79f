"""The checks before a study is touched: the data loads and splits, the model builds and runs on it, a custom
factory takes its arguments; and the memory probe that sizes the workers per GPU.

`preflight` is what `run` and `validate` do before any trial; a worker repeats its parts on its own device
(`hpsearch.worker.prepare_context`). A bridge module: it holds a config and a model.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import replace

import torch

from hpsearch import names, signals, space
from hpsearch.config import StudyConfig
from hpsearch.data import ArrayData, DeviceData, load_dataset, split_folds
from hpsearch.engine import Trainer
from hpsearch.errors import DataError, ModelError
from hpsearch.models import build_model
from hpsearch.objective import WorkerContext, model_spec, release_memory, start_from_pretrained, train_settings
from hpsearch.plugins import import_callable
from hpsearch.pretrained import head_parameters, imagenet_file
from hpsearch.slots import MemoryProbe
from hpsearch.tasks import task_arguments, task_from_record

log = logging.getLogger("hpsearch")


def check_factory_arguments(cfg: StudyConfig) -> None:
    """Every model.args key and searched model argument of a custom factory is a parameter it accepts."""
    if not cfg.model.is_custom:
        return  # config checked the builtins' arguments already
    try:
        factory = import_callable(cfg.model.name, "model", ModelError)
    except ModelError as exc:
        raise ModelError(f"{cfg.source}: model.name: {exc}") from None
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return  # no inspectable signature (some builtins, C extensions): the first build will tell
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    given = ("input_shape", "num_classes", "dropout", "num_positions", "num_outputs")  # hpsearch passes these
    accepted = [p.name for p in parameters if p.name not in given and p.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    searched = [name for name in cfg.space if name not in names.TRAIN_PARAMS and name != "dropout"]
    for where, name in [(f"model.args.{key}", key) for key in cfg.model.args] + [(f"space.{n}", n) for n in searched]:
        if name not in accepted:
            raise ModelError(f"{cfg.source}: {where}: model factory '{cfg.model.name}' takes no argument '{name}' "
                             f"(it accepts: {', '.join(accepted) or 'none'}); add it to the factory's parameters "
                             f"or remove {where}")


def check_model(cfg: StudyConfig, data: DeviceData, fetch: bool = True) -> None:
    """Build the model and run it on two samples before any trial: a bad name, argument or shape is exit 2.

    A model that does not fit the data (a first layer of the wrong size, the wrong number of
    outputs) would otherwise fail every trial the same way. Pretrained weights are loaded into it (a
    missing file is exit 2 here, before any trial); without ``fetch`` nothing is downloaded, and
    ImageNet weights that ``model.download`` would fetch are not checked.
    """
    check_factory_arguments(cfg)
    try:
        model = build_model(cfg.model.name, tuple(data.input_shape), data.num_classes, dropout=0.0,
                            **cfg.model.args, **task_arguments(cfg.model.name, data.inputs))
    except ModelError as exc:
        raise ModelError(f"{cfg.source}: model: {exc}") from None
    try:  # these messages name their own key (model.pretrained, train.freeze_epochs)
        if fetch or not (cfg.model.download and not imagenet_file().is_file()):
            start_from_pretrained(cfg, model)
        if _splits_backbone(cfg):
            head_parameters(model)
    except ModelError as exc:
        raise ModelError(f"{cfg.source}: {exc}") from None
    x, _ = next(data.batches(torch.arange(min(2, int(data.y.shape[0]))), 2, shuffle=False))
    task = task_from_record(data.inputs)
    needs = ", ".join(map(str, task.output_shape(-1)[1:]))
    try:
        with torch.no_grad():
            out = model.to(data.device).eval()(x)
    except Exception as exc:  # noqa: BLE001 - user code: whatever it raises is the message
        raise ModelError(f"{cfg.source}: model: {cfg.model.name} fails on a batch of the data, inputs of shape "
                         f"{tuple(x.shape)} ({type(exc).__name__}: {' '.join(str(exc).split())[:300]}); make it "
                         f"accept (N, {', '.join(map(str, data.input_shape))}) and return (N, {needs})"
                         ) from None
    problem = task.shape_problem(out, int(x.shape[0]), cfg.model.name)
    if problem is not None:
        raise ModelError(f"{cfg.source}: model: {problem}")


def _splits_backbone(cfg: StudyConfig) -> bool:
    """Whether some trial trains head and backbone apart (frozen or scaled): the model must have a head."""
    return (cfg.train.freeze_epochs > 0 or cfg.train.backbone_lr_scale != 1.0
            or any(name in cfg.space for name in ("freeze_epochs", "backbone_lr_scale")))


def load_pool(cfg: StudyConfig) -> ArrayData:
    """The dataset the file names, loaded once (on the CPU); a failure names data.dataset."""
    try:
        return load_dataset(cfg.data.dataset, root=cfg.data.root, download=cfg.data.download,
                            image_size=cfg.data.image_size, task=cfg.task, max_length=cfg.data.max_length,
                            seed=cfg.seed, labels=cfg.data.labels)
    except DataError as exc:
        raise DataError(f"{cfg.source}: data.dataset: {exc}") from None


def split_data(cfg: StudyConfig, labels: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (train, validation) index folds, seeded by the study seed; a failure names the split key.

    ``labels`` are what the split stratifies on: the pool's ``strata`` (classes, string lengths, or one stratum).
    """
    split = cfg.data.split
    try:
        return split_folds(labels, val_split=split["val_split"], cv_folds=split["cv_folds"],
                           bootstrap=split["bootstrap"], seed=cfg.seed)
    except DataError as exc:
        key = next(key for key in ("cv_folds", "bootstrap", "val_split") if split[key] is not None)
        raise DataError(f"{cfg.source}: data.{key}: {exc}") from None


def check_image_keys(cfg: StudyConfig, pool: ArrayData) -> None:
    """TTA and augmentation flip and crop images: data of another shape (tabular features) is refused here, once,
    instead of failing every trial."""
    if pool.is_image:
        return
    train = cfg.train
    key, value = ("tta_val", train.tta_val) if train.tta_val > 1 else ("augment", list(train.augment))
    if train.tta_val > 1 or train.augment:
        raise DataError(f"{cfg.source}: train.{key}: {key} = {value} flips or crops images (N, C, H, W), but dataset "
                        f"'{cfg.data.dataset}' has samples of shape {tuple(pool.input_shape)}; set "
                        f"{'tta_val: 1 and ' if key == 'tta_val' else ''}augment: [] for this data")


def preflight(cfg: StudyConfig, fetch: bool = True) -> None:
    """Load the data and build the model once on the CPU, so bad input fails before the study is touched.

    ``fetch=False`` (validate): pretrained weights are not downloaded.
    """
    with signals.interruptible():  # nothing to hand back yet: a stop signal ends the loading at once
        pool = load_pool(cfg)
        check_image_keys(cfg, pool)
        split_data(cfg, pool.strata)
        check_model(cfg, DeviceData.place(pool, torch.device("cpu")), fetch=fetch)



# Every builtin model argument (width, depth): the probe takes their largest values in the space.
MODEL_SIZE_ARGS = tuple(sorted({arg for args in names.MODELS.values() for arg in args}))
CUDA_CONTEXT_BYTES = 600 * 2**20  # what a process's CUDA context takes besides its tensors (typical, lazy loading)


def probe_memory(ctx: WorkerContext) -> MemoryProbe | None:
    """Peak memory of two training steps at the largest batch size and model in the space (CUDA only).

    Run by the first worker on a GPU before its first trial, so the supervisor can size the
    workers per GPU; None off CUDA or when the probe fails (the reason is logged).
    """
    if ctx.device.type != "cuda":
        return None
    cfg = ctx.cfg
    params = space.largest_point(cfg, ("batch_size", *MODEL_SIZE_ARGS, *cfg.model.args))
    settings = replace(train_settings(cfg, params, ctx.labels, ctx.data.num_classes), epochs=1, cuda_graphs="off")
    spec = model_spec(cfg, params, ctx.data)
    torch.cuda.synchronize(ctx.device)
    base = torch.cuda.memory_allocated(ctx.device)
    torch.cuda.reset_peak_memory_stats(ctx.device)
    try:
        model = build_model(spec["name"], tuple(spec["input_shape"]), spec["num_classes"], dropout=spec["dropout"],
                            **spec["kwargs"])
        trainer = Trainer(model, ctx.data, ctx.folds[0][0], ctx.folds[0][1], settings, seed=0)
        trainer.sample_steps(2)
        torch.cuda.synchronize(ctx.device)
        peak = torch.cuda.max_memory_allocated(ctx.device) - base
        del trainer, model
    except torch.cuda.OutOfMemoryError:
        peak = None
    except Exception as exc:  # noqa: BLE001 - the trials will report it properly; the probe just gives up
        log.warning("memory probe failed (%s: %s); one trial per GPU", type(exc).__name__, exc)
        return None
    release_memory(ctx.device)
    free, total = torch.cuda.mem_get_info(ctx.device)
    return MemoryProbe(trial_peak=free if peak is None else peak, worker_fixed=base + CUDA_CONTEXT_BYTES,
                       free=free, total=total, batch_size=settings.batch_size)
