"""Does attention rollout find the object, and is it faithful? (synthetic shapes, known boxes)

Fast tests check the geometry behind `vit explain-bench`'s pointing game on the shapes (object
box -> patch grid, through the eval resize and centre crop) against hand-computed grids, the
choice of held-out images, and the bench end to end on an untrained tiny checkpoint, its
pointing game recomputed here from the boxes. The slow tests train the quickstart model briefly
on the synthetic shapes and check rollout against the object boxes with an independent
reference: at 48 px with crop_pct 1.0 the eval geometry is the identity, so patch (i, j) is "on
the object" when its centre ((j + 1/2) * 8, (i + 1/2) * 8) lies in the box [x0, x1) x [y0, y1).
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.models import tiny_vit

from vit.bench.measures import BenchSettings, mean_and_sem
from vit.bench.run import (
    boxed_objects,
    held_out_images,
    pick_balanced,
    run_explain_bench,
)
from vit.data.folders import scan_folder
from vit.data.images import load_image
from vit.data.synthetic import load_boxes, make_shapes_dataset
from vit.errors import DataError
from vit.explain import attention_rollout, deletion_auc, random_saliency, saliency
from vit.explain.object_boxes import patch_mask
from vit.inference.classifier import Classifier
from vit.models.checkpoint import make_checkpoint
from vit.training.quickstart import quickstart_config

# --- geometry: box -> patch grid ----------------------------------------------------------------


def test_box_to_patches_without_resize_is_the_centre_test() -> None:
    # 48 px, crop_pct 1.0: identity. Patch centres at 4, 12, 20, 28, 36, 44 px.
    # x in [8, 21) holds the centres 12 and 20 (columns 1, 2); y in [0, 13) holds 4 and 12.
    mask = patch_mask((8, 0, 21, 13), (48, 48), img_size=48, crop_pct=1.0, patch_size=8)
    expected = torch.zeros(6, 6, dtype=torch.bool)
    expected[0:2, 1:3] = True
    assert torch.equal(mask, expected)


def test_box_edges_are_exclusive_at_a_patch_centre() -> None:
    # x1 = 20 excludes the centre at x = 20; x0 = 20 includes it.
    left = patch_mask((0, 0, 20, 48), (48, 48), img_size=48, crop_pct=1.0, patch_size=8)
    right = patch_mask((20, 0, 48, 48), (48, 48), img_size=48, crop_pct=1.0, patch_size=8)
    assert left[0].tolist() == [True, True, False] + [False] * 3
    assert right[0].tolist() == [False, False, True] + [True] * 3


def test_box_follows_the_eval_resize_and_centre_crop() -> None:
    # A 100x60 (w x h) image at img_size 32, crop_pct 0.8: the shorter side goes to
    # floor(32 / 0.8) = 40 px (scale 2/3, so 67x40), then the centre 32x32 is cut at
    # x offset (67 - 32) // 2 = 17, y offset (40 - 32) // 2 = 4.
    # The box x [45, 90), y [21, 45) becomes x [30, 60) - 17 = [13, 43) -> [13, 32) after the
    # crop and y [14, 30) - 4 = [10, 26). Patch centres at 4, 12, 20, 28: columns 2, 3 and
    # rows 1, 2 (every edge is at least 2 px from a centre, so resampling cannot flip one).
    mask = patch_mask((45, 21, 90, 45), (60, 100), img_size=32, crop_pct=0.8, patch_size=8)
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[1:3, 2:4] = True
    assert torch.equal(mask, expected)


def test_pick_balanced_lets_classes_take_turns() -> None:
    labels = [0, 0, 0, 0, 1, 1, 2]
    picked = pick_balanced(labels, limit=5, seed=0)
    assert sorted(labels[i] for i in picked) == [0, 0, 1, 1, 2]
    assert picked == sorted(picked) and len(set(picked)) == 5
    assert pick_balanced(labels, limit=5, seed=0) == picked
    assert pick_balanced(labels, limit=50, seed=3) == list(range(7))


def test_held_out_images_are_the_runs_validation_split_with_their_boxes(tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "shapes", num_per_class=2, img_size=32,
                               classes=["circle", "square"], seed=0)
    run = tmp_path / "run"
    run.mkdir()
    val_files = [str(data / "square" / "00001.png"), str(data / "circle" / "00000.png")]
    (run / "split.json").write_text(json.dumps({"kind": "stratified", "val_files": val_files}))

    images, source = held_out_images(data, run / "best.pt", ["circle", "square"])
    assert images == [(Path(val_files[0]), 1), (Path(val_files[1]), 0)]
    assert source.endswith("split.json (val_files)")
    boxes = load_boxes(data)
    assert boxed_objects(data, images) == [[(1, boxes["square/00001.png"])],
                                           [(0, boxes["circle/00000.png"])]]
    with pytest.raises(DataError, match="no box for"):
        boxed_objects(data, [(data / "circle" / "missing.png", 0)])
    assert boxed_objects(tmp_path / "run", images) is None  # no boxes.json: no pointing game


def test_train_folder_without_held_out_images_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data" / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="held-out"):
        held_out_images(tmp_path / "data", tmp_path / "best.pt", ["cat"])


def test_mean_and_sem_match_numpy() -> None:
    values = torch.tensor([1.0, 2.0, 4.0, 7.0])
    mean, sem = mean_and_sem(values)
    assert mean == pytest.approx(3.5)
    assert sem == pytest.approx(np.std([1, 2, 4, 7], ddof=1) / 2.0)


# --- the bench end to end, on an untrained tiny model ---------------------------------------------


def _centres_in_box(box: tuple[int, int, int, int], *, grid: int, patch: int) -> torch.Tensor:
    """Reference: (grid, grid) bool, patch centre inside [x0, x1) x [y0, y1) (no resize)."""
    x0, y0, x1, y1 = box
    centres = (torch.arange(grid) + 0.5) * patch
    in_x = (centres >= x0) & (centres < x1)
    in_y = (centres >= y0) & (centres < y1)
    return in_y[:, None] & in_x[None, :]


def test_bench_plays_the_pointing_game_on_the_shapes_boxes(tmp_path: Path) -> None:
    classes = ["circle", "square", "triangle"]
    data = make_shapes_dataset(tmp_path / "shapes", num_per_class=4, img_size=32,
                               classes=classes, seed=0, val_fraction=0.5)
    model = tiny_vit(train=True)
    ckpt = make_checkpoint(model=model, classes=classes, config={}, epoch=0, step=0,
                           best_top1=None, metrics={},
                           preprocess={"img_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3,
                                       "crop_pct": 1.0})
    torch.save(ckpt, tmp_path / "tiny.pt")

    result, paths = run_explain_bench(
        tmp_path / "tiny.pt", data, images=6, output=tmp_path / "out", device="cpu",
        settings=BenchSettings(methods=["attention", "random"], steps=4, sanity=False))

    assert result["images"] == 6 and all(p.is_file() for p in paths)  # 2 val images x 3 classes
    # The reference: each held-out image's own box on the 4x4 grid, the map of its true class.
    samples = scan_folder(data / "val", classes=classes).samples
    boxes = load_boxes(data)
    inside = torch.stack([_centres_in_box(boxes[Path(p).relative_to(data).as_posix()], grid=4,
                                          patch=8) for p, _ in samples])
    clf = Classifier.from_checkpoint(tmp_path / "tiny.pt", device="cpu")
    x = clf.transform([np.asarray(load_image(p)) for p, _ in samples])
    maps = saliency(clf.model, x, "attention").flatten(1)
    top = maps == maps.max(dim=1, keepdim=True).values
    expected = ((top & inside.flatten(1)).sum(1) / top.sum(1)).tolist()
    assert result["per_image"]["attention"]["asked_object"] == pytest.approx(expected)
    assert "asked object (%)" in paths[0].read_text()


# --- a trained model ------------------------------------------------------------------------------

# The quickstart (its model, data and optimiser settings) for 8 epochs instead of 30: 56 % val
# accuracy, enough for a clear deletion gap (see the numbers at each assertion). 200 images per
# class for 8 epochs reached only 41 % and a deletion gap of 0.03, too close to call.
# Measured on 2 shared cores: the module took 315 s wall (load 6-9) and 251 s (load 4-5), for
# 210 and 225 s CPU (user + sys, data-loader workers included); about 2.5 minutes when idle.
SHAPES_PER_CLASS = 400
EPOCHS = 8
MIN_VAL_ACCURACY = 50.0  # measured 56.25 %; below, the run learned too little to test
DELETION_STEPS = 12  # 3 patches per step on the 6x6 grid: a close, cheaper curve


@dataclass
class Trained:
    classifier: Classifier
    images: torch.Tensor  # (N, 3, 48, 48) held-out images, normalised
    inside: torch.Tensor  # (N, 6, 6) bool: patch centre inside the object's box
    val_top1: float
    seconds: float  # data + training, wall
    cpu_seconds: float  # data + training, this process and its finished children (workers)


def _cpu_seconds() -> float:
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def _held_out(root: Path, classifier: Classifier) -> tuple[torch.Tensor, torch.Tensor]:
    samples = scan_folder(root / "val", classes=classifier.classes).samples
    boxes = load_boxes(root)
    paths = [Path(path) for path, _ in samples]
    images = classifier.transform([np.asarray(load_image(p)) for p in paths])
    inside = torch.stack([
        _centres_in_box(boxes[p.relative_to(root).as_posix()], grid=6, patch=8) for p in paths
    ])
    return images, inside


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    from vit.training.trainer import train

    start, cpu_start = time.perf_counter(), _cpu_seconds()
    tmp = tmp_path_factory.mktemp("localization")
    root = make_shapes_dataset(tmp / "shapes", num_per_class=SHAPES_PER_CLASS, img_size=48,
                               seed=0, val_fraction=0.2)
    cfg = quickstart_config()
    cfg = replace(cfg, data=replace(cfg.data, root=str(root)),
                  train=replace(cfg.train, epochs=EPOCHS, output=str(tmp / "run"),
                                explain_samples=0))
    summary = train(cfg, show_progress=False)
    classifier = Classifier.from_checkpoint(summary.run_dir / "best.pt", device="cpu")
    assert classifier.img_size == 48 and classifier.preprocess["crop_pct"] == 1.0  # identity
    images, inside = _held_out(root, classifier)
    return Trained(classifier, images, inside, float(summary.best_top1),
                   time.perf_counter() - start, _cpu_seconds() - cpu_start)


@pytest.mark.slow
def test_training_learned_the_shapes(trained: Trained) -> None:
    print(f"\ntrained to {trained.val_top1:.1f}% in {trained.seconds:.0f} s wall, "
          f"{trained.cpu_seconds:.0f} s CPU")
    assert trained.val_top1 >= MIN_VAL_ACCURACY


@pytest.mark.slow
def test_rollout_points_inside_the_object(trained: Trained) -> None:
    saliency = attention_rollout(trained.classifier.model, trained.images)
    top = saliency.flatten(1).argmax(dim=1)
    hit_rate = trained.inside.flatten(1).gather(1, top[:, None]).float().mean().item()
    chance = trained.inside.flatten(1).float().mean().item()
    # Measured: 97.0 % of the 400 held-out images, chance 16.2 %. A map off by one patch scores
    # 54 %, a transposed one 46 %, a mirrored one 38 %. Rollout of a freshly initialised model
    # points at the bright shape too (99.5 %, measured 2026-11-21): this checks the
    # map's geometry (grid order, prefix tokens, orientation), not what training taught; the
    # deletion test below does that.
    assert hit_rate >= 0.85
    assert hit_rate >= chance + 0.5


@pytest.mark.slow
def test_rollout_deletion_beats_random_order(trained: Trained) -> None:
    model, images = trained.classifier.model, trained.images
    generator = torch.Generator().manual_seed(0)
    orders = {
        "rollout": attention_rollout(model, images),
        "random": random_saliency(images.shape[0], (6, 6), generator),
    }
    auc = {name: deletion_auc(model, images, saliency, steps=DELETION_STEPS, batch_size=1024)
           for name, saliency in orders.items()}
    gap = auc["random"] - auc["rollout"]  # paired: same images, same target class
    sem = gap.std().item() / len(gap) ** 0.5
    # Measured: rollout 0.243, random 0.351: gap 0.108 +- 0.011 (standard error) on the 400
    # held-out images. A freshly initialised model has none (0.264 vs 0.263 on 100 images).
    assert gap.mean().item() >= 0.05
    assert gap.mean().item() >= 4 * sem
