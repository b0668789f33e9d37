"""Optimizer, learning-rate schedule and freezing: small pure functions.

    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    for step in range(total_steps):
        set_lr(optimizer, lr_at_step(step, base_lr=1e-3, min_lr=1e-5,
                                     warmup_steps=500, total_steps=total_steps))
        ...

The parameter groups are timm's (``timm.optim.param_groups_weight_decay`` and, with layer decay,
``param_groups_layer_decay``): no weight decay for biases, other 1-D tensors (norm weights,
LayerScale gamma) and the names in ``model.no_weight_decay()`` (position embedding, [CLS] and
register tokens); layer-wise lr decay as BEiT/MAE with the layers of ``model.group_matcher()``
(embeddings, each block, the head; the final norm goes with the last block, as in timm).
Freezing reads the same description: the classifier is ``model.get_classifier()``, the last N
blocks and what follows them are layers of ``model.group_matcher()``; so both work alike on the
package's ViT and on every timm ViT family (``vit.models.timm_models``).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable

import torch
from torch import nn

from vit.errors import ConfigError
from vit.runtime import unwrap_model

__all__ = [
    "param_groups",
    "lr_at_step",
    "Schedule",
    "set_lr",
    "build_optimizer",
    "freeze_parameters",
    "count_parameters",
]

logger = logging.getLogger(__name__)

_FREEZE_LAST_N = re.compile(r"^all-but-last-(\d+)$")


# --- parameter groups -------------------------------------------------------------------------


def param_groups(model: nn.Module, *, weight_decay: float,
                 layer_decay: float | None = None) -> list[dict]:
    """Trainable parameters grouped by timm for AdamW (see the module docstring).

    Each group has ``params`` and ``weight_decay``; with ``layer_decay`` also ``lr_scale``
    (``layer_decay ** (depth + 1 - layer)``, 1.0 for the head). Frozen parameters
    (``requires_grad=False``) are left out. DDP and torch.compile wrappers are looked through.
    """
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay  # slow import

    if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
        raise ConfigError(f"train.layer_decay must be in (0, 1], got {layer_decay}")
    model = unwrap_model(model)
    skip = sorted(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else []
    if layer_decay is None:
        return param_groups_weight_decay(model, weight_decay=weight_decay,
                                         no_weight_decay_list=skip)
    return param_groups_layer_decay(model, weight_decay=weight_decay, no_weight_decay_list=skip,
                                    layer_decay=layer_decay)


# --- learning-rate schedule -------------------------------------------------------------------


def _check_schedule(*, step: int, base_lr: float, min_lr: float, warmup_steps: int,
                    total_steps: int) -> None:
    if step < 0:
        raise ConfigError(f"step must be >= 0, got {step}")
    if base_lr <= 0:
        raise ConfigError(f"the learning rate (train.lr) must be positive, got {base_lr}")
    if not 0 <= min_lr <= base_lr:
        raise ConfigError(
            f"train.min_lr must be between 0 and train.lr ({base_lr}), got {min_lr}")
    if total_steps < 1:
        raise ConfigError(f"total_steps must be at least 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ConfigError(
            f"warmup ({warmup_steps} steps) must be between 0 and the whole run ({total_steps} "
            "steps); lower train.warmup_epochs")


def lr_at_step(step: int, *, base_lr: float, min_lr: float, warmup_steps: int,
               total_steps: int) -> float:
    """Linear warmup, then half a cosine from ``base_lr`` down to ``min_lr``.

    Warmup (``step < warmup_steps``): ``base_lr * (step + 1) / warmup_steps``, so the first step
    already learns (never lr 0) and the last warmup step reaches ``base_lr``. Then
    ``min_lr + (base_lr - min_lr) * (1 + cos(pi * t)) / 2`` with
    ``t = (step - warmup_steps) / (total_steps - warmup_steps)``: ``base_lr`` at the end of
    warmup, ``min_lr`` at ``total_steps`` and after it.
    """
    _check_schedule(step=step, base_lr=base_lr, min_lr=min_lr, warmup_steps=warmup_steps,
                    total_steps=total_steps)
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    t = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


class Schedule:
    """The run's learning rate by optimizer step (``lr_at_step``): warmup over
    ``warmup_epochs``, the cosine ending with epoch ``epochs``."""

    def __init__(self, *, base_lr: float, min_lr: float, steps_per_epoch: int,
                 warmup_epochs: float, epochs: int):
        self.base_lr, self.min_lr, self.steps_per_epoch = base_lr, min_lr, steps_per_epoch
        self.planned_warmup = round(warmup_epochs * steps_per_epoch)
        self.warmup_steps, self.total_steps = self.planned_warmup, steps_per_epoch * epochs

    def end_with(self, epochs: int) -> None:
        """End the cosine with epoch ``epochs`` instead (the time budget)."""
        self.total_steps = self.steps_per_epoch * epochs
        self.warmup_steps = min(self.planned_warmup, self.total_steps)

    def lr_at(self, step: int) -> float:
        return lr_at_step(step, base_lr=self.base_lr, min_lr=self.min_lr,
                          warmup_steps=self.warmup_steps, total_steps=self.total_steps)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr to ``lr * lr_scale`` (scale 1 for groups without one)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


# --- optimizer --------------------------------------------------------------------------------


def _all_on_cuda(params: Iterable[torch.Tensor]) -> bool:
    params = list(params)
    return bool(params) and all(p.is_cuda for p in params)


def build_optimizer(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    layer_decay: float | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW over ``param_groups``; the fused CUDA kernel when every parameter is on a GPU."""
    groups = param_groups(model, weight_decay=weight_decay, layer_decay=layer_decay)
    params = [p for g in groups for p in g["params"]]
    if not params:
        raise ConfigError("the model has no trainable parameters; check --freeze")
    if fused is None:
        fused = True if _all_on_cuda(params) else None  # None: torch picks foreach / for-loop
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay,
                                  fused=fused)
    set_lr(optimizer, lr)  # each group at lr * lr_scale from the start
    logger.debug("AdamW: %d parameter groups of %s tensors", len(groups),
                 "/".join(str(len(g["params"])) for g in groups))
    return optimizer


