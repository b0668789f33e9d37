"""Our checkpoint: make one from a model, load one (``weights_only=True``), rebuild its model.

A checkpoint is a plain dict of tensors and plain data, so ``torch.load(weights_only=True)``
reads it and no file can run code while loading::

    {"format": "vit-checkpoint", "format_version": 1, "vit_version": "0.1.0",
     "model": state_dict,            # the weights to predict with (the EMA weights when EMA is on)
     "model_config": {...},          # vit.models.architecture.model_spec: asdict(ViTConfig), or
                                     # {"timm_name": ..., "timm_args": {...}} for a timm model
     "classes": ["cat", "dog"],
     "preprocess": {"img_size": 224, "mean": [...], "std": [...], "crop_pct": 0.875},
     "config": {...},                # the resolved run Config (vit.config.to_dict)
     "epoch": 3, "step": 1200, "best_top1": 91.5, "metrics": {...},
     # resume state (last.pt only: make_checkpoint(..., training=TrainingState(...))):
     "train_model": state_dict | None, "optimizer": {...}, "scaler": {...} | None,
     "ema": state_dict | None, "extra": {"rng": ..., "batches_done": ...}}

Resume keys whose value would be None are left out (``ckpt.get("ema")`` reads the same).

    ckpt = load_checkpoint("runs/x/best.pt")
    model = model_from_checkpoint(ckpt)
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vit import __version__, run_folder
from vit.errors import CheckpointError, first_line
from vit.io import FORMAT, FORMAT_VERSION, read_weights, sidecar_path
from vit.models.architecture import model_from_spec, model_spec
from vit.runtime import unwrap_model

__all__ = [
    "RESUME_KEYS",
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointError",
    "TrainingState",
    "make_checkpoint",
    "load_checkpoint",
    "model_from_checkpoint",
]

logger = logging.getLogger(__name__)


# --- building a checkpoint --------------------------------------------------------------------


def _model_state(model: nn.Module | None) -> dict[str, torch.Tensor] | None:
    """The state_dict of the plain model: names without DDP / torch.compile prefixes."""
    return None if model is None else unwrap_model(model).state_dict()


def _plain(obj: Any) -> Any:
    """Plain Python data (what ``weights_only`` accepts): dataclasses, numpy scalars, 0-d
    tensors, paths and tuples become dicts / numbers / str / lists; other tensors stay tensors."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _plain(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic) or (isinstance(obj, torch.Tensor) and obj.ndim == 0):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def _check_preprocess(preprocess: Mapping[str, Any]) -> dict[str, Any]:
    missing = sorted({"img_size", "mean", "std", "crop_pct"} - set(preprocess))
    if missing:
        raise ValueError(f"preprocess is missing {missing}")
    return _plain(preprocess)


@dataclasses.dataclass(frozen=True)
class TrainingState:
    """What makes a checkpoint resumable (last.pt): the optimizer, the GradScaler, the EMA and
    training models, and ``extra`` (random generators, batches done, ...).

    ``train_model_state`` and ``optimizer_state`` are states already gathered (from FSDP
    shards): they replace those of ``train_model`` and ``optimizer``."""

    optimizer: torch.optim.Optimizer | None = None
    scaler: torch.amp.GradScaler | None = None
    ema_model: nn.Module | None = None
    train_model: nn.Module | None = None
    extra: Mapping[str, Any] | None = None
    train_model_state: Mapping[str, torch.Tensor] | None = None
    optimizer_state: Mapping[str, Any] | None = None

    def entries(self) -> dict[str, Any]:
        """The resume keys of the checkpoint, each None when there is nothing to keep."""
        optimizer = self.optimizer
        return {
            "train_model": (dict(self.train_model_state) if self.train_model_state is not None
                            else _model_state(self.train_model)),
            "optimizer": (dict(self.optimizer_state) if self.optimizer_state is not None
                          else optimizer.state_dict() if optimizer is not None else None),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": _model_state(self.ema_model),
            "extra": _plain(self.extra) if self.extra is not None else None,
        }


