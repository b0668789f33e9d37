"""Tests for vit.plots: each figure is a loadable PNG of the expected pixel size."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vit import plots
from vit.bench import figure as bench_figure
from vit.inference.metrics import reliability_bins


def _size(inches: tuple[float, float]) -> tuple[int, int]:
    return round(inches[0] * plots.DPI), round(inches[1] * plots.DPI)


def _check_png(path: Path, expected_size: tuple[int, int]) -> np.ndarray:
    assert path.stat().st_size > 0
    assert not path.with_suffix(".tmp.png").exists()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == expected_size
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 0  # something was drawn
    return pixels


def _record(epoch: int, **overrides: float | None) -> dict:
    record = {
        "epoch": epoch,
        "lr": 1e-3 / epoch,
        "train_loss": 2.0 / epoch,
        "val_loss": 2.2 / epoch,
        "val_top1": 0.5 + 0.05 * epoch,
        "val_top5": 0.8 + 0.02 * epoch,
        "images_per_s": 250.0,
        "seconds": 12.0 * epoch,
    }
    record.update(overrides)
    return record


def _images(count: int, height: int = 24, width: int = 32) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


def test_training_curves(tmp_path: Path) -> None:
    records = [_record(epoch) for epoch in range(1, 6)]
    (tmp_path / "curves.png").write_bytes(b"an older, unfinished file")  # replaced atomically
    path = plots.plot_training_curves(records, tmp_path / "curves.png")
    assert path == tmp_path / "curves.png"
    _check_png(path, _size(plots.CURVES_SIZE))


@pytest.mark.parametrize(
    "records",
    [
        [_record(1)],
        [_record(1, val_loss=None, val_top1=None, val_top5=None)],
        [_record(2, val_loss=None), _record(1), {"epoch": 3, "train_loss": 0.5}],
        [],
    ],
    ids=["one-epoch", "no-validation", "gaps-and-unsorted", "empty"],
)
def test_training_curves_edge_cases(tmp_path: Path, records: list[dict]) -> None:
    path = plots.plot_training_curves(records, tmp_path / "nested" / "curves.png")
    _check_png(path, _size(plots.CURVES_SIZE))


@pytest.mark.parametrize("normalize", [True, False])
def test_confusion_matrix(tmp_path: Path, normalize: bool) -> None:
    matrix = [[5, 1, 0], [0, 3, 1], [0, 0, 0]]  # last class has no images: row stays zero
    path = plots.plot_confusion_matrix(
        matrix, ["cat", "dog", "a rather long class name"], tmp_path / "cm.png", normalize
    )
    _check_png(path, _size(plots._confusion_size(3)))


def test_confusion_matrix_many_classes_and_bad_shape(tmp_path: Path) -> None:
    classes = [f"class_{i}" for i in range(70)]
    matrix = np.eye(70, dtype=int) * 3
    _check_png(
        plots.plot_confusion_matrix(matrix, classes, tmp_path / "cm.png"),
        _size(plots._confusion_size(70)),
    )
    with pytest.raises(ValueError, match="does not match"):
        plots.plot_confusion_matrix(matrix, classes[:3], tmp_path / "bad.png")


def test_row_normalise() -> None:
    normalised = plots._row_normalise(np.array([[3.0, 1.0], [0.0, 0.0]]))
    assert normalised.tolist() == [[0.75, 0.25], [0.0, 0.0]]


def test_reliability_diagram(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    probs = (torch.randn(200, 4, generator=generator) * 2).softmax(dim=-1)
    targets = torch.randint(0, 4, (200,), generator=generator)
    bins = reliability_bins(probs, targets)
    path = plots.plot_reliability_diagram(bins, bins["ece"], tmp_path / "reliability.png")
    _check_png(path, _size(plots.RELIABILITY_SIZE))


def test_reliability_diagram_without_edges(tmp_path: Path) -> None:
    bins = {"bin_confidence": [0.0, 0.7], "bin_accuracy": [0.0, 1.0], "bin_count": [0, 3]}
    path = plots.plot_reliability_diagram(bins, 0.3, tmp_path / "reliability.png")
    _check_png(path, _size(plots.RELIABILITY_SIZE))


def test_image_grid(tmp_path: Path) -> None:
    titles = [f"true cat, predicted dog ({0.9 - i / 10:.2f}) image_{i}.jpg" for i in range(5)]
    colors = ["red", "red", None, "green", "red"]
    path = plots.plot_image_grid(
        _images(5),
        titles,
        tmp_path / "grid.png",
        ncols=3,
        title="Most confident mistakes",
        title_colors=colors,
    )
    width, height = plots.GRID_CELL_SIZE
    _check_png(path, _size((3 * width, 2 * height + 0.5)))


@pytest.mark.parametrize("count", [1, 0])
def test_image_grid_single_or_no_image(tmp_path: Path, count: int) -> None:
    path = plots.plot_image_grid(_images(count), ["only"] * count, tmp_path / "grid.png")
    _check_png(path, _size(plots.GRID_CELL_SIZE))


def test_image_grid_accepts_array_batch_and_grayscale(tmp_path: Path) -> None:
    batch = np.stack(_images(2))
    gray = batch[..., 0]
    path = plots.plot_image_grid([*batch, gray[0]], ["a", "b", "gray"], tmp_path / "g.png", ncols=3)
    _check_png(path, _size((3 * plots.GRID_CELL_SIZE[0], plots.GRID_CELL_SIZE[1])))
    path = plots.plot_image_grid(batch, ["a", "b"], tmp_path / "batch.png")
    _check_png(path, _size((2 * plots.GRID_CELL_SIZE[0], plots.GRID_CELL_SIZE[1])))


@pytest.mark.parametrize("name", ["grid.jpg", "GRID.JPEG"])
def test_figure_written_as_jpeg_by_its_name(tmp_path: Path, name: str) -> None:
    """A .jpg/.jpeg name gives a JPEG (the README's figures), of the same pixel size as the PNG."""
    path = plots.plot_image_grid(_images(2), ["a", "b"], tmp_path / name)
    assert path.name == name and not list(tmp_path.glob("*.tmp*"))
    with Image.open(path) as image:
        assert image.format == "JPEG" and image.mode == "RGB"
        assert image.size == _size((2 * plots.GRID_CELL_SIZE[0], plots.GRID_CELL_SIZE[1]))


def test_image_grid_shape_and_mismatch(tmp_path: Path) -> None:
    assert plots._grid_shape(7, None) == (3, 3)
    assert plots._grid_shape(2, 5) == (1, 2)
    with pytest.raises(ValueError, match="titles"):
        plots.plot_image_grid(_images(2), ["one"], tmp_path / "grid.png")


def test_side_by_side(tmp_path: Path) -> None:
    image, overlay = _images(2, height=64, width=64)
    path = plots.plot_side_by_side(image, overlay, "cat.jpg: cat (0.93)", tmp_path / "x.png")
    pixels = _check_png(path, _size(plots.SIDE_BY_SIDE_SIZE))
    assert pixels.shape == (*_size(plots.SIDE_BY_SIDE_SIZE)[::-1], 3)


def test_accuracy_vs_time(tmp_path: Path) -> None:
    series = {"tiny": [(0.0, 10.0), (300.0, 60.0), (150.0, 40.0)], "small": [(0.0, 10.0)],
              "none": []}
    path = plots.plot_accuracy_vs_time(series, tmp_path / "bench.png", title="CIFAR-10",
                                       budgets_s=[120.0, 600.0])
    _check_png(path, _size(plots.ACCURACY_VS_TIME_SIZE))
    empty = plots.plot_accuracy_vs_time({}, tmp_path / "empty.png")
    _check_png(empty, _size(plots.ACCURACY_VS_TIME_SIZE))


def test_time_unit() -> None:
    assert plots._time_unit(90) == ("s", 1.0)
    assert plots._time_unit(600) == ("min", 60.0)
    assert plots._time_unit(3 * 3600) == ("h", 3600.0)


def test_plots_from_threads(tmp_path: Path) -> None:
    errors: list[Exception] = []

    def draw(index: int) -> None:
        try:
            plots.plot_image_grid(_images(2), ["a", "b"], tmp_path / f"grid{index}.png")
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=draw, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for index in range(3):
        _check_png(
            tmp_path / f"grid{index}.png",
            _size((2 * plots.GRID_CELL_SIZE[0], plots.GRID_CELL_SIZE[1])),
        )


def _bench_result(sanity: bool) -> dict:
    rows = []
    for i, method in enumerate(["rollout", "attnlrp", "random", "occlusion"]):
        row = {"method": method, "token_deletion": 0.2 + 0.1 * i, "token_deletion_sem": 0.01,
               "token_insertion": 0.8 - 0.1 * i, "token_insertion_sem": 0.02}
        if sanity and method != "random":
            row.update({f"random_{k}": 1.0 - 0.3 * k * i for k in range(5)})
            row.update({f"random_{k}_sem": 0.05 for k in range(5)})
            row["sanity"] = "pass" if row["random_2"] < 0.3 else "FAIL"
        rows.append(row)
    return {"images": 10, "depth": 4, "half_stage": 2, "rows": rows}


@pytest.mark.parametrize("sanity", [True, False], ids=["with cascade", "faithfulness only"])
def test_explain_bench_figure(tmp_path: Path, sanity: bool) -> None:
    path = bench_figure.plot_explain_bench(_bench_result(sanity), tmp_path / "bench.png",
                                           threshold=0.3, references=("random", "occlusion"), title="a run")
    size = (bench_figure.EXPLAIN_BENCH_SIZE if sanity
            else bench_figure.EXPLAIN_BENCH_ONE_PANEL_SIZE)
    pixels = _check_png(path, _size(size)).astype(int)
    coloured = pixels.max(axis=-1) - pixels.min(axis=-1) > 80  # the methods' lines and points
    half = pixels.shape[1] // 2
    assert coloured[:, :half].sum() > 100  # faithfulness points in the left half
    if sanity:  # the cascade's lines in the right half
        assert coloured[:, half:].sum() > 1000
