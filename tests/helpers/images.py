"""Images and image folders made on the spot (nothing is downloaded)."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 50, 210)}


def colour_image(colour: Sequence[int], *, size: tuple[int, int] = (40, 36), seed: int = 0,
                 noise: float = 25.0) -> np.ndarray:
    """An HxWx3 uint8 image of ``colour`` with Gaussian noise (``size`` is width, height)."""
    rng = np.random.default_rng(seed)
    pixels = np.asarray(colour, dtype=np.float64) + rng.normal(0, noise, (size[1], size[0], 3))
    return np.clip(pixels, 0, 255).round().astype(np.uint8)


def write_image(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def make_colour_folder(root: Path, per_class: int = 6, colours: dict | None = None) -> Path:
    """root/<colour>/<i>.png: noisy images of one colour per class, sizes varying."""
    for c, (name, rgb) in enumerate((colours or COLOURS).items()):
        for i in range(per_class):
            size = (32 + 4 * (i % 3), 32 + 2 * (i % 4))
            write_image(root / name / f"{i:02d}.png", colour_image(rgb, size=size, seed=100 * c + i))
    return root


def make_folder(root: Path, *, classes=("red", "green", "blue"), per_class=12, size=16) -> Path:
    """root/<class>/<NNN>.png, one colour channel raised per class, with noise: learnable in a
    few steps, so accuracy must rise."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 80, size=(size, size, 3), dtype=np.uint8)
            img[..., c % 3] += 150
            Image.fromarray(img).save(root / name / f"{i:03d}.png")
    return root


def write_huge_png(path: Path, side: int) -> Path:
    """A valid 1-bit PNG of side x side pixels, written without allocating the pixels."""
    row = b"\x00" + bytes((side + 7) // 8)  # filter byte + packed zero bits
    comp = zlib.compressobj(1)
    rows_per_call = 1000
    data = [comp.compress(row * rows_per_call) for _ in range(side // rows_per_call)]
    data += [comp.compress(row * (side % rows_per_call)), comp.flush()]

    def chunk(tag: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(tag + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", b"".join(data)) + chunk(b"IEND", b""))
    return path
