"""Test-time augmentation: Classifier.predict(tta=...), vit predict --tta, vit evaluate --tta;
each checked against the views made independently from the images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.images import make_colour_folder
from helpers.models import save_checkpoint, tiny_vit

from vit.cli import main
from vit.errors import ConfigError
from vit.inference.classifier import Classifier
from vit.inference.tta import CROP_ZOOM, tta_views


@pytest.fixture(scope="module")
def clf(tmp_path_factory) -> Classifier:
    path = save_checkpoint(tmp_path_factory.mktemp("tta") / "best.pt", tiny_vit(head_std=2.0),
                           ["red", "green", "blue"])
    return Classifier.from_checkpoint(path, device="cpu")


@pytest.fixture
def images() -> list[np.ndarray]:
    """Asymmetric images (a bright patch left of centre), so mirroring changes the output."""
    rng = np.random.default_rng(1)
    out = []
    for _ in range(3):
        img = rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)
        img[5:15, 2:10] = 255
        out.append(img)
    return out


def softmax(clf: Classifier, views: list[np.ndarray]) -> torch.Tensor:
    with torch.no_grad():
        return clf.model(clf.normalise(views)).softmax(-1)


def test_flip_averages_the_image_and_its_mirror(clf, images):
    views = clf.view(images)
    expected = (softmax(clf, views) + softmax(clf, [np.ascontiguousarray(v[:, ::-1])
                                                    for v in views])) / 2
    got = clf.predict_proba(images, tta="flip")
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(got, clf.predict_proba(images), atol=1e-4)  # it changed something
    torch.testing.assert_close(got.sum(1), torch.ones(len(images)))


def test_crops_average_ten_views_made_before_normalising(clf, images):
    """The corner crops of the enlarged image, made from the uint8 view and normalised after,
    plus the image, and all mirrored: the mean of their 10 softmaxes."""
    views = clf.view(images)
    s = clf.img_size
    big = round(s * CROP_ZOOM)
    pixels = torch.from_numpy(np.stack(views)).permute(0, 3, 1, 2).float()  # (N, 3, s, s)
    enlarged = F.interpolate(pixels, size=(big, big), mode="bilinear", align_corners=False)
    crops = [pixels] + [enlarged[..., y:y + s, x:x + s] for y in (0, big - s)
                        for x in (0, big - s)]
    crops += [c.flip(-1) for c in crops]
    mean = torch.tensor(clf.preprocess["mean"]).view(1, 3, 1, 1) * 255
    std = torch.tensor(clf.preprocess["std"]).view(1, 3, 1, 1) * 255
    with torch.no_grad():
        expected = torch.stack([clf.model((c - mean) / std).softmax(-1) for c in crops]).mean(0)
    torch.testing.assert_close(clf.predict_proba(images, tta="crops"), expected, atol=1e-5,
                               rtol=1e-4)
    assert len(tta_views(torch.zeros(1, 3, s, s), "crops")) == 10


def test_predict_and_files_agree_and_bad_modes_are_refused(clf, images, tmp_path):
    from PIL import Image

    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(img).save(paths[-1])
    in_memory = clf.predict(images, topk=2, tta="crops")
    files = clf.predict_files(paths, topk=2, tta="crops")
    assert [f.predictions for f in files] == in_memory
    assert clf.predict(images, tta="none") == clf.predict(images)
    with pytest.raises(ConfigError, match="tta must be one of flip, crops"):
        clf.predict(images, tta="mirror")


def test_cli_predict_and_evaluate_take_tta(clf, tmp_path, capsys):
    data = make_colour_folder(tmp_path / "data", per_class=2)
    ckpt = tmp_path / "best.pt"
    save_checkpoint(ckpt, clf.model, clf.classes)
    files = sorted(str(p) for p in data.rglob("*.png"))
    assert main(["predict", "--checkpoint", str(ckpt), *files, "--tta", "flip",
                 "--format", "json", "--device", "cpu"]) == 0
    records = json.loads(capsys.readouterr().out)
    expected = clf.predict_proba(files, tta="flip")
    top = [r["predictions"][0]["probability"] for r in records]
    np.testing.assert_allclose(top, expected.max(1).values.numpy(), rtol=1e-5)
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--tta", "crops",
                 "--output", str(tmp_path / "eval"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "test-time augmentation: crops" in out
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["tta"] == "crops"
    with pytest.raises(SystemExit):
        main(["predict", "--checkpoint", str(ckpt), files[0], "--tta", "mirror"])
