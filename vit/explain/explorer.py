"""The attention explorer: one self-contained HTML page to look at a model's attention.

    page = explorer_page(classifier, images, names)          # -> HTML text
    vit.figures.attention_files.write_explorer_page(checkpoint=..., paths=[...],
                                                      output="page.html")

For every image the page holds the image the model saw, its top-k predictions, every layer's
and head's attention rows (every query: patches, [CLS] and registers), the attention rollout
from every query, the map of every method of ``vit.explain.saliency`` (the class-specific ones
for the predicted class) with its deletion/insertion AUC on that image, and the mean
attention distance and entropy of every head (see ``vit.explain.attention_stats``). This module
computes them; ``vit.explain.explorer_html`` stores them compactly and writes the HTML.

Storage (what makes a page of 16 ViT-S/16 images at 224 px fit in 40 MB): the patch part of each
attention row as ``attention_bits``-bit codes of the row over its maximum (default 6: 64 levels),
the rollout rows with 8 bits, deflated.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from vit.errors import ConfigError
from vit.explain.explorer_html import encode_rows, explorer_html, image_data, rounded

__all__ = [
    "PageOptions",
    "batch_records",
    "explorer_page",
    "image_records",
    "page_from_records",
    "page_methods",
    "saliency_maps",
]

logger = logging.getLogger(__name__)

DEFAULT_ATTENTION_BITS = 6
ROLLOUT_BITS = 8
DEFAULT_AUC_STEPS = 32
THIS_MODEL = "— the method for this model"  # marks PageOptions.method on the page


def page_methods(first: str | None = None) -> tuple[tuple[str, str], ...]:
    """(key, label) of every method of ``vit.explain.saliency``, in its order; ``first`` (the
    method to use for this model) leads, marked so. The labels are ``vit.explain.catalog``'s."""
    from vit.explain.catalog import CATALOG

    order = sorted(CATALOG, key=lambda m: m.name != first)  # stable: the rest keep their order
    return tuple((m.name, m.label + (f" {THIS_MODEL}" if m.name == first else ""))
                 for m in order)


def saliency_maps(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *, head_fusion: str,
                  discard_ratio: float) -> dict[str, torch.Tensor]:
    """Every method's (B, grid_h, grid_w) map of a batch, through ``vit.explain.saliency``;
    the class-specific ones for ``target`` (the page passes the predicted classes)."""
    from vit.explain.saliency import saliency

    options = {"rollout": {"head_fusion": head_fusion, "discard_ratio": discard_ratio},
               "attention": {"head_fusion": head_fusion}}
    return {method: saliency(model, x, method, target=target, **options.get(method, {}))
            .detach().float().cpu() for method, _ in page_methods()}


def _faithfulness(model: nn.Module, x: torch.Tensor, maps: dict[str, torch.Tensor],
                  target: torch.Tensor, steps: int) -> list[dict[str, dict[str, float]]]:
    """Per image and method: deletion and insertion AUC of ``target``'s probability
    (``vit.explain.faithfulness``'s baselines)."""
    from vit.explain.faithfulness import deletion_auc, insertion_auc

    per_image: list[dict[str, dict[str, float]]] = [{} for _ in range(x.shape[0])]
    if steps == 0:
        return per_image
    for method, saliency in maps.items():
        steps_here = min(steps, saliency.shape[-2] * saliency.shape[-1])
        deletion = deletion_auc(model, x, saliency, target=target, steps=steps_here).tolist()
        insertion = insertion_auc(model, x, saliency, target=target, steps=steps_here).tolist()
        for record, d, i in zip(per_image, deletion, insertion, strict=True):
            record[method] = {"deletion": d, "insertion": i}
    return per_image