# --- freezing ---------------------------------------------------------------------------------


def _classifier_names(model: nn.Module) -> set[str]:
    """The parameters of the classifier: timm's ``get_classifier()`` (both heads of a distilled
    DeiT), else ``model.head``."""
    heads = model.get_classifier() if hasattr(model, "get_classifier") else model.head
    modules = heads if isinstance(heads, tuple | list) else (heads,)
    ids = {id(p) for module in modules for p in module.parameters()}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def _last_layers(model: nn.Module, n: int) -> set[str]:
    """The parameters of the last ``n`` blocks and of everything timm's group matcher puts after
    them (the final norm, pooling, head), by ``model.group_matcher()``'s layers."""
    from timm.models import group_parameters  # slow import

    layer_of = group_parameters(model, model.group_matcher(), reverse=True)  # name -> layer
    depth = len(model.blocks)
    first_block = f"blocks.{depth - n}."
    first = min(layer for name, layer in layer_of.items() if name.startswith(first_block))
    return {name for name, layer in layer_of.items() if layer >= first}


def _trainable(model: nn.Module, spec: str) -> set[str] | None:
    """Names of the parameters that stay trainable under ``spec``; None means all."""
    if spec == "none":
        return None
    if spec == "backbone":
        return _classifier_names(model)  # a linear probe: only the classifier learns
    depth = len(model.blocks)
    match = _FREEZE_LAST_N.match(spec)
    n = int(match.group(1)) if match else -1
    if not 1 <= n <= depth:
        raise ConfigError(
            f"--freeze must be 'none', 'backbone' or 'all-but-last-N' with N from 1 to the "
            f"model depth {depth}, got {spec!r}")
    return _last_layers(model, n)


def freeze_parameters(model: nn.Module, spec: str) -> list[str]:
    """Apply ``--freeze`` and return the names of the parameters left trainable.

    ``none``: train everything. ``backbone``: a linear probe, only the classifier trains
    (``get_classifier()``: ``head``, and ``head_dist`` of a distilled DeiT; the final norm and an
    attention-pool stay frozen, so features are exactly the pretrained ones).
    ``all-but-last-N``: the last N blocks and what timm's ``group_matcher`` layers put after
    them (the final norm, ``fc_norm``, an attention pool, the head) train.
    """
    model = unwrap_model(model)
    keep = _trainable(model, spec)
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(keep is None or name in keep)
        if param.requires_grad:
            trainable.append(name)
    return trainable


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) number of parameter elements; shared tensors count once."""
    params = list(unwrap_model(model).parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return total, trainable
