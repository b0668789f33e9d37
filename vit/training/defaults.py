"""Defaults that fit the data: what a run leaves unset (``None`` in the config) is chosen here
from the machine, the number of training images, the image size and the epochs, and each
choice is logged with its reason.

    cfg, notes = fit_to_data(cfg, num_train=2000, img_size=32)   # notes: (log level, line)

ImageNet's recipe (RandomResizedCrop down to 8% of the area, RandAugment 2 ops at strength 9,
drop path 0.1) is made for runs that see hundreds of millions of images. A run that sees a few
thousand never learns past such augmentation: on 2,000 CIFAR-10 images for 3 epochs it ended at
18.8% (chance: 10%). The strength therefore grows with the images a run will see (training
images x epochs), in three named steps (``light``, ``medium``, ``strong``; ``data.recipe``
picks one by name), and crops keep more of a small image than of a photo. The measured effect
is in benchmarks/RESULTS.md ("Defaults that fit the data").
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, replace

from vit.config import Config
from vit.errors import ConfigError
from vit.text import plural

__all__ = ["RECIPES", "Recipe", "auto_workers", "auto_batch_size", "pick_recipe", "fit_to_data",
           "fit_workers", "merge_notes"]

SMALL_IMAGE_PX = 64  # at or below: a crop must keep most of the image to keep the object
# Below this many training images, loader processes cost more than they save: each epoch starts
# them anew (a second or more on a busy CPU), and the training process decodes so few at once.
FEW_IMAGES_FOR_WORKERS = 500


@dataclass(frozen=True)
class Recipe:
    """Augmentation and regularisation strength. ``scale_small``/``scale_large``: the lower
    bound of RandomResizedCrop's area for images of at most / more than SMALL_IMAGE_PX."""

    randaug_n: int
    randaug_m: int
    scale_small: float
    scale_large: float
    drop_path_rate: float
    seen_up_to: float  # picked when the run sees fewer images than this


RECIPES = {
    "light": Recipe(randaug_n=0, randaug_m=0, scale_small=0.6, scale_large=0.35,
                    drop_path_rate=0.0, seen_up_to=250_000),
    "medium": Recipe(randaug_n=1, randaug_m=5, scale_small=0.35, scale_large=0.2,
                     drop_path_rate=0.05, seen_up_to=2_500_000),
    "strong": Recipe(randaug_n=2, randaug_m=9, scale_small=0.25, scale_large=0.08,
                     drop_path_rate=0.1, seen_up_to=float("inf")),
}


def auto_workers(cores: int | None = None) -> int:
    """Loader processes: one core stays with the training loop; at most 8."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
    return max(0, min(8, cores - 1))


def auto_batch_size(num_train: int, world_size: int = 1) -> int:
    """A power of two giving about 32 steps per epoch, from 8 to 128, a multiple of the number
    of processes, never more than the training images."""
    batch = 8
    while batch * 2 <= min(128, num_train / 32):
        batch *= 2
    batch = max(world_size, batch - batch % world_size)
    return min(batch, max(world_size, num_train - num_train % world_size))


def pick_recipe(images_seen: float) -> str:
    return next(name for name, r in RECIPES.items() if images_seen < r.seen_up_to)


Notes = list[tuple[int, str]]  # (logging level, "key=value: why")
_NOTE_KEY = re.compile(r"^(?P<key>[a-z_]+\.[a-z_]+)=")


def merge_notes(earlier: Notes, later: Notes) -> Notes:
    """The notes of both steps, each decision once: a later note on a key (``data.workers=0``
    after ``fit_workers``'s ``data.workers=1``) replaces the earlier one."""
    def key(line: str) -> str | None:
        match = _NOTE_KEY.match(line)
        return match["key"] if match else None

    decided = {key(line) for _, line in later} - {None}
    return [n for n in earlier if key(n[1]) not in decided] + list(later)


def fit_workers(cfg: Config, cores: int | None = None) -> tuple[Config, Notes]:
    """``data.workers``, which the scan of the folder already needs."""
    if cfg.data.workers is not None:
        return cfg, []
    workers = auto_workers(cores)
    why = f"data.workers={workers}: one CPU core for the training loop, the rest (at most 8) load"
    return replace(cfg, data=replace(cfg.data, workers=workers)), [(logging.INFO, why)]


def fit_to_data(cfg: Config, *, num_train: int, img_size: int, world_size: int = 1,
                workers_chosen: bool = False) -> tuple[Config, Notes]:
    """Fill what the config leaves unset, and clamp a batch larger than the data. Returns the
    new config and one (level, line) per choice, to be logged. ``workers_chosen``: the loader
    workers came from ``fit_workers`` (not the user), so a small data set may drop them."""
    notes: Notes = []
    train, data, model = cfg.train, cfg.data, cfg.model
    if workers_chosen and data.workers and num_train < FEW_IMAGES_FOR_WORKERS:
        notes.append((logging.INFO, f"data.workers=0: {num_train} training images decode in "
                      "the training process faster than loader processes start each epoch"))
        data = replace(data, workers=0)
    batch = train.batch_size
    if batch is None:
        batch = auto_batch_size(num_train, world_size)
        steps = plural(num_train // batch, "step")  # the training loader drops a partial batch
        notes.append((logging.INFO, f"train.batch_size={batch}: {steps} per epoch over "
                      f"{plural(num_train, 'training image')} (the default aims at about 32 "
                      "steps, with a batch of 8 to 128)"))
    elif batch > num_train:
        clamped = max(world_size, num_train - num_train % world_size)
        notes.append((logging.WARNING, f"--batch-size {batch} is larger than the {num_train} "
                                       f"training images; using {clamped}"))
        batch = clamped
    seen = num_train * train.epochs
    name = data.recipe or pick_recipe(seen)
    if name not in RECIPES:
        raise ConfigError(f"data.recipe must be one of {', '.join(RECIPES)}, got {name!r}")
    recipe = RECIPES[name]
    why = (f"recipe {name!r} (data.recipe)" if data.recipe else
           f"recipe {name!r}: the run sees {plural(num_train, 'image')} x "
           f"{plural(train.epochs, 'epoch')} = {plural(seen, 'image')}")
    small = img_size <= SMALL_IMAGE_PX
    chosen = {
        "data.randaug_n": (data.randaug_n, recipe.randaug_n),
        "data.randaug_m": (data.randaug_m, recipe.randaug_m),
        "data.scale": (data.scale, [recipe.scale_small if small else recipe.scale_large, 1.0]),
        "model.drop_path_rate": (model.drop_path_rate, recipe.drop_path_rate),
    }
    picked = {key: auto for key, (given, auto) in chosen.items() if given is None}
    if picked:
        size = f"{img_size} px images ({'small' if small else 'photos'})"
        notes.append((logging.INFO, ", ".join(f"{k}={v}" for k, v in picked.items())
                      + f": {why}; {size}"))
    data = replace(data, **{k.split(".")[1]: v for k, v in picked.items() if k.startswith("data.")})
    model = replace(model, drop_path_rate=picked.get("model.drop_path_rate",
                                                     model.drop_path_rate))
    return replace(cfg, train=replace(train, batch_size=batch), data=data, model=model), notes
