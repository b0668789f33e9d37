"""How far and how broadly each head looks: mean attention distance and attention entropy.

    mean_attention_distance(attention, num_prefix_tokens, grid, patch_size)   # (B, heads), pixels
    attention_entropy(attention, num_prefix_tokens)                            # (B, heads), nats
    folder_attention_stats(classifier, paths)                                  # means over images

Definitions (the JSON that ``vit attention-stats`` writes repeats them):

* **Mean attention distance** (Dosovitskiy et al. 2021, Figure 7): for each query patch, the
  attention-weighted mean distance in pixels of the model's input between the centre of the
  query patch and the centres of the key patches; then the mean over the query patches. The
  [CLS] and register tokens have no place in the image, so their rows (as queries) are left out,
  and so are their columns (as keys): each patch row is renormalised over the patch keys. A
  head that puts most of its weight on [CLS] is therefore measured by where its remaining
  weight in the image goes (implementations that do not renormalise count such weight as
  distance 0).
* **Attention entropy**: ``-sum_j a_ij ln a_ij`` over all keys (prefix tokens included: the row
  is a probability distribution over them), in nats, averaged over the same patch queries.
  A uniform row over N tokens has ``ln N``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from vit.errors import ConfigError

__all__ = [
    "AttentionStats",
    "attention_entropy",
    "attention_stats",
    "folder_attention_stats",
    "mean_attention_distance",
    "patch_distances",
    "plot_attention_stats",
    "readable_images",
    "spread_sample",
    "uniform_distance",
]

logger = logging.getLogger(__name__)

DEFINITIONS = {
    "distance_px": "per head: for each patch query, the attention-weighted mean pixel distance "
                   "between patch centres, the row renormalised over the patch keys ([CLS] and "
                   "register keys left out); mean over patch queries (Dosovitskiy et al. 2021, "
                   "Fig. 7)",
    "entropy_nats": "per head: -sum a ln a over all keys of each patch query's row, mean over "
                    "patch queries; [CLS] and register rows left out; ln(tokens) = uniform",
}


def _check_attention(attention: torch.Tensor, num_prefix_tokens: int) -> int:
    """(B, heads, N, N) with at least one patch token; returns the number of patches."""
    if attention.ndim != 4 or attention.shape[-1] != attention.shape[-2]:
        raise ConfigError(f"attention must be (B, heads, N, N), got {tuple(attention.shape)}")
    patches = attention.shape[-1] - num_prefix_tokens
    if patches < 1:
        raise ConfigError(f"attention over {attention.shape[-1]} tokens has no patch tokens "
                          f"after {num_prefix_tokens} prefix tokens")
    return patches


def patch_distances(grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """(P, P) Euclidean distances in pixels between the centres of a grid's patches (row-major)."""
    gh, gw = grid
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    centres = torch.stack([rows.flatten(), cols.flatten()], dim=-1).double() * patch_size
    return torch.cdist(centres, centres)


def uniform_distance(grid: tuple[int, int], patch_size: int) -> float:
    """The mean attention distance of uniform attention: the mean distance between patches."""
    return float(patch_distances(grid, patch_size).mean())


def mean_attention_distance(
    attention: torch.Tensor, num_prefix_tokens: int, grid: tuple[int, int], patch_size: int
) -> torch.Tensor:
    """One layer's (B, heads, N, N) attention -> (B, heads) mean attention distance in pixels."""
    patches = _check_attention(attention, num_prefix_tokens)
    if patches != grid[0] * grid[1]:
        raise ConfigError(f"{patches} patch tokens do not fill a {grid[0]}x{grid[1]} grid")
    among_patches = attention[:, :, num_prefix_tokens:, num_prefix_tokens:].double()
    weights = among_patches / among_patches.sum(dim=-1, keepdim=True).clamp_min(1e-30)
    distances = patch_distances(grid, patch_size).to(weights.device)
    return (weights * distances).sum(dim=-1).mean(dim=-1).float()


