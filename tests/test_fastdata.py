"""The in-memory pipeline (vit/memory.py) against the albumentations pipeline it replaces."""

from __future__ import annotations

import albucore
import numpy as np
import pytest
import torch
from albumentations.augmentations.pixel import functional as fpixel
from helpers.stats import ks_statistic, ks_threshold
from PIL import Image

from vit.data import memory
from vit.data.augmentation import AugmentRecipe
from vit.data.images import load_image
from vit.data.loader import set_epoch
from vit.data.transforms import A, build_transform, eval_geometry
from vit.errors import ConfigError

MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]


def albumentations_boxes(n: int, *, height: int, width: int, scale, ratio) -> np.ndarray:
    rrc = A.RandomResizedCrop(size=(8, 8), scale=scale, ratio=ratio)
    rrc.set_random_seed(0)
    boxes = []
    for _ in range(n):
        x0, y0, x1, y1 = rrc.get_params_dependent_on_data({"shape": (height, width)}, {})["crop_coords"]
        boxes.append((x0, y0, x1 - x0, y1 - y0))
    return np.array(boxes, dtype=np.float64)


@pytest.mark.parametrize(("height", "width", "scale", "ratio"), [
    (32, 32, (0.08, 1.0), (3 / 4, 4 / 3)),
    (32, 32, (0.5, 1.0), (3 / 4, 4 / 3)),
    (24, 64, (0.3, 1.0), (1.0, 1.0)),  # often no fit: exercises the centre-crop fallback
])
def test_crop_boxes_follow_the_albumentations_distribution(height, width, scale, ratio):
    n = 4000
    ours = memory.sample_crop_boxes(n, height=height, width=width, scale=scale, ratio=ratio,
                                      generator=torch.Generator().manual_seed(0)).numpy()
    theirs = albumentations_boxes(n, height=height, width=width, scale=scale, ratio=ratio)
    limit = ks_threshold(n, n)
    for column, name in enumerate(["x0", "y0", "w", "h"]):
        d = ks_statistic(ours[:, column], theirs[:, column])
        assert d < limit, f"{name}: KS distance {d:.3f} >= {limit:.3f}"
    assert (ours[:, 0] + ours[:, 2] <= width).all() and (ours[:, 1] + ours[:, 3] <= height).all()
    assert (ours[:, 2] >= 1).all() and (ours[:, 3] >= 1).all()


def test_the_ks_check_can_tell_different_scales_apart():
    n = 4000
    ours = memory.sample_crop_boxes(n, height=32, width=32, scale=(0.5, 1.0), ratio=(0.75, 4 / 3),
                                      generator=torch.Generator().manual_seed(0)).numpy()
    theirs = albumentations_boxes(n, height=32, width=32, scale=(0.08, 1.0), ratio=(0.75, 4 / 3))
    assert ks_statistic(ours[:, 2], theirs[:, 2]) > 3 * ks_threshold(n, n)


def test_crop_and_resize_match_albumentations_pixels():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    rrc = A.RandomResizedCrop(size=(32, 32), area_for_downscale="image")
    for x0, y0, w, h in [(0, 0, 32, 32), (4, 6, 20, 17), (10, 0, 22, 30), (3, 3, 9, 9)]:
        expected = rrc.apply(image, crop_coords=(x0, y0, x0 + w, y0 + h))
        for flip in (False, True):
            x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
            box = torch.tensor([[x0, y0, w, h]], dtype=torch.float64)
            grid = memory.crop_grid(box, torch.tensor([flip]), height=32, width=32,
                                      size=32).float()
            ours = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                                   align_corners=False)
            ours = ours.round().clamp(0, 255)[0].permute(1, 2, 0).numpy()
            reference = expected[:, ::-1] if flip else expected
            diff = np.abs(ours - reference.astype(np.float32))
            assert diff.max() <= 1.0 and diff.mean() < 0.2, (x0, y0, w, h, flip, diff.max())


