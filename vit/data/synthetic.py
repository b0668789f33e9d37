"""A built-in image-folder dataset of coloured geometric shapes that needs no download.

Each image shows one light shape (its class) of random colour, size, position and small tilt on a
dark, noisy background of random colour, with a few small distractor blobs. The shapes are large
enough (about 25-50% of the image side) for a tiny ViT to learn them in minutes on a CPU. The
pixel box of every shape is saved in ``boxes.json`` so explanations (e.g. attention rollout) can
be checked against the object.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from vit.errors import ConfigError, DataError
from vit.io import atomic_write, write_json

__all__ = [
    "SHAPES",
    "DEFAULT_CLASSES",
    "BOXES_FILE",
    "MANIFEST_FILE",
    "make_shapes_dataset",
    "load_boxes",
    "render_shape_image",
]

logger = logging.getLogger(__name__)

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "star")
DEFAULT_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring")
BOXES_FILE = "boxes.json"
MANIFEST_FILE = "dataset.json"
# Bump when the drawing code changes, so an old folder is regenerated instead of reused.
GENERATOR_VERSION = 2

_SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down for anti-aliased edges
_SIZE_RANGE = (0.3, 0.5)  # diameter of the circle around a shape, as a fraction of the side
_DARK_MAX = 110.0  # background channels lie in [0, _DARK_MAX]
_LIGHT_MIN = 150.0  # shape channels lie in [_LIGHT_MIN, 255]
_NOISE_STD = 10.0
_MAX_TILT_DEG = 15.0  # shapes are drawn upright, turned by at most this many degrees

Box = tuple[int, int, int, int]


# ---------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------


def _regular_polygon(
    cx: float, cy: float, radius: float, n: int, angle: float
) -> list[tuple[float, float]]:
    return [
        (cx + radius * math.cos(angle + 2 * math.pi * k / n),
         cy + radius * math.sin(angle + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _rotated(
    points: Sequence[tuple[float, float]], cx: float, cy: float, angle: float
) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def _cross_outline(radius: float) -> list[tuple[float, float]]:
    """A plus sign centred on the origin whose arm tips lie on a circle of ``radius``."""
    w = 0.3 * radius  # half the arm width
    r = math.sqrt(max(radius**2 - w**2, 0.0))
    return [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w),
            (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w)]


def _star_outline(radius: float) -> list[tuple[float, float]]:
    """A five-pointed star centred on the origin, one point straight up."""
    points = []
    for k in range(10):
        rad = radius if k % 2 == 0 else 0.45 * radius
        theta = -math.pi / 2 + math.pi * k / 5
        points.append((rad * math.cos(theta), rad * math.sin(theta)))
    return points


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, radius: float, tilt: float
) -> None:
    """Draw ``shape`` filled with 255 inside the circle (cx, cy, radius).

    Upright poses (axis-aligned square and cross, triangle and star pointing up) are turned by
    ``tilt`` radians.
    """
    if shape in ("circle", "ring"):
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=255)
        if shape == "ring":
            inner = 0.5 * radius
            draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    elif shape == "square":
        draw.polygon(_regular_polygon(cx, cy, radius, 4, math.pi / 4 + tilt), fill=255)
    elif shape == "triangle":
        draw.polygon(_regular_polygon(cx, cy, radius, 3, -math.pi / 2 + tilt), fill=255)
    elif shape == "cross":
        draw.polygon(_rotated(_cross_outline(radius), cx, cy, tilt), fill=255)
    elif shape == "star":
        draw.polygon(_rotated(_star_outline(radius), cx, cy, tilt), fill=255)
    else:  # guarded by _check_params; kept for direct callers of render_shape_image
        raise ConfigError(f"unknown shape {shape!r}; valid shapes: {', '.join(SHAPES)}")


def _coverage(
    img_size: int, draw_fn: Callable[[ImageDraw.ImageDraw, float], None]
) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of whatever ``draw_fn(draw, scale)`` paints."""
    big = img_size * _SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    draw_fn(ImageDraw.Draw(canvas), float(_SUPERSAMPLE))
    small = canvas.resize((img_size, img_size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _palette(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(background, shape) colours: a dark background and a light shape, both of random hue.

    The shape always stands out by brightness, so its outline (not its colour) tells the class.
    """
    background = rng.uniform(0.0, _DARK_MAX, size=3).astype(np.float32)
    colour = rng.uniform(_LIGHT_MIN, 255.0, size=3).astype(np.float32)
    return background, colour


def _composite(image: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    return image * (1.0 - a) + colour * a


def _add_distractors(image: np.ndarray, rng: np.random.Generator, img_size: int) -> np.ndarray:
    """A few small blobs (much smaller than any shape) in random colours."""
    blobs = []
    for _ in range(int(rng.integers(2, 6))):
        cx, cy = rng.uniform(0, img_size, size=2)
        rx, ry = rng.uniform(0.8, 2.2, size=2)
        blobs.append((cx, cy, rx, ry))

    def draw_blobs(draw: ImageDraw.ImageDraw, k: float) -> None:
        for cx, cy, rx, ry in blobs:
            draw.ellipse([(cx - rx) * k, (cy - ry) * k, (cx + rx) * k, (cy + ry) * k], fill=255)

    alpha = _coverage(img_size, draw_blobs)
    # One colour for all blobs of an image keeps this cheap.
    return _composite(image, alpha, rng.integers(0, 256, size=3).astype(np.float32))


def _box_of(alpha: np.ndarray) -> Box:
    ys, xs = np.nonzero(alpha > 0)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def render_shape_image(
    shape: str, rng: np.random.Generator, img_size: int = 48
) -> tuple[np.ndarray, np.ndarray, Box]:
    """Render one sample. Returns (HxWx3 uint8 image, HxW coverage in [0, 1], box).

    The box ``(x0, y0, x1, y1)`` (exclusive end) encloses every pixel the shape touches.
    """
    background, colour = _palette(rng)
    image = np.broadcast_to(background, (img_size, img_size, 3)).astype(np.float32)
    image = _add_distractors(image, rng, img_size)

    radius = 0.5 * img_size * rng.uniform(*_SIZE_RANGE)
    margin = radius + 1.0
    cx, cy = rng.uniform(margin, img_size - margin, size=2)
    tilt = math.radians(rng.uniform(-_MAX_TILT_DEG, _MAX_TILT_DEG))

    def draw_object(draw: ImageDraw.ImageDraw, k: float) -> None:
        _draw_shape(draw, shape, cx * k, cy * k, radius * k, tilt)

    alpha = _coverage(img_size, draw_object)
    image = _composite(image, alpha, colour)
    image += rng.normal(0.0, _NOISE_STD, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), alpha, _box_of(alpha)


# ---------------------------------------------------------------------------------------------
# Dataset folder
# ---------------------------------------------------------------------------------------------


def _check_params(
    num_per_class: int, img_size: int, classes: Sequence[str], val_fraction: float | None
) -> None:
    if num_per_class < 1:
        raise ConfigError(f"num_per_class must be >= 1, got {num_per_class}")
    if img_size < 16:
        raise ConfigError(f"img_size must be >= 16 for shapes to be recognisable, got {img_size}")
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ConfigError(f"classes must be at least 2 distinct shapes, got {list(classes)}")
    unknown = [c for c in classes if c not in SHAPES]
    if unknown:
        raise ConfigError(f"unknown shapes {unknown}; valid shapes: {', '.join(SHAPES)}")
    if val_fraction is not None and not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1) or None, got {val_fraction}")


def _num_val(num_per_class: int, val_fraction: float | None) -> int:
    if val_fraction is None or num_per_class < 2:
        return 0
    return min(max(round(num_per_class * val_fraction), 1), num_per_class - 1)


def _read_manifest(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None


def _is_complete(root: Path, manifest: dict[str, Any] | None, params: dict[str, Any]) -> bool:
    if not manifest or not manifest.get("complete") or manifest.get("params") != params:
        return False
    try:
        boxes = load_boxes(root)
    except DataError:
        return False
    expected = params["num_per_class"] * len(params["classes"])
    return len(boxes) == expected and all((root / key).is_file() for key in boxes)


def _remove_generated_files(root: Path) -> None:
    """Delete what an earlier run of this generator wrote under ``root``, and nothing else.

    Only names this module makes itself are touched: ``[train/|val/]<shape>/<NNNNN>.png`` for the
    known shapes, then the folders if they end up empty. Nothing is read from the manifest to
    decide what to delete, and nothing is removed recursively, so a tampered or corrupt manifest
    cannot point the deletion anywhere else.
    """
    for split in ("", "train", "val"):
        base = root / split if split else root
        for shape in SHAPES:
            folder = base / shape
            if not folder.is_dir() or folder.is_symlink():
                continue
            for file in folder.glob("[0-9][0-9][0-9][0-9][0-9].png"):
                if file.is_file() and not file.is_symlink():
                    file.unlink()
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: foreign files stay
        if split and base.is_dir() and not base.is_symlink():
            with contextlib.suppress(OSError):
                base.rmdir()
    (root / BOXES_FILE).unlink(missing_ok=True)


def _prepare_root(root: Path, manifest: dict[str, Any] | None) -> None:
    """Make ``root`` ready to be written: remove an older generated dataset, refuse foreign data."""
    if root.exists() and not root.is_dir():
        raise DataError(f"{root} is a file; choose a folder for the synthetic dataset")
    if manifest is not None:
        _remove_generated_files(root)
        return
    if root.exists() and any(not p.name.startswith(".") for p in root.iterdir()):
        raise DataError(
            f"{root} is not empty and was not made by make_shapes_dataset (no {MANIFEST_FILE}); "
            "choose an empty or new folder for the synthetic dataset"
        )


def _write_manifest(root: Path, params: dict[str, Any], dirs: list[str], complete: bool) -> None:
    manifest = {"generator": "vit.data.synthetic.shapes", "params": params, "dirs": dirs,
                "complete": complete}
    write_json(root / MANIFEST_FILE, manifest)


def make_shapes_dataset(
    root: str | Path,
    *,
    num_per_class: int = 500,
    img_size: int = 48,
    classes: Sequence[str] = DEFAULT_CLASSES,
    seed: int = 0,
    val_fraction: float | None = None,
) -> Path:
    """Write a shapes image folder under ``root`` and return ``root``.

    Layout: ``root/<class>/<NNNNN>.png``, or with ``val_fraction`` ``root/train/<class>/...`` and
    ``root/val/<class>/...``. ``root/boxes.json`` maps each image path relative to ``root``
    (e.g. ``"circle/00000.png"``) to the shape's pixel box ``[x0, y0, x1, y1]`` (exclusive end).

    The output is byte-identical for the same arguments, and image ``i`` of a class does not
    depend on ``num_per_class``. If ``root`` already holds a complete dataset made with the same
    arguments, nothing is written.
    """
    root = Path(root)
    classes = list(classes)
    _check_params(num_per_class, img_size, classes, val_fraction)
    params = {"version": GENERATOR_VERSION, "num_per_class": num_per_class,
              "img_size": img_size, "classes": classes, "seed": seed,
              "val_fraction": val_fraction}
    manifest = _read_manifest(root)
    if _is_complete(root, manifest, params):
        logger.info("Reusing the synthetic shapes dataset in %s", root)
        return root

    _prepare_root(root, manifest)
    root.mkdir(parents=True, exist_ok=True)
    dirs = ["train", "val"] if val_fraction is not None else classes
    _write_manifest(root, params, dirs, complete=False)

    first_val = num_per_class - _num_val(num_per_class, val_fraction)
    boxes: dict[str, list[int]] = {}
    with tqdm(total=num_per_class * len(classes), desc="shapes", unit="img",
              disable=None, leave=False) as bar:
        for name in classes:
            for i in range(num_per_class):
                split = "" if val_fraction is None else ("val/" if i >= first_val else "train/")
                key = f"{split}{name}/{i:05d}.png"
                rng = np.random.default_rng([seed, SHAPES.index(name), i])
                image, _, box = render_shape_image(name, rng, img_size)
                # not fsync'ed one by one (5 ms each): the manifest, written durably last,
                # says whether the set is complete
                atomic_write(root / key, lambda f, im=image: Image.fromarray(im).save(f, format="PNG"),
                             durable=False)
                boxes[key] = list(box)
                bar.update()

    write_json(root / BOXES_FILE, boxes, indent=0, sort_keys=True)
    _write_manifest(root, params, dirs, complete=True)
    logger.info("Wrote %d synthetic shape images to %s", len(boxes), root)
    return root


def load_boxes(root: str | Path) -> dict[str, Box]:
    """Read ``root/boxes.json``: image path relative to ``root`` -> ``(x0, y0, x1, y1)``."""
    path = Path(root) / BOXES_FILE
    try:
        raw = json.loads(path.read_text())
        return {key: (int(b[0]), int(b[1]), int(b[2]), int(b[3])) for key, b in raw.items()}
    except FileNotFoundError:
        raise DataError(
            f"{path} not found; create the dataset with make_shapes_dataset({str(root)!r})"
        ) from None
    except (ValueError, TypeError, IndexError, AttributeError) as exc:
        raise DataError(
            f"{path} is not a valid boxes file ({exc}); delete the folder and regenerate it"
        ) from None
