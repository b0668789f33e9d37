"""vit.inference.classifier: Classifier inputs, preprocessing, batching, unreadable files, path expansion."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.images import colour_image, write_image
from helpers.models import save_checkpoint, tiny_vit
from PIL import Image

from vit.data.dataset import ImageFolderDataset
from vit.data.folders import expand_paths
from vit.data.images import UnreadableImageError
from vit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform
from vit.errors import CheckpointError, DataError
from vit.inference.classifier import Classifier, ImageInputError, to_rgb_array
from vit.inference.export import export_safetensors
from vit.models.checkpoint import load_checkpoint

# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", tiny_vit(head_std=2.0),
                           ["cat", "dog", "fox"])


@pytest.fixture(scope="module")
def clf(ckpt_path) -> Classifier:
    return Classifier.from_checkpoint(ckpt_path, device="cpu")


@pytest.fixture
def picture(tmp_path) -> Path:
    """A 40x36 RGB PNG with structure (a bright square), so geometry mistakes would show."""
    array = colour_image((90, 120, 150), size=(40, 36), seed=1)
    array[5:20, 8:24] = (250, 240, 10)
    return write_image(tmp_path / "picture.png", array)


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------


def test_every_input_type_gives_the_same_probabilities(clf, picture):
    pil = Image.open(picture)
    array = np.array(pil.convert("RGB"))
    chw = torch.from_numpy(array).permute(2, 0, 1)
    reference = clf.predict_proba(str(picture))
    assert reference.shape == (1, 3)
    for image in (picture, pil, array, chw, chw.float() / 255, chw.float().div(255).double()):
        torch.testing.assert_close(clf.predict_proba(image), reference, atol=0, rtol=0)
    batch = clf.predict_proba([picture, pil, array, chw])
    torch.testing.assert_close(batch, reference.expand(4, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(clf.predict_proba(chw[None].repeat(2, 1, 1, 1)),
                               reference.expand(2, 3), atol=1e-6, rtol=0)


def test_pil_image_with_transparency_is_read_like_the_file(clf, tmp_path):
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:, :16, 3] = 255  # left half opaque red, right half fully transparent
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    from_file = to_rgb_array(path)
    np.testing.assert_array_equal(to_rgb_array(Image.open(path)), from_file)
    assert tuple(from_file[0, 0]) == (200, 0, 0) and tuple(from_file[0, -1]) == (255, 255, 255)


def test_grey_inputs_become_three_equal_channels(clf):
    grey = np.full((32, 32), 77, dtype=np.uint8)
    expected = np.full((32, 32, 3), 77, dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb_array(grey), expected)
    np.testing.assert_array_equal(to_rgb_array(torch.from_numpy(grey)[None]), expected)
    np.testing.assert_array_equal(to_rgb_array(Image.fromarray(grey)), expected)


@pytest.mark.parametrize(("image", "message"), [
    (np.zeros((8, 8, 3), dtype=np.float32), "uint8"),
    (np.zeros((8, 8, 5), dtype=np.uint8), "HxWx3"),
    (torch.zeros(8, 8, 3, dtype=torch.uint8), "CxHxW"),
    (torch.full((3, 8, 8), -1.5), "0..1"),
    (torch.zeros(3, 8, 8, dtype=torch.int32), "uint8 or float"),
    (12345, "cannot classify an object of type int"),
])
def test_bad_in_memory_images_are_refused_clearly(clf, image, message):
    with pytest.raises(ImageInputError, match=message):
        clf.predict(image)


# ---------------------------------------------------------------------------------------------
# preprocessing: what the model sees
# ---------------------------------------------------------------------------------------------


def test_transform_is_the_normalised_view(tmp_path):
    """transform = (view / 255 - mean) / std, with view the resized and centre-cropped image."""
    path = save_checkpoint(tmp_path / "m.pt", tiny_vit(head_std=2.0), ["a", "b", "c"], crop_pct=0.875)
    clf = Classifier.from_checkpoint(path, device="cpu")
    image = colour_image((10, 200, 90), size=(64, 48))
    view = clf.view(image)[0]
    assert view.shape == (32, 32, 3) and view.dtype == np.uint8
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    expected = (torch.from_numpy(view).permute(2, 0, 1).float() / 255 - mean) / std
    torch.testing.assert_close(clf.transform(image)[0], expected, atol=1e-5, rtol=0)


def test_view_resizes_the_short_side_then_centre_crops(clf):
    """A 64x32 image, left half black and right half white: after resizing to 32 px high and
    cropping the central 32 columns, the left 16 columns are black and the right 16 white."""
    image = np.zeros((32, 64, 3), dtype=np.uint8)
    image[:, 32:] = 255
    view = clf.view(image)[0]
    assert view.shape == (32, 32, 3)
    assert (view[:, :15] == 0).all() and (view[:, 17:] == 255).all()


def test_transform_equals_the_training_validation_pipeline(clf, picture):
    """The batch the classifier builds is what the trainer's validation dataset yields."""
    val_set = ImageFolderDataset([(str(picture), 0)], ["x"],
                                 build_transform(img_size=32, train=False, crop_pct=1.0))
    torch.testing.assert_close(clf.transform(picture)[0], val_set[0][0], atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------
# predictions
# ---------------------------------------------------------------------------------------------


def test_probabilities_are_the_softmax_of_the_model(clf, picture):
    model = tiny_vit(head_std=2.0)  # the same weights, built independently of the checkpoint
    x = clf.transform(picture)
    with torch.no_grad():
        expected = model(x).softmax(dim=-1)
    torch.testing.assert_close(clf.predict_proba(picture), expected, atol=1e-6, rtol=0)


def test_predict_sorts_labels_and_clips_topk(clf, picture):
    probs = clf.predict_proba(picture)[0]
    (top,) = clf.predict(picture, topk=10)  # more than the 3 classes
    assert len(top) == 3
    assert [p for _, p in top] == sorted(probs.tolist(), reverse=True)
    assert {label: p for label, p in top} == dict(zip(clf.classes, probs.tolist(), strict=True))
    assert clf.predict(picture, topk=1)[0] == top[:1]
    with pytest.raises(ValueError, match="topk"):
        clf.predict(picture, topk=0)


def test_batch_size_does_not_change_results(clf, tmp_path):
    images = [colour_image(rgb, seed=i) for i, rgb in enumerate([(10, 20, 30), (200, 0, 90),
                                                                 (0, 255, 0), (128, 128, 128),
                                                                 (250, 250, 0)])]
    one_by_one = torch.cat([clf.predict_proba(image) for image in images])
    torch.testing.assert_close(clf.predict_proba(images, batch_size=2), one_by_one,
                               atol=1e-6, rtol=0)
    assert clf.predict_proba([]).shape == (0, 3)


def test_unreadable_file_raises_from_predict_but_predict_files_skips_it(clf, picture, tmp_path,
                                                                        caplog):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(UnreadableImageError, match="broken.jpg"):
        clf.predict([picture, broken])
    with caplog.at_level(logging.WARNING, logger="vit.inference.classifier"):
        results = clf.predict_files([picture, broken, picture], topk=2, batch_size=2)
    assert [r.path for r in results] == [str(picture), str(broken), str(picture)]
    assert results[1].predictions is None and "not an image" in results[1].error
    assert results[0].error is None and results[0].predictions == clf.predict(picture, topk=2)[0]
    assert results[2].predictions == results[0].predictions
    assert any("broken.jpg" in r.getMessage() for r in caplog.records)


def test_predict_files_progress_bar_only_for_several_batches(clf, picture, capsys):
    clf.predict_files([picture] * 3, batch_size=4, show_progress=True)
    assert "predict" not in capsys.readouterr().err
    clf.predict_files([picture] * 3, batch_size=1, show_progress=True)
    assert "predict:   0%|" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------


def test_exported_safetensors_predicts_like_the_checkpoint(clf, ckpt_path, picture, tmp_path):
    weights, _ = export_safetensors(load_checkpoint(ckpt_path), tmp_path / "m.safetensors")
    exported = Classifier.from_checkpoint(weights, device="cpu")
    assert exported.classes == clf.classes and exported.preprocess == clf.preprocess
    torch.testing.assert_close(exported.predict_proba(picture), clf.predict_proba(picture),
                               atol=0, rtol=0)
    assert not exported.model.training


def test_classes_that_do_not_fit_the_model_are_refused(tmp_path):
    model = tiny_vit(num_classes=3, head_std=2.0)
    with pytest.raises(CheckpointError, match="3 outputs but the checkpoint names 2 classes"):
        Classifier(model, classes=["a", "b"], preprocess={"img_size": 32, "mean": IMAGENET_MEAN,
                                                          "std": IMAGENET_STD, "crop_pct": 1.0})


# ---------------------------------------------------------------------------------------------
# expand_paths
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path) -> Path:
    pixel = np.zeros((4, 4, 3), dtype=np.uint8)
    for rel in ("a/1.png", "a/sub/2.JPG", "b/3.png", "a/.hidden/4.png", "a/.5.png"):
        write_image(tmp_path / rel, pixel)
    (tmp_path / "a" / "notes.txt").write_text("hello")
    return tmp_path


def test_expand_paths_recurses_into_folders_and_skips_hidden_and_non_images(tree):
    assert expand_paths([tree / "a"]) == [tree / "a/1.png", tree / "a/sub/2.JPG"]


def test_expand_paths_expands_globs_itself_and_drops_duplicates(tree):
    found = expand_paths([str(tree / "*" / "*.png"), str(tree / "b/3.png"),
                          str(tree / "**" / "2.JPG")])
    assert found == [tree / "a/1.png", tree / "b/3.png", tree / "a/sub/2.JPG"]


def test_expand_paths_keeps_a_file_named_explicitly(tree):
    assert expand_paths([tree / "a/notes.txt"]) == [tree / "a/notes.txt"]


@pytest.mark.parametrize(("pattern", "message"), [
    ("missing.png", "no such file or folder"),
    ("*.gif", "matches nothing"),
    ("a/*.txt", "none of them images"),
    ("empty", "no images in folder"),
])
def test_expand_paths_refuses_what_cannot_be_meant(tree, pattern, message):
    (tree / "empty").mkdir()
    with pytest.raises(DataError, match=message):
        expand_paths([str(tree / pattern)])