def attention_entropy(attention: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """One layer's (B, heads, N, N) attention -> (B, heads) mean entropy (nats) of patch rows."""
    _check_attention(attention, num_prefix_tokens)
    rows = attention[:, :, num_prefix_tokens:, :].double()
    return torch.special.entr(rows).sum(dim=-1).mean(dim=-1).float()


def attention_stats(
    attentions: Sequence[torch.Tensor], num_prefix_tokens: int, grid: tuple[int, int],
    patch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer attentions -> (distance, entropy), each (B, layers, heads)."""
    if len(attentions) == 0:
        raise ConfigError("need at least one attention tensor, got none")
    distance = torch.stack([mean_attention_distance(a, num_prefix_tokens, grid, patch_size)
                            for a in attentions], dim=1)
    entropy = torch.stack([attention_entropy(a, num_prefix_tokens) for a in attentions], dim=1)
    return distance, entropy


def model_attention_stats(model: torch.nn.Module, images: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """A normalised (B, C, H, W) batch -> (distance, entropy), each (B, layers, heads), on CPU."""
    from vit.explain.adapters import adapter_for
    from vit.explain.attention_maps import attention_maps

    adapter = adapter_for(model)
    attentions = list(attention_maps(model, images).unbind(dim=1))  # (B, heads, N, N) each
    with torch.no_grad():
        distance, entropy = attention_stats(attentions, adapter.num_prefix_tokens,
                                            adapter.grid(images), adapter.patch_size[0])
    return distance.cpu(), entropy.cpu()


# ---------------------------------------------------------------------------------------------
# Over a folder
# ---------------------------------------------------------------------------------------------


@dataclass
class AttentionStats:
    """Means (and standard deviations across images) per layer and head."""

    distance_px: list[list[float]]  # [layer][head]
    entropy_nats: list[list[float]]
    distance_px_std: list[list[float]]
    entropy_nats_std: list[list[float]]
    num_images: int
    img_size: int
    patch_size: int
    tokens: int
    num_prefix_tokens: int
    max_entropy_nats: float
    uniform_distance_px: float  # what uniform attention over the patches gives
    definitions: dict[str, str] = field(default_factory=lambda: dict(DEFINITIONS))
    source: dict[str, Any] = field(default_factory=dict)  # checkpoint, data, weights

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"


def spread_sample(items: Sequence[Any], limit: int) -> list[Any]:
    """At most ``limit`` items, evenly spaced over the list (so every class folder is visited)."""
    if limit < 1:
        raise ConfigError(f"the number of images must be at least 1, got {limit}")
    if len(items) <= limit:
        return list(items)
    picks = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in picks]


def readable_images(paths: Sequence[str | os.PathLike[str]]) -> list[tuple[Path, np.ndarray]]:
    """(path, HxWx3 uint8) for each file that decodes; the others are skipped with a warning."""
    from vit.data.images import UnreadableImageError, load_image

    found = []
    for path in paths:
        try:
            found.append((Path(path), np.asarray(load_image(path))))
        except UnreadableImageError as e:
            logger.warning("skipping %s: %s", path, e.reason)
    return found


def _moments(total: torch.Tensor, squares: torch.Tensor, count: int
             ) -> tuple[list[list[float]], list[list[float]]]:
    mean = total / count
    var = (squares / count - mean**2).clamp_min(0)
    return mean.tolist(), var.sqrt().tolist()


def folder_attention_stats(
    classifier: Any, paths: Sequence[str | os.PathLike[str]], *, batch_size: int = 64,
    show_progress: bool = False,
) -> AttentionStats:
    """Mean attention distance and entropy per layer and head over image files.

    ``classifier`` is a ``vit.inference.classifier.Classifier``; unreadable files are skipped
    with a warning. Raises ``DataError`` when none can be read.
    """
    from vit.errors import DataError

    model = classifier.model
    sums: list[torch.Tensor] = []
    count = 0
    chunks = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    for chunk in tqdm(chunks, desc="attention stats", unit="batch", disable=not show_progress):
        arrays = [array for _, array in readable_images(chunk)]
        if not arrays:
            continue
        x = classifier.transform(arrays).to(classifier.device)
        distance, entropy = (s.double() for s in model_attention_stats(model, x))
        batch = [distance.sum(0), (distance**2).sum(0), entropy.sum(0), (entropy**2).sum(0)]
        sums = batch if not sums else [a + b for a, b in zip(sums, batch, strict=True)]
        count += len(arrays)
    if count == 0:
        raise DataError(f"none of the {len(paths)} images could be read")
    distance_mean, distance_std = _moments(sums[0], sums[1], count)
    entropy_mean, entropy_std = _moments(sums[2], sums[3], count)
    from vit.explain.adapters import adapter_for

    adapter = adapter_for(model)
    patch = adapter.patch_size[0]
    grid = (classifier.img_size // patch, classifier.img_size // adapter.patch_size[1])
    tokens = adapter.num_prefix_tokens + grid[0] * grid[1]
    return AttentionStats(
        distance_px=distance_mean, entropy_nats=entropy_mean, distance_px_std=distance_std,
        entropy_nats_std=entropy_std, num_images=count, img_size=classifier.img_size,
        patch_size=patch, tokens=tokens, num_prefix_tokens=adapter.num_prefix_tokens,
        max_entropy_nats=math.log(tokens), uniform_distance_px=uniform_distance(grid, patch))


# ---------------------------------------------------------------------------------------------
# Figure
# ---------------------------------------------------------------------------------------------


def _depth_panel(axes: Any, values: np.ndarray, *, title: str, ylabel: str) -> None:
    """Dots: one per head at each layer (depth on x); a line through the mean over heads."""
    layers, heads = values.shape
    depth = np.arange(1, layers + 1)
    offsets = np.linspace(-0.18, 0.18, heads) if heads > 1 else np.zeros(1)
    colours = [f"C{h % 10}" for h in range(heads)]
    for h in range(heads):
        axes.scatter(depth + offsets[h], values[:, h], s=16, color=colours[h], alpha=0.85,
                     label=f"head {h + 1}" if heads <= 12 else None, zorder=3)
    axes.plot(depth, values.mean(axis=1), color="0.3", lw=1.2, label="mean over heads", zorder=2)
    axes.set_title(title)
    axes.set_xlabel("layer (depth)")
    axes.set_ylabel(ylabel)
    axes.set_xticks(depth)
    axes.grid(alpha=0.3)


def plot_attention_stats(stats: AttentionStats, path: str | os.PathLike[str], *, title: str
                         ) -> Path:
    """Two panels, mean attention distance and entropy against depth, as a PNG."""
    from vit.plots import new_figure, save_figure

    figure = new_figure((11.0, 4.2))
    left, right = figure.subplots(1, 2)
    _depth_panel(left, np.asarray(stats.distance_px), title="mean attention distance",
                 ylabel="pixels of the model's input")
    left.axhline(stats.uniform_distance_px, color="0.5", ls="--", lw=1)
    left.text(1, stats.uniform_distance_px, " uniform", va="bottom", fontsize=8, color="0.4")
    left.set_ylim(0, stats.img_size * math.sqrt(2) / 2)
    _depth_panel(right, np.asarray(stats.entropy_nats), title="attention entropy",
                 ylabel="nats")
    right.axhline(stats.max_entropy_nats, color="0.5", ls="--", lw=1)
    right.text(1, stats.max_entropy_nats, " uniform", va="bottom", fontsize=8, color="0.4")
    right.set_ylim(0, stats.max_entropy_nats * 1.08)
    handles, labels = left.get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right center", fontsize=8, frameon=False)
    figure.suptitle(title)
    return save_figure(figure, path)
