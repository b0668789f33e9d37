"""`vit explain` on files: one PNG per image, named so that no overlay overwrites another."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_predict import save_checkpoint, tiny_model

import vit.inference.overlays
from vit.cli import main
from vit.models.vision_transformer import VisionTransformer


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


def test_each_image_is_decoded_once_and_each_batch_runs_the_model_once(tmp_path, monkeypatch):
    ckpt = save_checkpoint(tmp_path / "best.pt", tiny_model(), ["x", "y", "z"])
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(paths[-1])
    decoded, forwards = [], []
    real_load, real_forward = vit.inference.overlays.load_image, VisionTransformer.forward
    monkeypatch.setattr(vit.inference.overlays, "load_image", lambda p: decoded.append(p) or real_load(p))
    monkeypatch.setattr(VisionTransformer, "forward",
                        lambda self, x, **kw: forwards.append(len(x)) or real_forward(self, x, **kw))
    results = vit.inference.overlays.explain_files(checkpoint=ckpt, paths=paths, output=tmp_path / "out",
                                            batch_size=2, device="cpu", topk=2)
    assert sorted(map(str, decoded)) == sorted(map(str, paths))
    assert forwards == [2, 2, 1]
    # the titles' predictions are the classifier's
    from vit import Classifier

    expected = Classifier.from_checkpoint(ckpt, device="cpu").predict(paths, topk=2)
    for result, top in zip(results, expected, strict=True):
        assert [label for label, _ in result.predictions] == [label for label, _ in top]
        assert [p for _, p in result.predictions] == [pytest.approx(p, abs=1e-5) for _, p in top]