# the keys only a resumable checkpoint (last.pt) fills: best.pt is last.pt without them
RESUME_KEYS = tuple(TrainingState().entries())


def make_checkpoint(
    *,
    model: nn.Module,
    classes: list[str],
    preprocess: Mapping[str, Any],
    config: Mapping[str, Any],
    epoch: int,
    step: int,
    best_top1: float | None,
    metrics: Mapping[str, Any],
    training: TrainingState | None = None,
    model_state: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict (see the module docstring); pass ``training`` to make it resumable.
    ``model`` may be wrapped (DDP, torch.compile): keys come out unprefixed. ``model_state`` is
    its state already gathered (from FSDP shards), which replaces that of ``model``.

    Tensors are not copied: save the dict right away, before the next optimizer step.
    """
    plain_model = unwrap_model(model)
    ckpt: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "vit_version": __version__,
        "model": dict(model_state) if model_state is not None else _model_state(plain_model),
        "model_config": model_spec(plain_model),
        "classes": [str(c) for c in classes],
        "preprocess": _check_preprocess(preprocess),
        "config": _plain(config),
        "epoch": int(epoch),
        "step": int(step),
        "best_top1": None if best_top1 is None else float(best_top1),
        "metrics": _plain(metrics),
    }
    resume = (training or TrainingState()).entries()
    ckpt.update({k: v for k, v in resume.items() if v is not None})  # absent means None
    return ckpt


# --- loading ----------------------------------------------------------------------------------


def _describe_folder(path: Path) -> str:
    found = sorted(p.name for p in path.glob("*.pt"))
    listing = f"found: {', '.join(found)}" if found else "it holds no .pt files"
    return (f"{path} is a folder; pass the .pt file inside, e.g. {path / run_folder.BEST} "
            f"({listing})")


def _check_file(path: Path) -> None:
    if path.is_dir():
        raise CheckpointError(_describe_folder(path))
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")


def load_checkpoint(path: str | os.PathLike, *, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint (``.pt`` from training or ``.safetensors`` from ``export_safetensors``).

    The file is read by ``vit.io.read_weights``, the reader of every weights file; this adds
    that it must be one of ours (classes, model config, preprocessing). Every other case raises
    a one-line ``CheckpointError`` that says what the file is and what to pass instead.
    """
    path = Path(path)
    _check_file(path)
    weights = read_weights(path, map_location=map_location, noun="a vit checkpoint")
    if weights.info is None:
        if path.suffix == ".safetensors":
            what = (f"it holds weights only, and no sidecar {sidecar_path(path).name} (nor a copy "
                    "in its metadata) with its classes and model config; keep the two files "
                    "`vit export` wrote together")
        else:
            what = "it looks like a plain state_dict (weights only, no classes or model config)"
        raise CheckpointError(f"{path} is not a vit checkpoint: {what}; to fine-tune from its "
                              f"weights use --pretrained {path}")
    return {**weights.info, "model": weights.state_dict}


def _shape_mismatches(
    expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]
) -> list[str]:
    problems = []
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    if missing:
        problems.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    for k in expected:
        if k in found and found[k].shape != expected[k].shape:
            problems.append(f"{k} has shape {tuple(found[k].shape)} in the checkpoint but "
                            f"{tuple(expected[k].shape)} in the model")
    return problems


def model_from_checkpoint(ckpt: Mapping[str, Any], *, exportable: bool = False) -> nn.Module:
    """Rebuild the model from ``model_config`` (the package's ViT or a timm model), load the
    weights (strict), eval mode. ``exportable``: built for ONNX export
    (``vit.models.architecture.model_from_spec``)."""
    try:
        model = model_from_spec(ckpt["model_config"], exportable=exportable)
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"the checkpoint's model_config is invalid: {first_line(e)}") from e
    weights = ckpt["model"]
    problems = _shape_mismatches(model.state_dict(), weights)
    if problems:
        raise CheckpointError("the checkpoint's weights do not fit its model_config: "
                              + "; ".join(problems))
    model.load_state_dict(weights, strict=True)
    return model.eval()
