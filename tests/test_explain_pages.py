"""`vit explain` on a folder of any size writes files a person can open (issue 25): grid pages
of a bounded size, mistakes first, an index that links them, a console summary that counts the
mistakes; every overlay carries a colour key; where boxes are known, the share of each map on
the object; a model with an all-zero head is named as the reason for all-zero maps."""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from helpers.models import save_checkpoint, tiny_vit
from PIL import Image

import vit.figures.overlay_files as overlays
import vit.figures.overlay_pages as pages_lib
from vit.cli import main
from vit.data.synthetic import DEFAULT_CLASSES, make_shapes_dataset
from vit.explain.saliency import zero_head_warning
from vit.figures.overlay_pages import Page, TileStore, mistakes_first, write_pages


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> tuple[Path, Path]:
    """A small shapes folder (class folders and boxes.json) and a tiny model of its classes."""
    root = tmp_path_factory.mktemp("shapes")
    data = make_shapes_dataset(root / "shapes", num_per_class=3, img_size=32, seed=0,
                               val_fraction=0.4)
    ckpt = save_checkpoint(root / "best.pt", tiny_vit(num_classes=len(DEFAULT_CLASSES), head_std=2.0),
                           DEFAULT_CLASSES)
    return data, ckpt


def test_a_folder_is_paged_mistakes_first_with_an_index_and_a_summary(shapes, tmp_path,
                                                                       monkeypatch, capsys):
    """153 photos once made one grid.png of 1656 x 16584 px (33.6 MB) and a console that
    listed predictions only."""
    data, ckpt = shapes
    monkeypatch.setattr(overlays, "IMAGES_PER_PAGE", 2)
    out = tmp_path / "out"
    assert main(["explain", "--checkpoint", str(ckpt), str(data / "val"), "--output",
                 str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    images = sorted((data / "val").rglob("*.png"))
    page_files = sorted(out.glob("grid_*.png"))
    assert len(page_files) == -(-len(images) // 2) > 1 and not (out / "grid.png").exists()
    assert all(p.stat().st_size <= pages_lib.MAX_PAGE_BYTES for p in page_files)
    verdicts = [("WRONG" in line) for line in lines[:len(images)]]
    assert verdicts == sorted(verdicts, reverse=True) and any(verdicts), lines  # mistakes first
    assert all(" true " in f" {line}" for line in lines[:len(images)])  # true labels named
    summary = lines[len(images)]
    assert f"{len(images)} images explained (attnlrp, the default: no explain-bench " \
           f"recommendation recorded for this model): {sum(verdicts)} of {len(images)} " \
           "predictions wrong" in summary and "index.html" in summary
    assert lines[len(images) + 1].startswith("relevance on the object (boxes.json; attnlrp): ")
    index = (out / "index.html").read_text()
    assert all(f'href="{p.name}"' in index for p in page_files)
    assert index.count("<tr class=") == len(images)
    assert index.index('class="wrong"') < index.index('class="right"')


def test_a_page_too_large_is_drawn_again_as_two_and_stale_pages_go(tmp_path, monkeypatch):
    monkeypatch.setattr(pages_lib, "MAX_PAGE_BYTES", 250)
    tiles = TileStore()
    for i in range(5):
        tiles.add([np.full((2, 2, 3), i, np.uint8)], [f"image {i}"], [None])
    (tmp_path / "grid_009.png").write_bytes(b"an earlier run's page")

    def draw(group, path):  # 100 bytes per image: more than two images is too large
        path.write_bytes(b"x" * 100 * len(group))

    pages = write_pages(tiles, [4, 3, 2, 1, 0], base=tmp_path / "grid.png", per_page=4,
                        draw=draw)
    tiles.close()
    assert [p.images for p in pages] == [[4, 3], [2, 1], [0]]
    assert [p.path.name for p in pages] == ["grid_001.png", "grid_002.png", "grid_003.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.path.name for p in pages]
    assert mistakes_first([False, None, True, False, True]) == [2, 4, 1, 0, 3]


def test_one_page_keeps_its_plain_name(tmp_path):
    tiles = TileStore()
    tiles.add([np.zeros((2, 2, 3), np.uint8)], ["a"], [None])
    pages = write_pages(tiles, [0], base=tmp_path / "grid.png", per_page=18,
                        draw=lambda group, path: path.write_bytes(b"png"))
    assert pages == [Page(tmp_path / "grid.png", [0])]


def _has_colour(pixels: np.ndarray, rgb: tuple[float, ...], tolerance: int = 4) -> bool:
    target = np.round(np.array(rgb[:3]) * 255)
    return bool((np.abs(pixels[..., :3].astype(int) - target).max(axis=-1) <= tolerance).any())


def test_every_overlay_and_page_carries_a_colour_key(shapes, tmp_path):
    """The overlays blend the colour map at alpha 0.5: its pure colours appear only in the key,
    a colour bar from dark to bright whose caption says what they mean."""
    data, ckpt = shapes
    paths = sorted((data / "val").rglob("*.png"))[:2]
    result = overlays.explain_files(checkpoint=ckpt, paths=paths, output=tmp_path, device="cpu")
    inferno = matplotlib.colormaps["inferno"]
    for png in [result[0].output, result.pages[0].path]:
        pixels = np.asarray(Image.open(png).convert("RGB"))
        assert _has_colour(pixels, inferno(1.0)) and _has_colour(pixels, inferno(0.5)), png
    key = overlays.colour_key(["attnlrp"], "inferno")
    assert "bright" in key[3] and "negative" in key[3] and "zero" in key[1]


def test_the_share_of_relevance_on_the_object():
    box = (8, 8, 24, 24)  # the middle 16 x 16 px of a 32 px image: patches (1..2, 1..2) of 8 px
    inside = torch.zeros(4, 4)
    inside[1:3, 1:3] = 1.0
    share = overlays.object_share(inside, box, (32, 32), img_size=32, crop_pct=1.0)
    assert share == pytest.approx(1.0)
    outside = 1.0 - inside
    assert overlays.object_share(outside, box, (32, 32), img_size=32, crop_pct=1.0) == 0.0
    signed = inside - 2 * outside  # negative relevance does not count as being elsewhere
    assert overlays.object_share(signed, box, (32, 32), img_size=32, crop_pct=1.0) == 1.0
    assert overlays.object_share(torch.zeros(4, 4), box, (32, 32), img_size=32,
                                 crop_pct=1.0) is None


def test_a_zero_head_is_named_as_the_reason_for_zero_maps(tmp_path, caplog):
    model = tiny_vit(head_std=2.0)
    assert zero_head_warning(model, ["attnlrp"]) is None  # a trained (random) head
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    assert zero_head_warning(model, ["rollout"]) is None  # rollout needs no gradient
    assert "all zeros" in zero_head_warning(model, ["attnlrp", "rollout", "legrad"])
    ckpt = save_checkpoint(tmp_path / "zero.pt", model, ["x", "y", "z"])
    image = tmp_path / "a.png"
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(image)
    with caplog.at_level(logging.WARNING):
        overlays.explain_files(checkpoint=ckpt, paths=[image], output=tmp_path / "o",
                               device="cpu")
    assert "classification head is all zeros" in caplog.text and "attnlrp" in caplog.text


def test_the_explorer_page_names_a_zero_head_too(tmp_path, caplog):
    from vit.explain.explorer import PageOptions
    from vit.figures.attention_files import write_explorer_page

    model = tiny_vit(head_std=2.0)
    torch.nn.init.zeros_(model.head.weight)
    ckpt = save_checkpoint(tmp_path / "zero.pt", model, ["x", "y", "z"])
    image = tmp_path / "a.png"
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(image)
    with caplog.at_level(logging.WARNING):
        write_explorer_page(checkpoint=ckpt, paths=[image], output=tmp_path / "page.html",
                            options=PageOptions(auc_steps=0), device="cpu")
    assert "classification head is all zeros" in caplog.text
