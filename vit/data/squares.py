"""Coloured squares: one per training image (its colour is the class), two per test image.

    make_squares_dataset(root)     # root/{train,val}/<colour>/NNNNN.png, one square per image
    make_two_squares_set(root)     # root/NNNNN.png with two squares of different colours,
                                   # and root/objects.json: each square's class and pixel box

The test of class-specific explanations: a model trained on single squares sees two; asked
about each colour in turn, a faithful map for class c puts its top patch on c's square
(``vit explain-bench --data ROOT_OF_THE_TWO_SQUARES`` reads objects.json). Squares are 8 to
12 px on a 32 px image (2 to 3 patches of 4 px), on a dark noisy background of random colour.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from vit.errors import ConfigError

__all__ = ["COLOURS", "make_squares_dataset", "make_two_squares_set", "render_squares"]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 235),
    "yellow": (230, 215, 40), "magenta": (215, 50, 205),
}
_SIDE = (8, 13)  # square side in pixels, [low, high)
_JITTER = 20.0  # per-channel colour jitter of a square
_NOISE = 8.0

Box = tuple[int, int, int, int]  # [x0, y0, x1, y1)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    base = rng.uniform(0, 70, size=3)
    return base + rng.normal(0, _NOISE, size=(size, size, 3))


def _place(rng: np.random.Generator, size: int, taken: Sequence[Box]) -> Box:
    """A random square box that keeps a 2 px gap from every box in ``taken``."""
    for _ in range(1000):
        side = int(rng.integers(*_SIDE))
        x0, y0 = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        box = (x0, y0, x0 + side, y0 + side)
        if all(box[0] >= b[2] + 2 or b[0] >= box[2] + 2 or box[1] >= b[3] + 2
               or b[1] >= box[3] + 2 for b in taken):
            return box
    raise ConfigError(f"no room for another square on a {size} px image")


def render_squares(colours: Sequence[str], rng: np.random.Generator, size: int = 32
                   ) -> tuple[np.ndarray, list[Box]]:
    """An HxWx3 uint8 image with one square per colour name, and their boxes."""
    image, boxes = _background(rng, size), []
    for name in colours:
        box = _place(rng, size, boxes)
        colour = np.asarray(COLOURS[name]) + rng.normal(0, _JITTER, size=3)
        x0, y0, x1, y1 = box
        image[y0:y1, x0:x1] = colour + rng.normal(0, _NOISE, size=(y1 - y0, x1 - x0, 3))
        boxes.append(box)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), boxes


def _check(colours: Sequence[str], count: int) -> None:
    unknown = [c for c in colours if c not in COLOURS]
    if unknown or len(colours) < 2:
        raise ConfigError(f"colours must be at least two of {', '.join(COLOURS)}; got {colours}")
    if count < 1:
        raise ConfigError(f"need at least one image; got {count}")


def make_squares_dataset(
    root: str | Path, *, num_per_class: int = 500, val_per_class: int = 100,
    colours: Sequence[str] = tuple(COLOURS), size: int = 32, seed: int = 0,
) -> Path:
    """``root/train/<colour>/`` and ``root/val/<colour>/`` PNGs, one square per image."""
    _check(colours, num_per_class)
    root, rng = Path(root), np.random.default_rng(seed)
    for split, count in (("train", num_per_class), ("val", val_per_class)):
        for name in colours:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image, _ = render_squares([name], rng, size)
                Image.fromarray(image).save(folder / f"{i:05d}.png")
    return root


def make_two_squares_set(
    root: str | Path, *, num_images: int = 200, colours: Sequence[str] = tuple(COLOURS),
    size: int = 32, seed: int = 1,
) -> Path:
    """``root/NNNNN.png``, each with two squares of two different colours (drawn at random),
    and ``root/objects.json``: ``{"NNNNN.png": [{"class": colour, "box": [x0, y0, x1, y1]}]}``."""
    _check(colours, num_images)
    root, rng = Path(root), np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    objects = {}
    for i in range(num_images):
        pair = [colours[j] for j in rng.choice(len(colours), size=2, replace=False)]
        image, boxes = render_squares(pair, rng, size)
        name = f"{i:05d}.png"
        Image.fromarray(image).save(root / name)
        objects[name] = [{"class": c, "box": list(b)} for c, b in zip(pair, boxes, strict=True)]
    (root / "objects.json").write_text(json.dumps(objects, indent=1) + "\n")
    return root