def _pipeline_outputs(image: np.ndarray, n: int, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """n augmented copies of one image from each pipeline, both normalised (n, 3, S, S)."""
    recipe = AugmentRecipe(**kwargs)
    tf = build_transform(img_size=image.shape[0], train=True, mean=MEAN, std=STD, recipe=recipe)
    theirs = []
    for i in range(n):
        tf.set_sample_seed(0, 0, i)
        theirs.append(tf(image).numpy())
    aug = memory.BatchAugment(img_size=image.shape[0], mean=MEAN, std=STD, recipe=recipe)
    batch = torch.from_numpy(image)[None].repeat(n, 1, 1, 1)
    ours = aug(batch, torch.Generator().manual_seed(0)).numpy()
    return ours, np.stack(theirs)


def test_flip_rate_matches_albumentations():
    """A left-dark/right-bright image: the flip rate is the share of outputs brighter on the left."""
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    image[:, 8:] = 255
    ours, theirs = _pipeline_outputs(image, 2000, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.3,
                                     randaug_n=0)
    rate = [float(np.mean(o[:, 0, :, 0].mean(axis=1) > o[:, 0, :, -1].mean(axis=1)))
            for o in (ours, theirs)]
    assert abs(rate[0] - 0.3) < 0.04 and abs(rate[1] - 0.3) < 0.04, rate


@pytest.mark.parametrize("randaug_n", [0, 2])
def test_whole_pipeline_output_statistics_match(randaug_n):
    """Per-image mean and spread of the outputs: same distributions from both pipelines."""
    rng = np.random.default_rng(1)
    image = (np.linspace(0, 255, 32)[None, :, None] * np.ones((32, 1, 3))).astype(np.uint8)
    image = np.clip(image + rng.integers(0, 40, image.shape), 0, 255).astype(np.uint8)
    n = 1500
    ours, theirs = _pipeline_outputs(image, n, scale=(0.3, 1.0), hflip=0.5, randaug_n=randaug_n,
                                     randaug_m=9)
    limit = ks_threshold(n, n)
    for name, stat in [("mean", lambda o: o.mean(axis=(1, 2, 3))),
                       ("std", lambda o: o.std(axis=(1, 2, 3))),
                       ("left-right", lambda o: o[..., :16].mean(axis=(1, 2, 3))
                        - o[..., 16:].mean(axis=(1, 2, 3)))]:
        d = ks_statistic(stat(ours), stat(theirs))
        assert d < limit, f"{name}: KS distance {d:.3f} >= {limit:.3f}"


# --- each RandAugment op against albumentations' own implementation ---------------------------


@pytest.fixture
def photo() -> np.ndarray:
    rng = np.random.default_rng(2)
    base = np.linspace(30, 220, 24)[None, :, None] + np.linspace(0, 30, 24)[:, None, None]
    return np.clip(base + rng.integers(-25, 25, (24, 24, 3)), 0, 255).astype(np.uint8)


def _t(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].float()


def _np(x: torch.Tensor) -> np.ndarray:
    return x[0].permute(1, 2, 0).numpy().astype(np.float32)


def test_pixel_ops_equal_albumentations(photo):
    one = torch.ones(1, dtype=torch.float32)
    cases = [
        (memory.posterize(_t(photo), one * 3), fpixel.posterize(photo, 3)),
        (memory.solarize(_t(photo), one * 0.6), fpixel.solarize(photo, 0.6)),
        (memory.equalize(_t(photo)), fpixel.equalize(photo)),
        (memory.brightness_contrast(_t(photo), 1.3, -0.2),
         albucore.multiply_add(photo, 1.3, -0.2 * 255, inplace=False)),
        (memory.saturation(_t(photo), one * 1.6),
         fpixel.adjust_saturation_torchvision(photo, 1.6)),
    ]
    for i, (ours, theirs) in enumerate(cases):
        diff = np.abs(_np(ours) - theirs.astype(np.float32))
        assert diff.max() <= 1.0, (i, diff.max())


def test_autocontrast_is_equalize_up_to_albumentations_histogram_binning(photo):
    """AutoContrast(method="cdf") builds the equalisation table, but from cv2.calcHist over the
    range [0, 255) in 256 bins, which shifts a few bins by one: a few levels of difference."""
    theirs = A.AutoContrast(p=1.0)(image=photo)["image"].astype(np.float32)
    diff = np.abs(_np(memory.equalize(_t(photo))) - theirs)
    assert diff.max() <= 4.0 and diff.mean() < 2.0, (diff.max(), diff.mean())
    assert np.abs(photo.astype(np.float32) - theirs).mean() > 5 * diff.mean()  # it did change


def test_sharpen_matches_the_albumentations_kernel(photo):
    alpha = 0.6
    kernel = (1 - alpha) * np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], np.float32) + alpha * np.array(
        [[-1, -1, -1], [-1, 9, -1], [-1, -1, -1]], np.float32)
    theirs = fpixel.convolve(photo, kernel)
    ours = memory.sharpen(_t(photo), torch.tensor([alpha]))
    assert np.abs(_np(ours) - theirs).max() <= 1.0


