"""What a model is, for either kind the package trains: its own ViT or a timm ViT-family model.
The one place the rest of the package asks.

    spec = model_spec(model)        plain data; checkpoints store it as "model_config"
    model = model_from_spec(spec)   the same architecture, freshly initialised
    info = describe_model(model)    name, family, image size, patch, depth, width, heads, params
    info = describe_spec(spec)      the same, from a checkpoint's record (built on the meta device)

A spec is ``dataclasses.asdict(ViTConfig)`` for the package's ViT (every checkpoint written
before timm models existed has one) or ``{"timm_name": NAME, "timm_args": {...}}`` for a timm
model (``vit.models.timm_models``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vit.models.timm_models import is_timm_spec, model_from_timm_spec, timm_exportable, timm_spec
from vit.models.vision_transformer import VisionTransformer, ViTConfig, config_dict

__all__ = ["ModelInfo", "model_spec", "model_from_spec", "describe_model", "describe_spec",
           "is_timm_spec"]


@dataclass(frozen=True)
class ModelInfo:
    """The numbers a log line, a model card or a preprocessing step needs."""

    name: str  # "vit" for the package's ViT, "timm:NAME" for a timm model
    family: str  # the model class: VisionTransformer (ours or timm's), Eva, Beit, ...
    img_size: int  # the trained input size (square)
    patch_size: int
    depth: int  # blocks
    embed_dim: int
    num_heads: int
    num_classes: int
    in_chans: int
    global_pool: str  # "token", "avg", "map" (attention pool), ...
    params: int  # parameter elements, shared tensors once


def model_spec(model: nn.Module) -> dict[str, Any]:
    """The architecture of ``model`` as plain data (``TypeError`` for a model of another kind)."""
    if isinstance(model, VisionTransformer):
        return config_dict(model)
    if hasattr(model, "vit_timm_spec"):
        return timm_spec(model)
    raise TypeError(f"expected a vit VisionTransformer or a timm model built by "
                    f"vit.models.timm_models.create_timm_model, got {type(model).__name__}")


def model_from_spec(spec: Mapping[str, Any], *, exportable: bool = False) -> nn.Module:
    """The model ``spec`` describes, freshly initialised. ``exportable``: built the way timm
    builds models for ONNX export (no effect on the package's ViT)."""
    if is_timm_spec(spec):
        if exportable:
            with timm_exportable():
                return model_from_timm_spec(spec)
        return model_from_timm_spec(spec)
    return VisionTransformer(ViTConfig.from_dict(dict(spec)))


def _pair(value: Any) -> int:
    size = tuple(value) if isinstance(value, tuple | list) else (value, value)
    return int(size[0])


def describe_model(model: nn.Module) -> ModelInfo:
    """``ModelInfo`` of a model of either kind (read off its modules)."""
    if isinstance(model, VisionTransformer):
        c = model.config
        return ModelInfo(name="vit", family="VisionTransformer (vit)", img_size=c.img_size,
                         patch_size=c.patch_size, depth=c.depth, embed_dim=c.embed_dim,
                         num_heads=c.num_heads, num_classes=c.num_classes, in_chans=c.in_chans,
                         global_pool=c.global_pool, params=_count(model))
    spec = model_spec(model)
    embed = model.patch_embed
    attn = getattr(model.blocks[0], "attn", None)
    # timm's class, also when FSDP2 has made the model an FSDP<Class>
    family = next(c.__name__ for c in type(model).__mro__ if c.__module__.startswith("timm."))
    return ModelInfo(name=f"timm:{spec['timm_name']}", family=family,
                     img_size=_pair(embed.img_size), patch_size=_pair(embed.patch_size),
                     depth=len(model.blocks), embed_dim=int(model.embed_dim),
                     num_heads=int(getattr(attn, "num_heads", 0)),
                     num_classes=int(model.num_classes), in_chans=int(embed.proj.in_channels),
                     global_pool=str(getattr(model, "global_pool", "")), params=_count(model))


def describe_spec(spec: Mapping[str, Any]) -> ModelInfo:
    """``ModelInfo`` of the model a checkpoint's ``model_config`` describes (nothing allocated)."""
    with torch.device("meta"):
        return describe_model(model_from_spec(spec))


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
