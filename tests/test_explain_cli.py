"""`vit explain` on files: one PNG per image, named so that no overlay overwrites another."""

import re
from pathlib import Path

import numpy as np
import pytest
from helpers.models import save_checkpoint, tiny_vit
from PIL import Image

import vit.figures.overlay_files
from vit.cli import main
from vit.models.vision_transformer import VisionTransformer


def test_same_named_files_in_different_folders_get_separate_overlays(tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "best.pt", tiny_vit(head_std=2.0), ["x", "y", "z"])
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
    assert names == ["a_1_attnlrp.png", "b_1_attnlrp.png", "grid.png", "index.html",
                     "only_a_attnlrp.png", "only_b_attnlrp.png"]
    lines = capsys.readouterr().out.splitlines()
    assert sorted(Path(line.split()[0]).name for line in lines[:4]) == [
        "a_1_attnlrp.png", "b_1_attnlrp.png", "only_a_attnlrp.png", "only_b_attnlrp.png"]
    assert Path(out / "grid.png").stat().st_size > 0


def test_several_methods_give_one_row_per_image_and_one_column_per_method(tmp_path, capsys):
    from vit.bench.measures import BENCH_METHODS
    from vit.explain import METHODS
    from vit.figures.overlay_files import parse_methods
    from vit.plots import GRID_CELL_SIZE

    ckpt = save_checkpoint(tmp_path / "best.pt", tiny_vit(head_std=2.0), ["x", "y", "z"])
    rng = np.random.default_rng(1)
    paths = []
    for name in ("p.png", "q.png"):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / name)
        paths.append(str(tmp_path / name))
    grid = tmp_path / "figure.png"
    assert main(["explain", "--checkpoint", str(ckpt), *paths, "--output", str(tmp_path / "o"),
                 "--method", "rollout,legrad,gradcam", "--grid", str(grid)]) == 0
    names = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert names == sorted(["index.html", *(f"{s}_{m}.png" for s in "pq"
                                            for m in ("rollout", "legrad", "gradcam"))])
    width, height = Image.open(grid).size  # 2 rows x (input + 3 methods) cells
    assert width == round(4 * GRID_CELL_SIZE[0] * 120) and height > 2 * GRID_CELL_SIZE[1] * 120
    assert parse_methods("all") == list(METHODS)
    assert all(m in command_help("explain") for m in METHODS)
    assert all(m in command_help("explain-bench") for m in BENCH_METHODS)
    assert main(["explain", "--checkpoint", str(ckpt), *paths, "--output", str(tmp_path / "o"),
                 "--method", "rollout,lrp"]) == 2
    assert ", ".join(METHODS) in capsys.readouterr().err


def command_help(command: str) -> str:
    """`vit COMMAND -h` on one line (argparse wraps lines at spaces and hyphens)."""
    from vit.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return re.sub(r"-\s+", "-", " ".join(sub.choices[command].format_help().split()))


def test_each_image_is_decoded_once_and_each_batch_runs_the_model_once(tmp_path, monkeypatch):
    ckpt = save_checkpoint(tmp_path / "best.pt", tiny_vit(head_std=2.0), ["x", "y", "z"])
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(paths[-1])
    decoded, forwards = [], []
    real_load, real_forward = vit.figures.overlay_files.load_image, VisionTransformer.forward
    monkeypatch.setattr(vit.figures.overlay_files, "load_image", lambda p: decoded.append(p) or real_load(p))
    monkeypatch.setattr(VisionTransformer, "forward",
                        lambda self, x, **kw: forwards.append(len(x)) or real_forward(self, x, **kw))
    results = vit.figures.overlay_files.explain_files(
        checkpoint=ckpt, paths=paths, output=tmp_path / "out", batch_size=2, device="cpu",
        options=vit.figures.overlay_files.OverlayOptions(topk=2))
    assert sorted(map(str, decoded)) == sorted(map(str, paths))
    assert forwards == [2, 2, 1]
    # the titles' predictions are the classifier's
    from vit import Classifier

    expected = Classifier.from_checkpoint(ckpt, device="cpu").predict(paths, topk=2)
    for result, top in zip(results, expected, strict=True):
        assert [label for label, _ in result.predictions] == [label for label, _ in top]
        assert [p for _, p in result.predictions] == [pytest.approx(p, abs=1e-5) for _, p in top]
