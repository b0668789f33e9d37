"""Tiny models and checkpoints: the one tiny-ViT factory and the files made from it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from vit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform
from vit.inference.classifier import Classifier
from vit.io import atomic_save
from vit.models.checkpoint import load_checkpoint, make_checkpoint
from vit.models.vision_transformer import VisionTransformer

from .images import COLOURS

# 32 px, 4x4 patches of 8 px, width 32, 2 blocks of 2 heads, 3 classes.
TINY_VIT = dict(img_size=32, patch_size=8, num_classes=3, embed_dim=32, depth=2, num_heads=2)


def tiny_vit(seed: int = 0, *, head_std: float | None = None, jitter: float = 0.0,
             train: bool = False, **overrides) -> VisionTransformer:
    """The tiny ViT of the tests (``TINY_VIT``, ``overrides`` on top), built after
    ``torch.manual_seed(seed)``.

    A fresh ViT has a zero head and near-uniform attention, so every image gets the same logits
    and every map is flat. To move it off its init: ``jitter`` adds ``jitter`` x N(0, 1) noise
    (from a generator seeded with ``seed``) to every parameter; ``head_std`` redraws the head's
    weights from N(0, head_std²) (different images, different outputs). Eval mode unless
    ``train``.
    """
    torch.manual_seed(seed)
    model = VisionTransformer(**{**TINY_VIT, **overrides})
    with torch.no_grad():
        if jitter:
            g = torch.Generator().manual_seed(seed)
            for p in model.parameters():
                p.add_(jitter * torch.randn(p.shape, generator=g))
        if head_std is not None:
            nn.init.normal_(model.head.weight, std=head_std)
    return model.train(train)


def save_checkpoint(
    path: Path, model: nn.Module, classes: Sequence[str], *, crop_pct: float = 1.0,
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
) -> Path:
    """``model`` as a prediction checkpoint (best.pt) with ``classes`` and its preprocessing."""
    preprocess = {"img_size": model.config.img_size, "mean": list(mean), "std": list(std),
                  "crop_pct": crop_pct}
    ckpt = make_checkpoint(model=model, classes=list(classes), preprocess=preprocess, config={},
                           epoch=1, step=1, best_top1=None, metrics={})
    atomic_save(ckpt, path)
    return path


def train_colour_checkpoint(data_dir: Path, path: Path, *, steps: int = 12) -> Path:
    """Train a tiny ViT on a colour folder (``images.make_colour_folder``; full-batch AdamW)
    and save it as a checkpoint."""
    classes = sorted(COLOURS)
    model = tiny_vit(num_classes=len(classes), train=True)
    transform = build_transform(img_size=32, train=False, crop_pct=1.0)
    files = sorted(data_dir.glob("*/*.png"))
    x = torch.stack([transform(Image.open(f).convert("RGB")) for f in files])
    y = torch.tensor([classes.index(f.parent.name) for f in files])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return save_checkpoint(path, model.eval(), classes)


# --- the explorer's model: peaky attention ----------------------------------------------------

SHAPES = ["circle", "square", "triangle", "ring", "cross"]  # the shapes dataset's classes
SHAPES_PREPROCESS = {"img_size": 48, "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 1.0}


def peaky_model(*, reg_tokens: int = 2, seed: int = 0) -> VisionTransformer:
    """A tiny 48 px ViT (6x6 patches, 3 layers, 3 heads) whose random attention is far from
    uniform (scaled-up q/k weights), so a wrong row, head or layer shows."""
    model = tiny_vit(seed, img_size=48, embed_dim=48, depth=3, num_heads=3,
                     num_classes=len(SHAPES), reg_tokens=reg_tokens, head_std=1.0, train=True)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(15.0)
    return model.eval()


def peaky_classifier(classes=SHAPES, **kwargs) -> Classifier:
    return Classifier(peaky_model(**kwargs), classes=list(classes), preprocess=SHAPES_PREPROCESS,
                      device="cpu")


# --- weights ------------------------------------------------------------------------------------


def weights(path: Path) -> dict[str, torch.Tensor]:
    """The weights a checkpoint trains on (``train_model`` when it keeps an EMA, else ``model``)."""
    ckpt = load_checkpoint(path)
    return ckpt.get("train_model") or ckpt["model"]


def assert_same_weights(a: dict, b: dict, exact: bool = True) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4, msg=k)


def timm_from_folder(folder: Path) -> torch.nn.Module:
    """What timm's hf_hub: loader does with config.json (timm.models._hub._parse_model_cfg and
    _factory.create_model), with the weights file given by pretrained_cfg_overlay."""
    import timm

    config = json.loads((folder / "config.json").read_text())
    overlay = dict(config["pretrained_cfg"], file=str(folder / "model.safetensors"))
    overlay["label_names"] = config["label_names"]
    return timm.create_model(config["architecture"], pretrained=True, num_classes=config[
        "num_classes"], pretrained_cfg_overlay=overlay, **config["model_args"]).eval()


def trained_like(seed: int = 0, **overrides) -> VisionTransformer:
    """``tiny_vit(jitter=0.3)`` with a head redrawn from N(0, 0.5²) (a generator seeded with
    ``seed``): off its init everywhere, as a trained model is, with gradients into the head."""
    model = tiny_vit(seed, jitter=0.3, **overrides)
    with torch.no_grad():
        model.head.weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(seed))
    return model
