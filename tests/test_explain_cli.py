"""`vit explain` on files: one PNG per image, named so that no overlay overwrites another."""

from pathlib import Path

import numpy as np
from PIL import Image
from test_predict import save_checkpoint, tiny_model

from vit.cli import main


def test_same_named_files_in_different_folders_get_separate_overlays(tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "best.pt", tiny_model(), ["x", "y", "z"])
    rng = np.random.default_rng(0)
    paths = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        for name in ("1.png", f"only_{folder}.png"):
            path = tmp_path / folder / name
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
            paths.append(str(path))
    out = tmp_path / "out"
    assert main(["explain", "--checkpoint", str(ckpt), *paths, "--output", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["a_1_rollout.png", "b_1_rollout.png", "grid.png",
                     "only_a_rollout.png", "only_b_rollout.png"]
    assert len(capsys.readouterr().out.splitlines()) == 4
    assert Path(out / "grid.png").stat().st_size > 0
