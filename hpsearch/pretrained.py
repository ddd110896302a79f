"""Starting a model from pretrained weights: where the file is, reading it once, fitting it to the model.

``pretrained: imagenet`` (resnet18 only) is torchvision's ``ResNet18_Weights.IMAGENET1K_V1`` file in the
local torch hub cache (``torch.hub.get_dir()/checkpoints/``, i.e. ``$TORCH_HOME/hub/checkpoints/``); it is
downloaded only when asked (``model.download: true``). Any other value is the path of a state dict (or a
checkpoint holding one under ``model`` or ``state_dict``). Tensors whose name and shape fit the model are
copied; the rest (a classifier head for another number of classes, the small-image stem of hpsearch's
resnet18 against ImageNet's 7x7 one) keep the model's fresh initialisation, and :func:`apply_pretrained` says
which. The head (what ``train.freeze_epochs`` leaves training) is :func:`head_parameters`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpsearch import names
from hpsearch.errors import ModelError

__all__ = ["IMAGENET", "Backbone", "apply_pretrained", "head_parameters", "imagenet_file", "load_state",
           "resolve_source"]

IMAGENET = names.PRETRAINED_BUILTIN
HEAD_NAMES = ("fc", "head", "heads", "classifier")  # a top-level child of these names is the model's head
_STATES: dict[str, dict[str, torch.Tensor]] = {}  # read once per worker: every trial and fold starts from it


def _imagenet_url() -> str:
    from torchvision.models import ResNet18_Weights

    return ResNet18_Weights.IMAGENET1K_V1.url


def imagenet_file() -> Path:
    """Where torchvision keeps ResNet-18's ImageNet weights: the torch hub cache's checkpoints folder."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(_imagenet_url())


def resolve_source(source: str, model: str, download: bool = False, where: str = "model.pretrained") -> Path:
    """The weights file ``source`` names, on disk; ``download`` fetches ImageNet's into the hub cache first.

    A file that is not there is a :class:`ModelError` naming the file, where it goes and how to get it.
    """
    if source == IMAGENET:
        if model != "resnet18":
            raise ModelError(f"{where}: imagenet weights exist for resnet18 only, not '{model}'; "
                             f"give a path to a state dict instead")
        path = imagenet_file()
        if not path.is_file() and download:
            torch.hub.load_state_dict_from_url(_imagenet_url(), model_dir=str(path.parent), map_location="cpu",
                                               progress=False)
        if not path.is_file():
            raise ModelError(f"{where}: imagenet weights not found at {path}; copy {os.path.basename(path)} "
                             f"(from {_imagenet_url()}) into {path.parent} ($TORCH_HOME/hub/checkpoints), "
                             f"or set model.download: true on a machine with internet")
        return path
    path = Path(source).expanduser()
    if not path.is_file():
        raise ModelError(f"{where}: weights file {path} not found (relative paths are taken from {Path.cwd()}); "
                         f"put the state dict there (torch.save(model.state_dict(), '{path}')) or fix the path")
    return path


def load_state(path: Path, where: str = "model.pretrained") -> dict[str, torch.Tensor]:
    """The state dict in ``path``, read once per process (a cache keyed by the resolved path)."""
    key = str(path.resolve())
    if key not in _STATES:
        try:
            raw = torch.load(key, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - pickle, zip or OS errors: the file is what is wrong
            raise ModelError(f"{where}: cannot read weights file {path} ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:200]}); save it with torch.save(model.state_dict(), path)"
                             ) from None
        _STATES[key] = _state_of(raw, path, where)
    return _STATES[key]


def _state_of(raw: Any, path: Path, where: str) -> dict[str, torch.Tensor]:
    for key in ("model", "state_dict"):  # an hpsearch checkpoint, or a training script's
        if isinstance(raw, Mapping) and isinstance(raw.get(key), Mapping):
            raw = raw[key]
    if not isinstance(raw, Mapping) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ModelError(f"{where}: {path} holds no state dict (a mapping of names to tensors); "
                         f"save it with torch.save(model.state_dict(), path)")
    return dict(raw)


def apply_pretrained(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> dict[str, Any]:
    """Copy every tensor of ``state`` whose name and shape fit ``model``; the rest keep their initialisation.

    Returns what the trial records: ``{source, loaded: n, skipped: [model tensors not loaded], unused: n}``
    (``unused``: tensors of the file the model has no place for). A file that fits nothing is an error.
    """
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    if not fitting:
        raise ModelError(f"model.pretrained: no tensor of {source} fits the model (names or shapes differ "
                         f"everywhere, e.g. {next(iter(state), 'none')}); use weights saved from this architecture")
    with torch.no_grad():
        for key, value in fitting.items():
            own[key].copy_(value)
    return {"source": source, "loaded": len(fitting), "skipped": [k for k in own if k not in fitting],
            "unused": len(state) - len(fitting)}


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The head's parameters: a top-level child named fc, head, heads or classifier; else the last Linear module.

    What ``train.freeze_epochs`` keeps training and ``train.backbone_lr_scale`` leaves at the full rate;
    everything else is the backbone. A model with neither has no head: a :class:`ModelError`.
    """
    children = dict(model.named_children())
    for name in HEAD_NAMES:
        if name in children and any(True for _ in children[name].parameters()):
            return list(children[name].parameters())
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ModelError(f"train.freeze_epochs / backbone_lr_scale: {type(model).__name__} has no head (no child "
                         f"named {', '.join(HEAD_NAMES)} and no nn.Linear); name the head module fc")
    return list(linears[-1].parameters())


class Backbone:
    """What ``train.freeze_epochs`` holds still: the trainable parameters outside the head and the norms with running
    statistics (BatchNorm) outside it. :meth:`freeze` switches the parameters' gradients off or on; while frozen the
    trainer keeps ``norms`` in eval mode, so their statistics stay as loaded and normalise the batches."""

    def __init__(self, model: nn.Module, head: list[nn.Parameter]) -> None:
        ids = {id(p) for p in head}
        self.params = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        # _NormBase: the BatchNorm and InstanceNorm family, the norms whose running statistics training mode updates.
        self.norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
                      and not any(id(p) in ids for p in m.parameters(recurse=False))]
        self.frozen = False

    def freeze(self, frozen: bool) -> bool:
        """Freeze (or thaw) the backbone; whether that changed anything (the training step then computes other
        things)."""
        if frozen == self.frozen:
            return False
        for p in self.params:
            p.requires_grad_(not frozen)
        self.frozen = frozen
        return True
