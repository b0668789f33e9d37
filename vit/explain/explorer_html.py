"""The explorer page's bytes: attention rows as compact codes, images as data URLs, and the HTML
with its inline CSS and JavaScript (``explorer_page/``) and a Content-Security-Policy.

Each attention row is split into its prefix-token part ([CLS] and registers, float32) and its
patch part, which is divided by its maximum (kept as float32) and rounded to ``bits`` bits (the
overlay shows each row from 0 to its maximum over the patches). The uint8 codes are deflated
(zlib) and base64-encoded; the page inflates an image's rows with the browser's
``DecompressionStream`` when the image is first shown.

Nothing in the page reaches the network: JavaScript and CSS are inline, images are data URLs,
and the policy allows only the page's own script and style (by hash). Every string from the data
(file and class names) is put into the page as JSON that cannot end its ``<script>`` element and
is shown with ``textContent``, never parsed as HTML.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import matplotlib
import numpy as np
import torch
from PIL import Image

from vit.errors import ConfigError

__all__ = ["Blob", "decode_rows", "encode_rows", "explorer_html", "image_data", "rounded"]

COLORMAP = "inferno"
PNG_MAX_PIXELS = 128 * 128  # larger views are embedded as JPEG
JPEG_QUALITY = 90


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


def image_data(view: np.ndarray) -> dict[str, str]:
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


def rounded(values: torch.Tensor | np.ndarray, digits: int = 6) -> list[Any]:
    """Plain nested lists of floats with ``digits`` significant digits (keeps the JSON small)."""
    array = np.asarray(values, dtype=np.float64)
    return [float(f"{v:.{digits}g}") for v in array.ravel()] if array.ndim <= 1 else \
        [rounded(row, digits) for row in array]


def _page_part(name: str) -> str:
    page = resources.files("vit.explain").joinpath("explorer_page", name)
    return page.read_text(encoding="utf-8")


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
    return rounded(np.mean([np.asarray(r[key], dtype=np.float64) for r in records], axis=0))


def _colormap() -> list[int]:
    lut = matplotlib.colormaps[COLORMAP](np.linspace(0.0, 1.0, 256))[:, :3]
    return np.rint(lut * 255).astype(int).ravel().tolist()


def explorer_html(
    records: Sequence[dict[str, Any]], *, model_info: dict[str, Any], settings: dict[str, Any],
    title: str, methods: Sequence[tuple[str, str]],
) -> str:
    """The page: template + inline CSS and JS + the data as JSON + base64 blobs."""
    if not records:
        raise ConfigError("an explorer page needs at least one image")
    blobs: list[Blob] = []
    data = _lift_blobs({
        "title": title, "model": model_info, "settings": settings,
        "methods": [{"key": key, "label": label} for key, label in methods],
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