def test_equalize_of_a_flat_channel_is_unchanged():
    flat = torch.full((1, 3, 8, 8), 77.0)
    assert torch.equal(memory.equalize(flat), flat)


@pytest.mark.parametrize(("ours", "theirs"), [
    (lambda: memory._rotation(torch.tensor([20.0])), dict(rotate=(20, 20))),
    (lambda: memory._shear(torch.tensor([12.0]), axis=0), dict(shear={"x": (12, 12), "y": (0, 0)})),
    (lambda: memory._translate(torch.tensor([0.25]), axis=0),
     dict(translate_percent={"x": (0.25, 0.25), "y": (0, 0)})),
])
def test_affine_ops_move_pixels_like_albumentations(photo, ours, theirs):
    """Same warp up to a mirror of the sign convention: compare with both senses, take the best."""
    fill = tuple(255.0 * m for m in MEAN)
    reference = A.Affine(**theirs, fill=fill, p=1.0)(image=photo)["image"].astype(np.float32)
    theta = ours()
    errors = []
    for sign in (1, -1):
        t = theta.clone()
        t[:, 0, 1] *= sign
        t[:, 1, 0] *= sign
        t[:, :, 2] *= sign
        warped = memory.affine(_t(photo), t, torch.tensor(fill, dtype=torch.float32))
        errors.append(np.abs(_np(warped.round()) - reference).mean())
    assert min(errors) < 3.0, errors  # interpolation at borders differs by a few levels
    assert max(errors) > min(errors) + 3.0  # and the comparison can tell the two senses apart


# --- decoding and the loader -------------------------------------------------------------------


def _folder(root, n=10, size=20):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = root / f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size + 6, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def test_decode_images_matches_the_eval_transform_and_skips_bad_files(tmp_path):
    paths = _folder(tmp_path)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    paths.insert(3, str(tmp_path / "bad.png"))
    images, kept, skipped = memory.decode_images(paths, size=16, crop_pct=0.875, workers=2)
    assert kept == [i for i in range(len(paths)) if i != 3]
    assert [s["path"] for s in skipped] == [paths[3]]
    assert images.shape == (10, 16, 16, 3) and images.dtype == torch.uint8
    for row, i in enumerate(kept):
        image = np.asarray(load_image(paths[i]))
        expected = eval_geometry(16, crop_pct=0.875)(image=image)["image"]
        assert np.array_equal(images[row].numpy(), expected)


def test_decode_images_refuses_what_does_not_fit_in_memory(tmp_path, monkeypatch):
    paths = _folder(tmp_path, n=3)
    monkeypatch.setattr(memory, "_physical_memory", lambda: 1000)
    with pytest.raises(ConfigError, match="data.pipeline=albumentations"):
        memory.decode_images(paths, size=16)


def test_eval_loader_gives_what_the_albumentations_eval_transform_gives(tmp_path):
    paths = _folder(tmp_path)
    images, kept, _ = memory.decode_images(paths, size=16, crop_pct=0.875)
    aug = memory.BatchAugment(img_size=16, mean=MEAN, std=STD, train=False)
    loader = memory.MemoryLoader(images, list(range(len(kept))), augment=aug, batch_size=4,
                                   shuffle=False, drop_last=False, seed=0)
    x = torch.cat([b for b, _ in loader])
    tf = build_transform(img_size=16, train=False, mean=MEAN, std=STD, crop_pct=0.875)
    expected = torch.stack([tf(load_image(p)) for p in paths])
    torch.testing.assert_close(x, expected, atol=1e-5, rtol=0)
    assert len(loader) == 3


