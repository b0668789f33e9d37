"""The quickstart: `python train.py` with no arguments.

It writes a synthetic shapes image folder (no download), trains a small ViT on it (on the GPU in
bf16 when there is one, else on the CPU in a few minutes), and, like every run, draws
saliency overlays (AttnLRP) of held-out images (``train.explain_samples``); its last step writes
the attention explorer page of the same images (RUN/explorer.html). ``configs/quickstart.yaml``
holds the same settings (a test keeps the two equal).
"""

from __future__ import annotations

import logging
from pathlib import Path

from vit import run_folder
from vit.config import Config, config_from_dict
from vit.data.sources.synthetic import SHAPES_VAL_FRACTION, write_shapes

__all__ = ["QUICKSTART", "SHAPES_PER_CLASS", "SHAPES_VAL_FRACTION", "quickstart_config",
           "prepare_quickstart_data", "write_explorer"]

logger = logging.getLogger(__name__)

QUICKSTART = {
    "model": {"name": "vit_quick_patch8_48", "drop_path_rate": 0.0},
    "data": {"root": "data/shapes", "workers": 2, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
             "scale": [0.35, 1.0], "randaug_n": 0},
    "train": {"epochs": 30, "batch_size": 64, "lr": 2e-3, "min_lr": 1e-5, "warmup_epochs": 1.0,
              "weight_decay": 0.05, "device": "auto", "output": "runs/quickstart",
              "explain_samples": 8, "explorer_page": True},
    "loss": {"label_smoothing": 0.1},
}
SHAPES_PER_CLASS = 400


def quickstart_config() -> Config:
    return config_from_dict(QUICKSTART)


def prepare_quickstart_data(cfg: Config) -> Path:
    """Write (or reuse) the synthetic shapes folder named by ``data.root`` (the synthetic
    source's, ``vit.data.sources.synthetic``)."""
    root = Path(cfg.data.root or QUICKSTART["data"]["root"])
    return write_shapes(root, img_size=cfg.model.img_size or 48, num_per_class=SHAPES_PER_CLASS)


def write_explorer(run_dir: Path, paths: list[str], *, device: str = "auto") -> Path | None:
    """The attention explorer page of the run's held-out images (those of its overlays) by
    best.pt: RUN_DIR/explorer.html, the last step of a run with ``train.explorer_page`` (the
    quickstart's); None, with a warning, when it could not be written (a finished run never
    fails for it)."""
    from vit.explain.explorer import PageOptions
    from vit.explain.recommend import choose_method
    from vit.figures.attention_files import write_explorer_page

    try:
        method = choose_method(run_dir / run_folder.BEST).method  # the overlays' too
        options = PageOptions(method=method)
        return write_explorer_page(checkpoint=run_dir / run_folder.BEST, paths=paths, options=options,
                                   output=run_dir / "explorer.html", device=device).path
    except Exception as e:  # a drawing problem must never end a finished run
        logger.warning("could not write the attention explorer page: %s", e)
        return None
