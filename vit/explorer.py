"""The attention explorer: one self-contained HTML page to look at a model's attention.

    page = explorer_page(classifier, images, names)          # -> HTML text
    vit.attention_files.write_explorer_page(checkpoint=..., paths=[...], output="page.html")

For every image the page holds the image the model saw, its top-k predictions, every layer's
and head's attention rows (every query: patches, [CLS] and registers), the attention rollout
from every query, the package's saliency maps (rollout, gradient rollout, last-layer
attention) with their deletion/insertion AUC, and the mean attention distance and entropy of
every head (see ``vit.attention_stats``).

Storage (what makes a page of 16 ViT-S/16 images at 224 px fit in 40 MB): each attention row is
split into its prefix-token part ([CLS] and registers, float32) and its patch part, which is
divided by its maximum (kept as float32) and rounded to ``attention_bits`` bits (default 6:
64 levels; the overlay shows each row from 0 to its maximum over the patches). The uint8 codes
are deflated (zlib) and base64-encoded; the page inflates an image's rows with the browser's
``DecompressionStream`` when the image is first shown.

Nothing in the page reaches the network: JavaScript and CSS are inline, images are data URLs,
and a Content-Security-Policy allows only the page's own script and style (by hash). Every
string from the data (file and class names) is put into the page as JSON and shown with
``textContent``, never parsed as HTML.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import math
import os
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from PIL import Image
from torch import nn

from vit.errors import ConfigError, VitError

__all__ = [
    "PageOptions",
    "check_html_output",
    "decode_rows",
    "encode_rows",
    "explorer_html",
    "batch_records",
    "explorer_page",
    "image_records",
    "page_from_records",
    "query_rollout",
]

logger = logging.getLogger(__name__)

DEFAULT_ATTENTION_BITS = 6
ROLLOUT_BITS = 8
DEFAULT_AUC_STEPS = 32
COLORMAP = "inferno"
PNG_MAX_PIXELS = 128 * 128  # larger views are embedded as JPEG
JPEG_QUALITY = 90
METHODS = (("rollout", "attention rollout ([CLS])"), ("grad-rollout", "gradient rollout"),
           ("attention", "last-layer attention ([CLS])"))


# ---------------------------------------------------------------------------------------------
# The math that the page shows
# ---------------------------------------------------------------------------------------------


def query_rollout(
    attentions: Sequence[torch.Tensor], *, head_fusion: str = "mean", discard_ratio: float = 0.0
) -> torch.Tensor:
    """Full rollout matrices (B, N, N): row q is the rollout from query token q.

    ``M_L @ ... @ M_1`` with ``M = rownorm(0.5 * F + 0.5 * I)`` and ``F`` the fused, thinned
    attention, as ``vit.explain.rollout_from_attentions``, whose [CLS] map is row 0 here.
    """
    from vit.explain import discard_lowest, fuse_heads

    n = attentions[0].shape[-1]
    eye = torch.eye(n, device=attentions[0].device)
    result = eye.expand(attentions[0].shape[0], n, n).clone()
    for attention in reversed(attentions):
        fused = discard_lowest(fuse_heads(attention.float(), head_fusion), discard_ratio)
        step = 0.5 * fused + 0.5 * eye
        result = result @ (step / step.sum(dim=-1, keepdim=True))
    return result


def _saliency_maps(
    model: nn.Module, x: torch.Tensor, attentions: Sequence[torch.Tensor], *,
    head_fusion: str, discard_ratio: float,
) -> dict[str, torch.Tensor]:
    """The maps of ``vit.explain.explain`` for each method, from one forward pass where possible."""
    from vit.explain import fuse_heads, gradient_rollout, rollout_from_attentions

    prefix = model.num_prefix_tokens
    patch = model.patch_embed.patch_size[0]
    grid = (x.shape[-2] // patch, x.shape[-1] // patch)
    last = fuse_heads(attentions[-1].float(), head_fusion)[:, 0, prefix:]
    return {
        "rollout": rollout_from_attentions(attentions, prefix, grid, head_fusion=head_fusion,
                                           discard_ratio=discard_ratio),
        "grad-rollout": gradient_rollout(model, x),
        "attention": last.reshape(-1, *grid),
    }


def _faithfulness(model: nn.Module, x: torch.Tensor, maps: dict[str, torch.Tensor], steps: int
                  ) -> list[dict[str, dict[str, float]]]:
    """Per image and method: deletion and insertion AUC (``vit.explain``'s defaults)."""
    from vit.explain import deletion_auc, insertion_auc

    per_image: list[dict[str, dict[str, float]]] = [{} for _ in range(x.shape[0])]
    if steps == 0:
        return per_image
    for method, saliency in maps.items():
        steps_here = min(steps, saliency.shape[-2] * saliency.shape[-1])
        deletion = deletion_auc(model, x, saliency, steps=steps_here).tolist()
        insertion = insertion_auc(model, x, saliency, steps=steps_here).tolist()
        for record, d, i in zip(per_image, deletion, insertion, strict=True):
            record[method] = {"deletion": d, "insertion": i}
    return per_image


# ---------------------------------------------------------------------------------------------
# Compact storage
# ---------------------------------------------------------------------------------------------


@dataclass
class Blob:
    """Bytes that go into the page as a base64 ``<script type="application/octet-stream">``."""

    data: bytes


def _deflated(array: np.ndarray) -> Blob:
    # Z_FILTERED: fewer short matches, 1-2% smaller on noisy attention codes; still plain deflate
    packer = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_FILTERED)
    return Blob(packer.compress(np.ascontiguousarray(array).tobytes()) + packer.flush())