def _train_loader(images, **kwargs):
    aug = memory.BatchAugment(img_size=16, mean=MEAN, std=STD,
                              recipe=AugmentRecipe(scale=(0.3, 1.0), randaug_n=2))
    defaults = dict(augment=aug, batch_size=4, shuffle=True, drop_last=True, seed=3)
    return memory.MemoryLoader(images, list(range(images.shape[0])), **{**defaults, **kwargs})


def test_memory_loader_is_reproducible_resumable_and_sharded():
    images = torch.randint(0, 256, (18, 16, 16, 3), dtype=torch.uint8)
    loader = _train_loader(images)
    set_epoch(loader, 1)
    full = list(loader)
    assert len(full) == len(loader) == 4
    set_epoch(loader, 1)
    again = list(loader)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full, again, strict=True))
    set_epoch(loader, 1, start_batch=2)  # a resumed run continues with the same batches
    tail = list(loader)
    assert len(tail) == 2
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[2:], tail, strict=True))
    set_epoch(loader, 2)
    assert not torch.equal(list(loader)[0][0], full[0][0])  # a new epoch, new draws

    shards = [_train_loader(images, shard=(r, 2), drop_last=False, batch_size=3)
              for r in range(2)]
    for s in shards:
        set_epoch(s, 0)
    seen = torch.cat([y for s in shards for _, y in s])
    assert sorted(seen.tolist()) == list(range(18))


def test_training_augmentation_needs_uint8_and_a_generator():
    aug = memory.BatchAugment(img_size=8, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="uint8"):
        aug(torch.zeros((1, 8, 8, 3)), torch.Generator())
    with pytest.raises(ValueError, match="generator"):
        aug(torch.zeros((1, 8, 8, 3), dtype=torch.uint8))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_augmentation_on_the_gpu_equals_the_cpu():
    images = torch.randint(0, 256, (64, 32, 32, 3), dtype=torch.uint8)
    aug = memory.BatchAugment(img_size=32, mean=MEAN, std=STD,
                              recipe=AugmentRecipe(scale=(0.3, 1.0), randaug_n=2))
    cpu = aug(images, torch.Generator().manual_seed(5))
    gpu = aug(images.cuda(), torch.Generator().manual_seed(5)).cpu()
    # the same draws; a value may land one grey level apart where rounding falls differently,
    # and a threshold op (solarize, posterize) can turn that into more at a few pixels
    grey_levels = (gpu - cpu).abs() * torch.tensor(STD).view(1, 3, 1, 1) * 255
    assert (grey_levels > 1.5).float().mean() < 0.01


def test_two_shards_augment_exactly_as_one_process_with_the_global_batch():
    images = torch.randint(0, 256, (26, 16, 16, 3), dtype=torch.uint8)
    one = _train_loader(images, batch_size=8)
    shards = [_train_loader(images, batch_size=4, shard=(r, 2)) for r in range(2)]
    for loader in (one, *shards):
        set_epoch(loader, 3)
    whole = list(one)
    parts = [list(s) for s in shards]
    assert len(whole) == len(parts[0]) == len(parts[1]) == 3
    for b, (x, y) in enumerate(whole):
        for r in range(2):
            torch.testing.assert_close(parts[r][b][0], x[r::2], atol=0, rtol=0)
            assert torch.equal(parts[r][b][1], y[r::2])


@pytest.mark.parametrize("world_size", [1, 2])
def test_augmenting_several_batches_per_call_gives_the_same_batches(world_size):
    images = torch.randint(0, 256, (31, 16, 16, 3), dtype=torch.uint8)
    for rank in range(world_size):
        common = dict(shard=(rank, world_size), drop_last=False, batch_size=3)
        one, three = _train_loader(images, **common), _train_loader(images, aug_batches=3, **common)
        set_epoch(one, 4)
        full = list(one)
        for start in (0, 2):  # from an epoch's start, and resumed in the middle of a group
            set_epoch(three, 4, start_batch=start)
            grouped = list(three)
            assert len(grouped) == len(full) - start
            for (xa, ya), (xb, yb) in zip(full[start:], grouped, strict=True):
                torch.testing.assert_close(xb, xa, atol=0, rtol=0)
                assert torch.equal(ya, yb)
    with pytest.raises(ConfigError, match="aug_batches"):
        _train_loader(images, aug_batches=0)