def _model_info(model: nn.Module, img_size: int) -> dict[str, Any]:
    from vit.explain.adapters import adapter_for
    from vit.explain.attention_stats import uniform_distance

    adapter = adapter_for(model)
    patch = adapter.patch_size[0]
    grid = [img_size // patch, img_size // patch]
    names = adapter.prefix_names()
    return {"depth": adapter.depth, "heads": adapter.num_heads, "grid": grid,
            "patch": patch, "img_size": img_size, "prefix": adapter.num_prefix_tokens,
            "prefix_names": names, "registers": sum(n.startswith("register") for n in names),
            "tokens": adapter.num_prefix_tokens + grid[0] * grid[1],
            "uniform_distance": round(uniform_distance((grid[0], grid[1]), patch), 4)}


def _top_labels(logits: torch.Tensor, classes: Sequence[str], topk: int
                ) -> list[list[tuple[str, float]]]:
    """(B, C) logits -> per image the ``topk`` (label, probability), most likely first."""
    probs, indices = logits.float().softmax(dim=-1).cpu().topk(min(topk, len(classes)), dim=-1)
    return [[(classes[i], p) for p, i in zip(row_p, row_i, strict=True)]
            for row_p, row_i in zip(probs.tolist(), indices.tolist(), strict=True)]


def image_records(
    model: nn.Module, x: torch.Tensor, views: Sequence[np.ndarray], names: Sequence[str],
    classes: Sequence[str], *, topk: int = 3, head_fusion: str = "mean",
    discard_ratio: float = 0.0, auc_steps: int = DEFAULT_AUC_STEPS,
    attention_bits: int = DEFAULT_ATTENTION_BITS,
) -> list[dict[str, Any]]:
    """Everything the page shows about a normalised (B, C, H, W) batch, one dict per image.

    ``views`` are the HxWx3 uint8 images as the model saw them (``Classifier.view``), ``names``
    what the page calls them. Predictions, attention and maps come from the model in eval mode
    and full precision.
    """
    from vit.explain.adapters import adapter_for
    from vit.explain.attention_maps import attention_maps
    from vit.explain.attention_stats import attention_stats
    from vit.explain.inputs import eval_mode
    from vit.explain.rollout import rollout_rows

    if not len(views) == len(names) == x.shape[0]:
        raise ConfigError(f"got {x.shape[0]} images, {len(views)} views and {len(names)} names")
    adapter = adapter_for(model)
    prefix, patch, grid = adapter.num_prefix_tokens, adapter.patch_size[0], adapter.grid(x)
    stacked = attention_maps(model, x)  # (B, layers, heads, N, N), each family's own attention
    attentions = list(stacked.unbind(dim=1))
    rollout = rollout_rows(model, x, head_fusion=head_fusion, discard_ratio=discard_ratio)
    with eval_mode(model), torch.no_grad():
        logits = model(x)
        distance, entropy = attention_stats(attentions, prefix, grid, patch)
        top = _top_labels(logits, classes, topk)
    predicted = logits.argmax(dim=-1)
    maps = saliency_maps(model, x, predicted, head_fusion=head_fusion,
                         discard_ratio=discard_ratio)
    aucs = _faithfulness(model, x, maps, predicted, auc_steps)
    records = []
    for i, (view, name) in enumerate(zip(views, names, strict=True)):
        per_layer = torch.stack([a[i] for a in attentions])  # (layers, heads, N, N)
        records.append({
            "name": str(name), "image": image_data(view),
            "top": [[label, p] for label, p in top[i]],
            "attention": encode_rows(per_layer, prefix, attention_bits),
            "rollout": encode_rows(rollout[i], prefix, ROLLOUT_BITS),
            "maps": {method: rounded(saliency[i]) for method, saliency in maps.items()},
            "auc": aucs[i],
            "distance": rounded(distance[i].cpu()), "entropy": rounded(entropy[i].cpu()),
        })
    return records


@dataclass(frozen=True)
class PageOptions:
    """What the page computes; the defaults are those of ``vit explain --html``."""

    topk: int = 3
    head_fusion: str = "mean"
    discard_ratio: float = 0.0
    auc_steps: int = DEFAULT_AUC_STEPS
    attention_bits: int = DEFAULT_ATTENTION_BITS
    method: str | None = None  # shown first and marked (vit explain: the run's chosen method)

    def check(self) -> None:
        from vit.explain.rollout import HEAD_FUSIONS
        from vit.explain.saliency import METHODS

        if self.method is not None and self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.topk < 1:
            raise ConfigError(f"topk must be at least 1, got {self.topk}")
        if self.head_fusion not in HEAD_FUSIONS:
            raise ConfigError(f"head_fusion must be one of {', '.join(HEAD_FUSIONS)}, "
                              f"got {self.head_fusion!r}")
        if not 0.0 <= self.discard_ratio < 1.0:
            raise ConfigError(f"discard_ratio must be in [0, 1), got {self.discard_ratio}")
        if self.auc_steps < 0:
            raise ConfigError(f"auc_steps must be 0 (skip) or more, got {self.auc_steps}")
        if not 1 <= self.attention_bits <= 8:
            raise ConfigError(f"attention_bits must be in [1, 8], got {self.attention_bits}")

    def settings(self, num_patches: int) -> dict[str, Any]:
        return {"head_fusion": self.head_fusion, "discard_ratio": self.discard_ratio,
                "auc_steps": min(self.auc_steps, num_patches),
                "attention_bits": self.attention_bits,
                "deletion_baseline": "zero", "insertion_baseline": "blur"}


def batch_records(classifier: Any, images: Sequence[Any], names: Sequence[str],
                   options: PageOptions) -> list[dict[str, Any]]:
    x = classifier.transform(images).to(classifier.device)
    return image_records(
        classifier.model, x, classifier.view(images), names, classifier.classes,
        topk=options.topk, head_fusion=options.head_fusion, discard_ratio=options.discard_ratio,
        auc_steps=options.auc_steps, attention_bits=options.attention_bits)


def page_from_records(classifier: Any, records: Sequence[dict[str, Any]], options: PageOptions,
                       title: str) -> str:
    info = _model_info(classifier.model, classifier.img_size)
    return explorer_html(records, model_info=info, title=title,
                         methods=page_methods(options.method),
                         settings=options.settings(info["grid"][0] * info["grid"][1]))


def explorer_page(
    classifier: Any, images: Sequence[Any], names: Sequence[str] | None = None, *,
    options: PageOptions | None = None, batch_size: int = 16, title: str = "",
) -> str:
    """The explorer page (HTML text) of in-memory images for a ``Classifier``
    (``vit.inference.classifier``).

    ``images`` are anything ``Classifier`` takes (paths, PIL images, HxWx3 uint8 arrays);
    ``names`` label them on the page (default: "image 1", "image 2", ...).
    """
    options = options or PageOptions()
    options.check()
    names = list(names) if names is not None else [f"image {i + 1}" for i in range(len(images))]
    if len(names) != len(images):
        raise ConfigError(f"got {len(images)} images but {len(names)} names")
    records = []
    for start in range(0, len(images), batch_size):
        chunk = slice(start, start + batch_size)
        records += batch_records(classifier, images[chunk], names[chunk], options)
    return page_from_records(classifier, records, options, title)
