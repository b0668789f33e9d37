"""The quickstart: `python train.py` with no arguments.

It writes a synthetic shapes image folder (no download), trains a small ViT on it (on the GPU in
bf16 when there is one, else on the CPU in a few minutes), draws attention-rollout overlays of
held-out images and writes the attention explorer page of the same images.
``configs/quickstart.yaml`` holds the same settings (a test keeps the two equal).
"""

from __future__ import annotations

from pathlib import Path

from vit.config import Config, config_from_dict

QUICKSTART = {
    "model": {"name": "vit_quick_patch8_48", "drop_path_rate": 0.0},
    "data": {"root": "data/shapes", "workers": 2, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
             "scale": [0.35, 1.0], "randaug_n": 0},
    "train": {"epochs": 30, "batch_size": 64, "lr": 2e-3, "min_lr": 1e-5, "warmup_epochs": 1.0,
              "weight_decay": 0.05, "device": "auto", "output": "runs/quickstart",
              "explain_samples": 8},
    "loss": {"label_smoothing": 0.1},
}
SHAPES_PER_CLASS = 400
SHAPES_VAL_FRACTION = 0.2


def quickstart_config() -> Config:
    return config_from_dict(QUICKSTART)


def prepare_quickstart_data(cfg: Config) -> Path:
    """Write (or reuse) the synthetic shapes folder named by ``data.root``."""
    from vit.synthetic import make_shapes_dataset

    root = Path(cfg.data.root or QUICKSTART["data"]["root"])
    img_size = cfg.model.img_size or 48
    return make_shapes_dataset(root, num_per_class=SHAPES_PER_CLASS, img_size=img_size,
                               seed=0, val_fraction=SHAPES_VAL_FRACTION)


def quickstart_held_out(root: Path, num_images: int) -> list[Path]:
    """The first ``num_images`` validation images of the shapes folder, one class after another."""
    paths = sorted((root / "val").rglob("*.png"))
    # one image per class first, so the grid shows every shape
    by_class: dict[str, list[Path]] = {}
    for p in paths:
        by_class.setdefault(p.parent.name, []).append(p)
    return [p for i in range(num_images) for ps in by_class.values() if i < len(ps)
            for p in [ps[i]]][:num_images]


def write_quickstart_overlays(run_dir: Path, *, num_images: int = 8,
                              data_root: Path | None = None) -> Path:
    """Attention-rollout overlays of the first validation images, into RUN_DIR/overlays."""
    from vit.explain_cli import explain_files

    picked = quickstart_held_out(data_root or Path(QUICKSTART["data"]["root"]), num_images)
    out = run_dir / "overlays"
    explain_files(checkpoint=run_dir / "best.pt", paths=picked, output=out, method="rollout")
    return out


def write_quickstart_explorer(run_dir: Path, *, num_images: int = 8,
                              data_root: Path | None = None) -> Path:
    """The attention explorer page of the same held-out images: RUN_DIR/explorer.html."""
    from vit.attention_files import write_explorer_page

    picked = quickstart_held_out(data_root or Path(QUICKSTART["data"]["root"]), num_images)
    return write_explorer_page(checkpoint=run_dir / "best.pt", paths=picked,
                               output=run_dir / "explorer.html").path