def encode_rows(rows: torch.Tensor, num_prefix_tokens: int, bits: int) -> dict[str, Any]:
    """(..., N) rows -> the page's encoding: prefix part (float32), patch part as ``bits``-bit
    codes of ``row / max(row over patches)``, and that maximum (float32)."""
    if not 1 <= bits <= 8:
        raise ConfigError(f"attention bits must be in [1, 8], got {bits}")
    rows = rows.detach().float().cpu()
    patches = rows[..., num_prefix_tokens:]
    peak = patches.amax(dim=-1, keepdim=True)
    levels = 2**bits - 1
    codes = torch.round(patches / peak.clamp_min(1e-30) * levels).clamp(0, levels)
    return {
        "bits": bits,
        "shape": list(patches.shape),
        "codes": _deflated(codes.to(torch.uint8).numpy()),
        "peak": _deflated(peak[..., 0].numpy().astype("<f4")),
        "prefix": _deflated(rows[..., :num_prefix_tokens].numpy().astype("<f4")),
    }


def decode_rows(encoded: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of ``encode_rows`` as the page computes it: (patch values, prefix values)."""
    shape = encoded["shape"]
    codes = np.frombuffer(zlib.decompress(encoded["codes"].data), np.uint8).reshape(shape)
    peak = np.frombuffer(zlib.decompress(encoded["peak"].data), "<f4").reshape(shape[:-1])
    prefix = np.frombuffer(zlib.decompress(encoded["prefix"].data), "<f4")
    values = codes / (2 ** encoded["bits"] - 1) * peak[..., None]
    return values, prefix.reshape(*shape[:-1], -1)


def _image_data(view: np.ndarray) -> dict[str, str]:
    """An HxWx3 uint8 image -> base64 PNG (small images) or JPEG, with its type."""
    buffer = io.BytesIO()
    image = Image.fromarray(view)
    if view.shape[0] * view.shape[1] <= PNG_MAX_PIXELS:
        image.save(buffer, format="PNG", optimize=True)
        mime = "png"
    else:
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
        mime = "jpeg"
    return {"mime": mime, "base64": base64.b64encode(buffer.getvalue()).decode("ascii")}


def _rounded(values: torch.Tensor | np.ndarray, digits: int = 6) -> list[Any]:
    """Plain nested lists of floats with ``digits`` significant digits (keeps the JSON small)."""
    array = np.asarray(values, dtype=np.float64)
    return [float(f"{v:.{digits}g}") for v in array.ravel()] if array.ndim <= 1 else \
        [_rounded(row, digits) for row in array]


# ---------------------------------------------------------------------------------------------
# One batch of images -> the page's records
# ---------------------------------------------------------------------------------------------


def _model_info(model: nn.Module, img_size: int) -> dict[str, Any]:
    from vit.attention_stats import uniform_distance

    patch = model.patch_embed.patch_size[0]
    grid = [img_size // patch, img_size // patch]
    return {"depth": len(model.blocks), "heads": model.blocks[0].attn.num_heads, "grid": grid,
            "patch": patch, "img_size": img_size, "prefix": model.num_prefix_tokens,
            "registers": model.num_prefix_tokens - 1,
            "tokens": model.num_prefix_tokens + grid[0] * grid[1],
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
    from vit.attention_stats import attention_stats
    from vit.explain import _eval_mode

    if not len(views) == len(names) == x.shape[0]:
        raise ConfigError(f"got {x.shape[0]} images, {len(views)} views and {len(names)} names")
    prefix, patch = model.num_prefix_tokens, model.patch_embed.patch_size[0]
    grid = (x.shape[-2] // patch, x.shape[-1] // patch)
    with _eval_mode(model), torch.no_grad():
        logits, attentions = model(x, return_attention=True)
        rollout = query_rollout(attentions, head_fusion=head_fusion, discard_ratio=discard_ratio)
        distance, entropy = attention_stats(attentions, prefix, grid, patch)
        top = _top_labels(logits, classes, topk)
    maps = _saliency_maps(model, x, attentions, head_fusion=head_fusion,
                          discard_ratio=discard_ratio)
    aucs = _faithfulness(model, x, maps, auc_steps)
    records = []
    for i, (view, name) in enumerate(zip(views, names, strict=True)):
        per_layer = torch.stack([a[i] for a in attentions])  # (layers, heads, N, N)
        records.append({
            "name": str(name), "image": _image_data(view),
            "top": [[label, p] for label, p in top[i]],
            "attention": encode_rows(per_layer, prefix, attention_bits),
            "rollout": encode_rows(rollout[i], prefix, ROLLOUT_BITS),
            "maps": {method: _rounded(maps[method][i].cpu()) for method, _ in METHODS},
            "auc": aucs[i],
            "distance": _rounded(distance[i].cpu()), "entropy": _rounded(entropy[i].cpu()),
        })
    return records


# ---------------------------------------------------------------------------------------------
# Records -> HTML
# ---------------------------------------------------------------------------------------------


def _page_part(name: str) -> str:
    return resources.files("vit").joinpath("explorer_page", name).read_text(encoding="utf-8")


def _lift_blobs(obj: Any, blobs: list[Blob]) -> Any:
    """A copy of ``obj`` with every ``Blob`` replaced by ``{"blob": k}``, k its index in blobs."""
    if isinstance(obj, Blob):
        blobs.append(obj)
        return {"blob": len(blobs) - 1}
    if isinstance(obj, dict):
        return {k: _lift_blobs(v, blobs) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_lift_blobs(v, blobs) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # JSON has no NaN; the page shows "n/a"
    return obj


def _script_json(data: Any) -> str:
    """JSON that cannot end its <script> element: <, > and & (and U+2028/9) are escaped."""
    text = json.dumps(data, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def _average(records: Sequence[dict[str, Any]], key: str) -> list[Any]:
    return _rounded(np.mean([np.asarray(r[key], dtype=np.float64) for r in records], axis=0))


def _colormap() -> list[int]:
    lut = matplotlib.colormaps[COLORMAP](np.linspace(0.0, 1.0, 256))[:, :3]
    return np.rint(lut * 255).astype(int).ravel().tolist()


def explorer_html(
    records: Sequence[dict[str, Any]], *, model_info: dict[str, Any], settings: dict[str, Any],
    title: str,
) -> str:
    """The page: template + inline CSS and JS + the data as JSON + base64 blobs."""
    if not records:
        raise ConfigError("an explorer page needs at least one image")
    blobs: list[Blob] = []
    data = _lift_blobs({
        "title": title, "model": model_info, "settings": settings,
        "methods": [{"key": key, "label": label} for key, label in METHODS],
        "colormap": _colormap(), "images": list(records),
        "average": {"distance": _average(records, "distance"),
                    "entropy": _average(records, "entropy")},
    }, blobs)
    css, js = _page_part("explorer.css"), _page_part("explorer.js")
    csp = (f"default-src 'none'; img-src data:; style-src {_csp_hash(css)}; "
           f"script-src {_csp_hash(js)}; base-uri 'none'; form-action 'none'")
    parts = {
        "CSP": csp, "CSS": css, "JS": js, "DATA": _script_json(data),
        "BLOBS": "\n".join(f'<script type="application/octet-stream" id="blob-{k}">'
                           f'{base64.b64encode(b.data).decode("ascii")}</script>'
                           for k, b in enumerate(blobs)),
    }
    # one pass: text put in is never searched for markers again
    return re.sub(r"__(CSP|CSS|JS|DATA|BLOBS)__", lambda m: parts[m.group(1)],
                  _page_part("page.html"))


# ---------------------------------------------------------------------------------------------
# Classifier and files -> page
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PageOptions:
    """What the page computes; the defaults are those of ``vit explain --html``."""

    topk: int = 3
    head_fusion: str = "mean"
    discard_ratio: float = 0.0
    auc_steps: int = DEFAULT_AUC_STEPS
    attention_bits: int = DEFAULT_ATTENTION_BITS

    def check(self) -> None:
        from vit.explain import HEAD_FUSIONS

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
                         settings=options.settings(info["grid"][0] * info["grid"][1]))


def explorer_page(
    classifier: Any, images: Sequence[Any], names: Sequence[str] | None = None, *,
    options: PageOptions | None = None, batch_size: int = 16, title: str = "",
) -> str:
    """The explorer page (HTML text) of in-memory images for a ``vit.predict.Classifier``.

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


def check_html_output(output: str | os.PathLike[str]) -> Path:
    """The page's path, or a one-line ``VitError`` when it cannot be written there."""
    path = Path(output)
    if path.is_dir():
        raise VitError(f"--html {output} is a folder; name the page file, e.g. "
                       f"{path / 'explorer.html'}")
    folder = path.parent
    if not folder.exists():
        raise VitError(f"cannot write {output}: the folder {folder} does not exist; create it "
                       "first or choose another path")
    if not folder.is_dir():
        raise VitError(f"cannot write {output}: {folder} is a file, not a folder")
    return path
