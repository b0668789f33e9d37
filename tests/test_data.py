"""vit.data.folders: folder layouts, scanning errors, robust decoding, splits, transforms, loaders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.images import write_huge_png
from PIL import Image

from vit.data.augmentation import AugmentRecipe
from vit.data.dataset import ImageFolderDataset
from vit.data.folders import resolve_data_dirs, scan_folder
from vit.data.images import UnreadableImageError, load_image, preflight
from vit.data.loader import EpochSampler, build_loader, set_epoch
from vit.data.splits import (
    balanced_class_weights,
    build_data_report,
    class_counts,
    stratified_split,
)
from vit.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_transform,
    eval_geometry,
    normalize_transform,
    resolve_crop_pct,
)
from vit.errors import ConfigError, DataError

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def save(img: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (8, 8)) -> Image.Image:
    return Image.new("RGB", size, colour)


def make_folder(root: Path, counts: dict[str, int], ext: str = ".png") -> Path:
    """root/<class>/<i><ext> with a distinct colour per image."""
    for c, (name, n) in enumerate(counts.items()):
        for i in range(n):
            save(solid((30 * c, 10 * i % 256, 100)), root / name / f"{i:03d}{ext}")
    return root


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(int)


# ---------------------------------------------------------------------------------------------
# layouts and scanning
# ---------------------------------------------------------------------------------------------


def test_resolve_flat_layout(tmp_path):
    make_folder(tmp_path, {"cat": 1, "dog": 1})
    assert resolve_data_dirs(tmp_path) == (tmp_path, None)


def test_resolve_split_layout_with_and_without_val(tmp_path):
    make_folder(tmp_path / "train", {"cat": 1})
    assert resolve_data_dirs(tmp_path) == (tmp_path / "train", None)
    make_folder(tmp_path / "val", {"cat": 1})
    assert resolve_data_dirs(tmp_path) == (tmp_path / "train", tmp_path / "val")


@pytest.mark.parametrize(
    "layout, match",
    [
        ("missing", "does not exist"),
        ("file", "is a file"),
        ("val_only", "no train/ folder"),
    ],
)
def test_resolve_errors(tmp_path, layout, match):
    target = tmp_path / "data"
    if layout == "file":
        target.write_text("x")
    elif layout == "val_only":
        make_folder(target / "val", {"cat": 1})
    with pytest.raises(DataError, match=match):
        resolve_data_dirs(target)


def test_scan_sorts_classes_and_paths_and_filters_files(tmp_path):
    for name in ("zebra", "apple", "Mango"):
        for stem in ("b", "a"):
            save(solid((1, 2, 3)), tmp_path / name / f"{stem}.png")
    save(solid((1, 2, 3)), tmp_path / "apple" / "c.JPG", format="JPEG")
    save(solid((1, 2, 3)), tmp_path / "apple" / "d.Png", format="PNG")
    save(solid((1, 2, 3)), tmp_path / "apple" / "nested" / "e.jpeg", format="JPEG")
    (tmp_path / "apple" / "notes.txt").write_text("not an image")
    save(solid((1, 2, 3)), tmp_path / "apple" / ".hidden.png")
    save(solid((1, 2, 3)), tmp_path / ".cache" / "x.png")
    save(solid((1, 2, 3)), tmp_path / "apple" / ".thumbs" / "y.png")

    scan = scan_folder(tmp_path)
    assert scan.classes == ["Mango", "apple", "zebra"]
    names = [Path(p).relative_to(tmp_path).as_posix() for p, _ in scan.samples]
    assert names == ["Mango/a.png", "Mango/b.png", "apple/a.png", "apple/b.png", "apple/c.JPG",
                     "apple/d.Png", "apple/nested/e.jpeg", "zebra/a.png", "zebra/b.png"]
    assert [t for _, t in scan.samples] == [0, 0, 1, 1, 1, 1, 1, 2, 2]
    assert [Path(p).name for p in scan.ignored] == ["notes.txt"]


def _no_classes(root: Path) -> None:
    root.mkdir()
    save(solid((0, 0, 0)), root / "loose.png")


def _no_images(root: Path) -> None:
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "readme.txt").write_text("x")


def _one_empty_class(root: Path) -> None:
    make_folder(root, {"cat": 2})
    (root / "dog").mkdir()


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.write_text("x"), "is a file"),
        (_no_classes, r"no class sub-folders.*1 images sit directly in it"),
        (_no_images, r"no images in .*1 other files ignored"),
        (_one_empty_class, r"class folders without images .*\['dog'\]"),
    ],
    ids=["missing", "file", "no-classes", "no-images", "empty-class"],
)
def test_scan_errors(tmp_path, build, match):
    root = tmp_path / "data"
    build(root)
    with pytest.raises(DataError, match=match):
        scan_folder(root)


def test_scan_with_given_classes_uses_their_order(tmp_path):
    make_folder(tmp_path / "val", {"cat": 1, "dog": 1})
    scan = scan_folder(tmp_path / "val", classes=["dog", "cat", "eel"])
    assert scan.classes == ["dog", "cat", "eel"]
    assert [(Path(p).parent.name, t) for p, t in scan.samples] == [("dog", 0), ("cat", 1)]
    with pytest.raises(DataError, match=r"class folders \['dog'\]"):
        scan_folder(tmp_path / "val", classes=["cat"])


# ---------------------------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------------------------


def test_load_grayscale_and_1bit(tmp_path):
    gray = load_image(save(Image.new("L", (3, 2), 77), tmp_path / "g.png"))
    assert gray.mode == "RGB" and gray.size == (3, 2)
    assert (pixels(gray) == 77).all()
    bits = Image.new("1", (4, 4), 0)
    bits.putpixel((1, 1), 1)
    out = pixels(load_image(save(bits, tmp_path / "b.png")))
    assert out[1, 1].tolist() == [255, 255, 255] and out[0, 0].tolist() == [0, 0, 0]


def test_load_palette_with_transparency_composites_on_white(tmp_path):
    img = Image.new("P", (2, 1), 0)
    img.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    img.putpixel((1, 0), 1)
    out = pixels(load_image(save(img, tmp_path / "p.png", transparency=0)))
    assert out[0, 0].tolist() == [255, 255, 255]  # transparent black -> white
    assert out[0, 1].tolist() == [0, 0, 255]


def test_load_rgba_and_la_composite(tmp_path):
    out = pixels(load_image(save(Image.new("RGBA", (2, 2), (255, 0, 0, 128)), tmp_path / "a.png")))
    assert np.abs(out - [255, 127, 127]).max() <= 1
    out = pixels(load_image(save(Image.new("LA", (2, 2), (0, 0)), tmp_path / "la.png")))
    assert (out == 255).all()


def test_load_cmyk_jpeg(tmp_path):
    path = save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), tmp_path / "c.jpg", quality=95)
    assert Image.open(path).mode == "CMYK"
    out = pixels(load_image(path))
    assert np.abs(out - [255, 0, 0]).max() <= 12


def test_load_16bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    path = save(Image.fromarray(values), tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")
    out = pixels(load_image(path))
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (out[..., 0] == out[..., 2]).all()


@pytest.mark.parametrize(
    "array, expected",
    [
        (np.array([[0, 65535]], dtype=np.int32), [0, 255]),  # 32-bit int holding 16-bit data
        (np.array([[0.0, 0.5, 1.0]], dtype=np.float32), [0, 128, 255]),  # float in [0, 1]
        (np.array([[-2.0, 0.0, 2.0]], dtype=np.float32), [0, 128, 255]),  # float, other range
    ],
)
def test_load_int32_and_float_tiff(tmp_path, array, expected):
    out = pixels(load_image(save(Image.fromarray(array), tmp_path / "x.tif")))
    assert out[0, :, 1].tolist() == expected


def test_load_applies_exif_orientation(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = save(img, tmp_path / "rot.jpg", exif=exif, quality=95)
    out = load_image(path)
    assert out.size == (20, 40)
    arr = pixels(out)
    assert np.abs(arr[5, 10] - [255, 0, 0]).max() < 40  # the left half is now on top
    assert np.abs(arr[35, 10] - [0, 0, 255]).max() < 40


def test_load_one_pixel_and_animated_gif(tmp_path):
    assert pixels(load_image(save(solid((9, 8, 7), (1, 1)), tmp_path / "one.png"))).shape == (
        1, 1, 3)
    frames = [solid(c, (6, 6)) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(path).n_frames == 3
    out = pixels(load_image(path))
    assert out.shape == (6, 6, 3) and (out == [255, 0, 0]).all()


def _truncated_jpeg(path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    save(Image.fromarray(noise), path, quality=90)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "make, match",
    [
        (_truncated_jpeg, "truncated"),
        (lambda p: p.write_bytes(b""), "zero bytes"),
        (lambda p: p.write_text("hello, I am text"), "not an image"),
        (lambda p: None, "not found"),
    ],
    ids=["truncated", "empty", "text", "missing"],
)
def test_load_failures_raise_unreadable(tmp_path, make, match):
    path = tmp_path / "bad.jpg"
    make(path)
    with pytest.raises(UnreadableImageError, match=match) as info:
        load_image(path)
    assert isinstance(info.value, DataError) and info.value.path == str(path)


def _count_decoders(monkeypatch) -> list[str]:
    """The pixel decoders PIL makes from now on (each decode of pixel data makes one)."""
    made = []
    real = Image._getdecoder

    def getdecoder(mode, decoder_name, *args, **kwargs):
        made.append(decoder_name)
        return real(mode, decoder_name, *args, **kwargs)

    monkeypatch.setattr(Image, "_getdecoder", getdecoder)
    return made


@pytest.mark.parametrize("side", [30000, 10000])  # beyond 2x PIL's limit / between 1x and 2x
def test_load_refuses_decompression_bomb_before_decoding_a_pixel(tmp_path, side, monkeypatch):
    """Refused from the header alone: no pixel decoder is made (a 900 Mpx decode would take
    seconds and gigabytes), and nothing past the header is read."""
    path = write_huge_png(tmp_path / "bomb.png", side)
    assert path.stat().st_size < 2_000_000
    decoders = _count_decoders(monkeypatch)
    small = save(solid((1, 2, 3)), tmp_path / "small.png")
    load_image(small)
    assert decoders == ["zip"]  # the counter sees a real decode

    decoders.clear()
    read = []
    real_open = open

    class CountingFile:
        def __init__(self, handle):
            self._handle = handle

        def read(self, *args):
            data = self._handle.read(*args)
            read.append(len(data))
            return data

        def __getattr__(self, name):
            return getattr(self._handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._handle.__exit__(*exc)

    def counting_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        return CountingFile(handle) if str(file) == str(path) else handle

    monkeypatch.setattr("builtins.open", counting_open)
    with pytest.warns(Image.DecompressionBombWarning) if side == 10000 else _nothing():
        with pytest.raises(UnreadableImageError, match="too large"):
            load_image(path)
    assert decoders == []
    assert 0 < sum(read) < 1024 < path.stat().st_size  # the header, not the pixel data


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_preflight_drops_bad_files_with_reasons(tmp_path):
    make_folder(tmp_path, {"a": 3, "b": 3})
    (tmp_path / "a" / "001.png").write_bytes(b"")
    (tmp_path / "b" / "002.png").write_text("text")
    samples = scan_folder(tmp_path).samples
    for workers in (0, 2):
        good, skipped = preflight(samples, workers=workers)
        assert good == [s for s in samples if not s[0].endswith(("a/001.png", "b/002.png"))]
        assert [(Path(s["path"]).name, s["reason"]) for s in skipped] == [
            ("001.png", "empty file (zero bytes)"),
            ("002.png", "not an image, or a format Pillow cannot identify"),
        ]


# ---------------------------------------------------------------------------------------------
# dataset
# ---------------------------------------------------------------------------------------------


def test_dataset_substitutes_a_file_that_breaks_after_preflight(tmp_path, caplog):
    make_folder(tmp_path, {"a": 2, "b": 2})
    scan = scan_folder(tmp_path)
    samples, classes = scan.samples, scan.classes
    ds = ImageFolderDataset(samples, classes, build_transform(img_size=8, train=False))
    Path(samples[1][0]).write_bytes(b"")  # a/001.png breaks; next is b/000.png
    x, y = ds[1]
    expected, _ = ds[2]
    assert y == 1 and torch.equal(x, expected)
    assert [Path(s["path"]).name for s in ds.skipped] == ["001.png"]
    assert "Skipping unreadable image" in caplog.text
    ds[1]
    assert len(ds.skipped) == 1  # remembered, not decoded (or logged) again
    x0, y0 = ds[0]
    assert x0.shape == (3, 8, 8) and x0.dtype == torch.float32 and y0 == 0


def test_dataset_raises_after_too_many_consecutive_failures(tmp_path):
    make_folder(tmp_path, {"a": 4})
    scan = scan_folder(tmp_path)
    samples, classes = scan.samples, scan.classes
    for path, _ in samples:
        Path(path).write_bytes(b"")
    ds = ImageFolderDataset(samples, classes, max_consecutive_failures=3)
    with pytest.raises(DataError, match="3 consecutive images"):
        ds[0]


def test_dataset_without_transform_gives_unit_range_tensor(tmp_path):
    path = save(solid((255, 0, 51), (5, 3)), tmp_path / "a" / "x.png")
    x, y = ImageFolderDataset([(str(path), 0)], ["a"])[0]
    assert x.shape == (3, 3, 5) and y == 0
    assert torch.allclose(x[:, 0, 0], torch.tensor([1.0, 0.0, 0.2]))


# ---------------------------------------------------------------------------------------------
# splits, balance, report
# ---------------------------------------------------------------------------------------------


def test_stratified_split_proportions_and_determinism():
    targets = [0] * 50 + [1] * 30 + [2] * 2 + [3] * 1
    train, val = stratified_split(targets, val_fraction=0.2, seed=0)
    assert sorted(train + val) == list(range(len(targets)))
    assert not set(train) & set(val)
    val_counts = class_counts([targets[i] for i in val], 4)
    assert val_counts == [10, 6, 1, 0]
    assert stratified_split(targets, val_fraction=0.2, seed=0) == (train, val)
    assert stratified_split(targets, val_fraction=0.2, seed=1) != (train, val)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, "0.2", None])
def test_stratified_split_rejects_bad_fraction(fraction):
    with pytest.raises(ConfigError, match="val_fraction"):
        stratified_split([0, 1], val_fraction=fraction, seed=0)


def test_class_weights_and_counts():
    targets = [0] * 9 + [1] * 3
    assert class_counts(targets, 3) == [9, 3, 0]
    weights = balanced_class_weights(targets, 3)
    assert torch.allclose(weights, torch.tensor([12 / 27, 12 / 9, 0.0]))


def test_weighted_epoch_sampler_balances_nine_to_one():
    targets = [0] * 900 + [1] * 100
    weights = [1 / 900 if t == 0 else 1 / 100 for t in targets]

    def draw(seed, epoch=0):
        sampler = EpochSampler(len(targets), shuffle=True, seed=seed, weights=weights)
        sampler.set_epoch(epoch)
        return list(sampler)

    indices = draw(0)
    drawn = [targets[i] for i in indices]
    assert len(drawn) == 1000
    assert 0.43 < np.mean(drawn) < 0.57
    assert draw(0) == indices
    assert draw(1) != indices and draw(0, epoch=1) != indices


def test_epoch_sampler_shards_without_padding_and_resumes_mid_epoch():
    shards = []
    for rank in range(3):
        sampler = EpochSampler(10, shuffle=True, seed=4, rank=rank, world_size=3)
        sampler.set_epoch(2)
        shards.append(list(sampler))
    assert sorted(i for shard in shards for i in shard) == list(range(10))
    assert [len(s) for s in shards] == [4, 3, 3]
    whole = EpochSampler(10, shuffle=True, seed=4, batch_size=3, drop_last=True)
    whole.set_epoch(2)
    full = list(whole)
    assert len(full) == 9
    whole.set_epoch(2, start_batch=2)
    assert list(whole) == full[6:] and len(whole) == 3


def test_data_report_is_json_and_counts(tmp_path):
    train = [("a/1.png", 0), ("a/2.png", 0), ("b/1.png", 1)]
    skipped = [{"path": "b/2.png", "reason": "truncated file"}]
    report = build_data_report(["a", "b"], train, [("b/3.png", 1)], skipped, ["a/x.txt"])
    assert json.loads(json.dumps(report)) == report
    assert report["train"]["per_class"] == {"a": 2, "b": 1}
    assert report["val"]["per_class"] == {"a": 0, "b": 1}
    assert report["skipped"] == skipped and report["num_ignored_files"] == 1
    assert report["imbalance_ratio"] == 2.0
    assert build_data_report(["a", "b"], train, None, [], 5)["val"] is None


# ---------------------------------------------------------------------------------------------
# transforms
# ---------------------------------------------------------------------------------------------


def noise_image(size=(60, 50), seed=0) -> Image.Image:
    h, w = size
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_train_transform_shape_and_seeded_reproducibility():
    img = noise_image()
    a = build_transform(img_size=32, train=True, seed=3)
    b = build_transform(img_size=32, train=True, seed=3)
    c = build_transform(img_size=32, train=True, seed=4)
    xa = [a(img) for _ in range(3)]
    assert all(x.shape == (3, 32, 32) and x.dtype == torch.float32 for x in xa)
    assert all(torch.equal(x, b(img)) for x in xa)
    assert not torch.equal(xa[0], c(img))
    a.set_seed(3)
    assert torch.equal(a(img), xa[0])


@pytest.mark.parametrize("n, m", [(1, 0), (13, 10), (0, 9)])
def test_randaugment_extremes_run(n, m):
    t = build_transform(img_size=24, train=True, recipe=AugmentRecipe(randaug_n=n, randaug_m=m),
                        seed=0)
    for seed in range(10):
        x = t(noise_image(seed=seed))
        assert x.shape == (3, 24, 24) and torch.isfinite(x).all()


def test_eval_transform_normalises_and_is_deterministic():
    mean_colour = tuple(round(255 * m) for m in IMAGENET_MEAN)
    t = build_transform(img_size=16, train=False, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    x = t(solid(mean_colour, (20, 16)))
    assert x.shape == (3, 16, 16) and x.abs().max() < 0.01
    white = t(solid((255, 255, 255), (16, 16)))
    assert torch.allclose(white[:, 0, 0], (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(
        IMAGENET_STD), atol=1e-5)
    img = noise_image()
    assert torch.equal(t(img), t(img))
    # the eval transform in two steps (what Classifier does): the same tensor, bit for bit
    two_steps = normalize_transform(IMAGENET_MEAN, IMAGENET_STD)(
        eval_geometry(16)(image=np.asarray(img))["image"])
    assert torch.equal(two_steps, t(img))


def test_eval_crop_224_resizes_to_256_then_centre_crops():
    assert resolve_crop_pct(224, None) == 0.875 and resolve_crop_pct(48, None) == 1.0
    arr = np.asarray(noise_image((256, 300)))
    out = eval_geometry(224, crop_pct=0.875)(image=arr)["image"]
    assert out.dtype == np.uint8 and out.shape == (224, 224, 3)
    assert np.array_equal(out, arr[16:240, 38:262])  # no resize needed, only the crop
    big = eval_geometry(224, 0.875)(image=np.asarray(noise_image((512, 1024))))["image"]
    assert big.shape == (224, 224, 3)
    tensor = build_transform(img_size=224, train=False, crop_pct=0.875)(Image.fromarray(arr))
    expected = (torch.from_numpy(out).permute(2, 0, 1) / 255 - torch.tensor(IMAGENET_MEAN)[
        :, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    assert torch.allclose(tensor, expected, atol=1e-5)


def test_small_images_are_not_centre_cropped():
    arr = np.asarray(noise_image((48, 48)))
    assert np.array_equal(eval_geometry(48)(image=arr)["image"], arr)


@pytest.mark.parametrize(
    "kwargs",
    [dict(crop_pct=0.0), dict(crop_pct=1.5), dict(scale=(0.5, 0.1)), dict(hflip=2.0),
     dict(randaug_n=-1), dict(randaug_m=11), dict(mean=(0.5, 0.5))],
)
def test_transform_rejects_bad_settings(kwargs):
    recipe = {k: kwargs.pop(k) for k in list(kwargs) if k in ("scale", "hflip", "randaug_n",
                                                               "randaug_m")}
    with pytest.raises(ConfigError):
        build_transform(img_size=32, train=kwargs.get("crop_pct") is None,
                        recipe=AugmentRecipe(**recipe), **kwargs)


# ---------------------------------------------------------------------------------------------
# loaders
# ---------------------------------------------------------------------------------------------


def make_small_dataset(root: Path, seed: int | None = None) -> ImageFolderDataset:
    """8 noise images in 2 classes with a fresh (unseeded) train transform."""
    if not root.exists():
        for i in range(8):
            save(noise_image((20, 20), seed=i), root / f"c{i % 2}" / f"{i}.png")
    scan = scan_folder(root)
    samples, classes = scan.samples, scan.classes
    return ImageFolderDataset(samples, classes, build_transform(img_size=16, train=True),
                              seed=seed)


def _epoch(loader) -> list[torch.Tensor]:
    return [x for x, _ in loader]


def _loader(dataset, *, workers, seed=0, epoch=0, batch_size=4):
    loader = build_loader(dataset, batch_size=batch_size, shuffle=True, drop_last=False,
                          workers=workers, seed=seed)
    set_epoch(loader, epoch)
    return loader


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_augmentation_is_reproducible_for_a_seed(tmp_path, workers):
    def run(seed):  # a new dataset each time, as in a new training run
        ds = make_small_dataset(tmp_path / "small", seed=seed)
        return _epoch(_loader(ds, workers=workers, seed=seed)) + _epoch(
            _loader(ds, workers=workers, seed=seed, epoch=1))

    first, again, other = run(0), run(0), run(1)
    assert len(first) == 4 and first[0].shape == (4, 3, 16, 16)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    assert not torch.equal(first[0], first[2])  # the second epoch is augmented differently


def test_workers_do_not_share_one_random_stream(tmp_path):
    """Without per-sample seeds, forked workers start from one state and must be reseeded."""
    path = save(noise_image((20, 20)), tmp_path / "a" / "x.png")
    ds = ImageFolderDataset([(str(path), 0)] * 4, ["a"], build_transform(img_size=16, train=True))
    loader = build_loader(ds, batch_size=1, shuffle=False, workers=2, drop_last=False, seed=0)
    first, second = _epoch(loader)[:2]  # the first sample of worker 0 and of worker 1
    assert not torch.equal(first, second)


def test_per_sample_seeds_ignore_worker_count_and_follow_the_epoch(tmp_path):
    make_small_dataset(tmp_path / "small")

    def run(workers, epoch=0):
        return _epoch(_loader(make_small_dataset(tmp_path / "small", seed=7), workers=workers,
                              epoch=epoch))

    base = run(0)
    assert all(torch.equal(a, b) for a, b in zip(base, run(2), strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(base, run(0, epoch=1), strict=True))
    ds = make_small_dataset(tmp_path / "small", seed=7)
    assert torch.equal(ds[3][0], ds[3][0])  # a function of (seed, epoch, index) alone
