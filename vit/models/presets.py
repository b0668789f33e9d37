"""Named ViT configurations, and what a configuration costs.

    create_model("vit_small_patch16_224", num_classes=5)   # a preset, with ViTConfig overrides
    list_models()                                          # the names create_model accepts
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from torch import nn

from vit.models.vision_transformer import VisionTransformer, ViTConfig

__all__ = ["list_models", "model_config", "create_model", "count_flops_per_image",
           "head_parameters", "config_parameters", "describe_models", "PURPOSES"]

_PRESETS: dict[str, dict[str, Any]] = {
    # Same shapes as timm's models of these names (ImageNet, 224 px).
    "vit_tiny_patch16_224": dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "vit_small_patch16_224": dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch16_224": dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "vit_large_patch16_224": dict(img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16),
    # Small images (CIFAR-size 32 px): patch 4 gives an 8x8 grid of 64 patches.
    "vit_nano_patch4_32": dict(img_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4, mlp_ratio=2.0),
    "vit_tiny_patch4_32": dict(img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3),
    "vit_small_patch4_32": dict(img_size=32, patch_size=4, embed_dim=384, depth=12, num_heads=6),
    "vit_tiny_patch2_32": dict(img_size=32, patch_size=2, embed_dim=192, depth=12, num_heads=3),
    # The quickstart's model: 48 px synthetic shapes, 6x6 grid, trains in minutes on 2 CPU cores.
    "vit_quick_patch8_48": dict(img_size=48, patch_size=8, embed_dim=96, depth=4, num_heads=4, mlp_ratio=2.0),
}


# What each preset is for: `vit models` prints these.
PURPOSES: dict[str, str] = {
    "vit_tiny_patch16_224": "photos at 224 px on a GPU; fine-tune timm's weights of this name",
    "vit_small_patch16_224": "photos at 224 px on a GPU; the usual fine-tuning start",
    "vit_base_patch16_224": "photos at 224 px, large data sets or fine-tuning; a big GPU",
    "vit_large_patch16_224": "photos at 224 px, fine-tuning only; a big GPU",
    "vit_nano_patch4_32": "small images (or photos at 32-64 px) on a CPU: the CPU recipes",
    "vit_tiny_patch4_32": "CIFAR-size images on a GPU (the default model)",
    "vit_small_patch4_32": "CIFAR-size images on a GPU, more capacity",
    "vit_tiny_patch2_32": "CIFAR-size images, 16x16 grid: finer maps, 4x the tokens",
    "vit_quick_patch8_48": "the quickstart: 48 px synthetic shapes, minutes on 2 CPU cores",
}


def list_models() -> list[str]:
    """Names accepted by ``create_model``."""
    return sorted(_PRESETS)


def model_config(name: str, **overrides: Any) -> ViTConfig:
    """The ``ViTConfig`` of a preset, with overrides (any ``ViTConfig`` field)."""
    if name not in _PRESETS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(list_models())}")
    known = {f.name for f in fields(ViTConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown model arguments {unknown}; valid: {sorted(known)}")
    return ViTConfig(**{**_PRESETS[name], **overrides})


def create_model(name: str, **overrides: Any) -> VisionTransformer:
    """Build a preset by name, e.g. ``create_model("vit_small_patch16_224", num_classes=5)``."""
    return VisionTransformer(model_config(name, **overrides))


def count_flops_per_image(cfg: ViTConfig, train: bool = False) -> float:
    """Analytic FLOPs of one forward pass (2 per multiply-add), attention included.

    With ``train=True`` returns forward + backward (3x forward), the usual MFU convention.
    """
    P = (cfg.img_size // cfg.patch_size) ** 2
    N = P + 1 + cfg.reg_tokens
    D, L = cfg.embed_dim, cfg.depth
    H = int(D * cfg.mlp_ratio)
    patch = 2 * P * (cfg.in_chans * cfg.patch_size**2) * D
    qkv_proj = 2 * N * D * 3 * D + 2 * N * D * D
    attn = 2 * 2 * N * N * D  # q @ k^T and attn @ v
    mlp = 2 * 2 * N * D * H
    head = 2 * D * cfg.num_classes
    fwd = patch + L * (qkv_proj + attn + mlp) + head
    return float(fwd * (3 if train else 1))


def head_parameters(model: nn.Module) -> int:
    """Parameter elements of the classification head: ``model.head`` (and a distilled timm
    model's ``head_dist``); 0 without one."""
    heads = [getattr(model, name, None) for name in ("head", "head_dist")]
    return sum(p.numel() for h in heads if isinstance(h, nn.Module) for p in h.parameters())


def config_parameters(cfg: ViTConfig) -> int:
    """Parameters of the model ``cfg`` describes, counted on the meta device (no memory used)."""
    import torch

    with torch.device("meta"):
        model = VisionTransformer(cfg)
    return sum(p.numel() for p in model.parameters())


def describe_models(num_classes: int = 0) -> list[dict[str, Any]]:
    """Each preset: name, default image size, patch, parameters and forward GFLOPs per image
    (with a ``num_classes`` head; 0: the backbone alone, as ``vit train`` counts them before
    the head it adds), and what it is for."""
    rows = []
    for name in list_models():
        cfg = model_config(name, num_classes=num_classes)
        rows.append(dict(name=name, img_size=cfg.img_size, patch_size=cfg.patch_size,
                         params=config_parameters(cfg), gflops=count_flops_per_image(cfg) / 1e9,
                         purpose=PURPOSES.get(name, "")))
    return rows
