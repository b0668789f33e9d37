"""``synthetic:DIR``: the built-in shapes (``vit.data.synthetic``) written to DIR (or reused when
DIR holds them already: the files are byte-identical for the same settings), then read as an
image folder with its own train/ and val/ split. No download, for trying things out."""

from __future__ import annotations

import os
from pathlib import Path

from vit.config import Config
from vit.data.sources.base import RunData
from vit.data.sources.folder import FolderSource

__all__ = ["SyntheticSource", "PREFIX", "SHAPES_PER_CLASS", "SHAPES_VAL_FRACTION"]

PREFIX = "synthetic:"
SHAPES_PER_CLASS = 400
SHAPES_VAL_FRACTION = 0.2


class SyntheticSource(FolderSource):
    """The shapes, drawn at the model's image size (48 px when the config names none)."""

    name = "synthetic data set"

    def __init__(self, spec: str | os.PathLike[str]):
        super().__init__(spec)
        self.folder = str(spec).removeprefix(PREFIX) or "data/shapes"

    @classmethod
    def accepts(cls, spec: str | os.PathLike[str]) -> bool:
        return str(spec).startswith(PREFIX)

    def prepare(self, cfg: Config) -> RunData:
        write_shapes(self.folder, img_size=cfg.model.img_size or 48,
                     num_per_class=SHAPES_PER_CLASS)
        return super().prepare(cfg)


def write_shapes(folder: str | os.PathLike[str], *, img_size: int, num_per_class: int) -> Path:
    """Write (or reuse) the shapes folder, split into train/ and val/."""
    from vit.data.synthetic import make_shapes_dataset

    return make_shapes_dataset(folder, num_per_class=num_per_class, img_size=img_size, seed=0,
                               val_fraction=SHAPES_VAL_FRACTION)
