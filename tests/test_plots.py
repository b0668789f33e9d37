"""Tests for vit.plots: each figure is a loadable PNG of the expected pixel size, and shows
the data it was given: the lines, images, bars and texts handed to matplotlib are read back
(helpers.figures) and compared with the input."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.figures import bars, lines_by_label, plot_axes, texts
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


def test_training_curves(tmp_path: Path, saved_figures) -> None:
    records = [_record(epoch) for epoch in range(1, 6)]
    (tmp_path / "curves.png").write_bytes(b"an older, unfinished file")  # replaced atomically
    path = plots.plot_training_curves(records, tmp_path / "curves.png")
    assert path == tmp_path / "curves.png"
    _check_png(path, _size(plots.CURVES_SIZE))

    [figure] = saved_figures
    loss, accuracy, lr = plot_axes(figure)
    assert [a.get_title() for a in (loss, accuracy, lr)] == ["Loss", "Validation accuracy",
                                                              "Learning rate"]
    epochs = [1.0, 2.0, 3.0, 4.0, 5.0]
    column = {key: pytest.approx([r[key] for r in records]) for key in records[0]}
    assert lines_by_label(loss) == {"train": (epochs, column["train_loss"]),
                                    "val": (epochs, column["val_loss"])}
    assert lines_by_label(accuracy) == {"val top-1": (epochs, column["val_top1"]),
                                        "val top-5": (epochs, column["val_top5"])}
    assert lines_by_label(lr) == {"lr": (epochs, column["lr"])}
    [best] = accuracy.collections  # the best top-1 ringed: epoch 5, 0.75
    assert best.get_offsets().tolist() == [[5.0, pytest.approx(0.75)]]
    assert texts(accuracy) == ["best top-1 0.75% @ epoch 5"]
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["train", "val"]


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
def test_training_curves_edge_cases(tmp_path: Path, records: list[dict], saved_figures) -> None:
    path = plots.plot_training_curves(records, tmp_path / "nested" / "curves.png")
    _check_png(path, _size(plots.CURVES_SIZE))
    loss, accuracy, lr = plot_axes(saved_figures[0])
    drawn = [lines_by_label(axes) for axes in (loss, accuracy, lr)]
    if not records:
        assert drawn == [{}, {}, {}]
        assert [texts(axes) for axes in (loss, accuracy, lr)] == [["no data"]] * 3
    elif len(records) == 1:  # one epoch, centred between 0 and 2
        with_validation = records[0]["val_loss"] is not None
        assert drawn[0] == ({"train": ([1.0], [2.0]), "val": ([1.0], [2.2])} if with_validation
                            else {"train": ([1.0], [2.0])})
        assert drawn[1] == ({"val top-1": ([1.0], [pytest.approx(0.55)]),
                             "val top-5": ([1.0], [pytest.approx(0.82)])} if with_validation
                            else {})
        assert texts(accuracy) == (["best top-1 0.55% @ epoch 1"] if with_validation
                                   else ["no data"])
        assert drawn[2] == {"lr": ([1.0], [1e-3])}
        assert [axes.get_xlim() for axes in (loss, accuracy, lr)] == [(0.0, 2.0)] * 3
    else:  # sorted by epoch; a missing value leaves a gap in its line only
        assert drawn[0] == {"train": ([1.0, 2.0, 3.0], [2.0, 1.0, 0.5]), "val": ([1.0], [2.2])}
        assert drawn[1] == {"val top-1": ([1.0, 2.0], pytest.approx([0.55, 0.6])),
                            "val top-5": ([1.0, 2.0], pytest.approx([0.82, 0.84]))}
        assert drawn[2] == {"lr": ([1.0, 2.0], pytest.approx([1e-3, 5e-4]))}


@pytest.mark.parametrize("normalize", [True, False])
def test_confusion_matrix(tmp_path: Path, normalize: bool, saved_figures) -> None:
    matrix = [[5, 1, 0], [0, 3, 1], [0, 0, 0]]  # last class has no images: row stays zero
    classes = ["cat", "dog", "a rather long class name"]
    path = plots.plot_confusion_matrix(matrix, classes, tmp_path / "cm.png", normalize)
    _check_png(path, _size(plots._confusion_size(3)))

    [axes] = plot_axes(saved_figures[0])
    [image] = axes.get_images()
    shown = [[5 / 6, 1 / 6, 0], [0, 0.75, 0.25], [0, 0, 0]] if normalize else matrix
    np.testing.assert_allclose(image.get_array(), shown)  # rows: true class, columns: predicted
    assert image.get_clim() == ((0.0, 1.0) if normalize else (0.0, 5.0))
    assert [t.get_text() for t in axes.get_xticklabels()] == classes
    assert [t.get_text() for t in axes.get_yticklabels()] == classes
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("predicted class", "true class")
    cells = {(t.get_position(), t.get_text()) for t in axes.texts}
    expected = {((col, row), f"{value:.2f}" if normalize else f"{value}")
                for row, values in enumerate(shown) for col, value in enumerate(values)}
    assert cells == expected
    on_dark = {t.get_text() for t in axes.texts if t.get_color() == "white"}
    assert on_dark == ({"0.83", "0.75"} if normalize else {"5", "3"})


def test_confusion_matrix_many_classes_and_bad_shape(tmp_path: Path, saved_figures) -> None:
    classes = [f"class_{i}" for i in range(70)]
    matrix = np.eye(70, dtype=int) * 3
    matrix[5, 7] = 1  # one mistake: row 5 is 3/4 right, 1/4 class 7
    _check_png(
        plots.plot_confusion_matrix(matrix, classes, tmp_path / "cm.png"),
        _size(plots._confusion_size(70)),
    )
    [axes] = plot_axes(saved_figures[0])
    expected = np.eye(70)
    expected[5, 5], expected[5, 7] = 0.75, 0.25
    np.testing.assert_allclose(axes.get_images()[0].get_array(), expected)
    assert list(axes.get_xticks()) == [] and list(axes.get_yticks()) == []  # over 60 classes
    assert texts(axes) == []  # over 20 classes: no numbers in the cells
    with pytest.raises(ValueError, match="does not match"):
        plots.plot_confusion_matrix(matrix, classes[:3], tmp_path / "bad.png")


def test_row_normalise() -> None:
    normalised = plots._row_normalise(np.array([[3.0, 1.0], [0.0, 0.0]]))
    assert normalised.tolist() == [[0.75, 0.25], [0.0, 0.0]]


def test_reliability_diagram(tmp_path: Path, saved_figures) -> None:
    generator = torch.Generator().manual_seed(0)
    probs = (torch.randn(200, 4, generator=generator) * 2).softmax(dim=-1)
    targets = torch.randint(0, 4, (200,), generator=generator)
    bins = reliability_bins(probs, targets)
    path = plots.plot_reliability_diagram(bins, bins["ece"], tmp_path / "reliability.png")
    _check_png(path, _size(plots.RELIABILITY_SIZE))

    top, bottom = plot_axes(saved_figures[0])
    assert top.get_title() == f"Reliability diagram (ECE = {bins['ece']:.3f})"
    edges = np.asarray(bins["bin_edges"])
    used = [i for i, n in enumerate(bins["bin_count"]) if n > 0]
    assert 3 <= len(used) < len(bins["bin_count"])  # some bins empty: they are left out
    accuracy, confidence = np.asarray(bins["bin_accuracy"]), np.asarray(bins["bin_confidence"])
    assert bars(top, "accuracy") == [
        pytest.approx((edges[i], 0.0, edges[i + 1] - edges[i], accuracy[i])) for i in used]
    assert bars(top, "gap to confidence") == [
        pytest.approx((edges[i], min(accuracy[i], confidence[i]), edges[i + 1] - edges[i],
                       abs(confidence[i] - accuracy[i]))) for i in used]
    assert lines_by_label(top) == {"perfect calibration": ([0.0, 1.0], [0.0, 1.0])}
    assert [p.get_height() for p in bottom.patches] == list(bins["bin_count"])  # every bin


def test_reliability_diagram_without_edges(tmp_path: Path, saved_figures) -> None:
    bins = {"bin_confidence": [0.0, 0.7], "bin_accuracy": [0.0, 1.0], "bin_count": [0, 3]}
    path = plots.plot_reliability_diagram(bins, 0.3, tmp_path / "reliability.png")
    _check_png(path, _size(plots.RELIABILITY_SIZE))
    top, bottom = plot_axes(saved_figures[0])  # two equal bins: [0, 0.5) and [0.5, 1]
    assert bars(top, "accuracy") == [(0.5, 0.0, 0.5, 1.0)]  # the empty first bin left out
    assert bars(top, "gap to confidence") == [pytest.approx((0.5, 0.7, 0.5, 0.3))]
    assert [(p.get_x(), p.get_height()) for p in bottom.patches] == [(0.0, 0.0), (0.5, 3.0)]
    assert top.get_title() == "Reliability diagram (ECE = 0.300)"


def _cells(figure) -> list[tuple[np.ndarray | None, str]]:
    """(image shown or None, title) of each cell of a grid, left to right, top to bottom."""
    cells = []
    for axes in plot_axes(figure):
        images = axes.get_images()
        cells.append((np.asarray(images[0].get_array()) if images else None, axes.get_title()))
    return cells


def test_image_grid(tmp_path: Path, saved_figures) -> None:
    titles = [f"true cat, predicted dog ({0.9 - i / 10:.2f}) image_{i}.jpg" for i in range(5)]
    colors = ["red", "red", None, "green", "red"]
    images = _images(5)
    path = plots.plot_image_grid(
        images,
        titles,
        tmp_path / "grid.png",
        ncols=3,
        title="Most confident mistakes",
        title_colors=colors,
    )
    width, height = plots.GRID_CELL_SIZE
    _check_png(path, _size((3 * width, 2 * height + 0.5)))

    figure = saved_figures[0]
    cells = _cells(figure)
    assert len(cells) == 6 and cells[5] == (None, "")  # 2 rows of 3, the last cell empty
    for (shown, caption), image, title in zip(cells, images, titles, strict=False):
        np.testing.assert_array_equal(shown, image)
        assert caption.replace("\n", " ") == title  # wrapped onto lines, nothing lost
    assert [a.title.get_color() for a in plot_axes(figure)[:5]] == [
        "red", "red", "black", "green", "red"]
    assert not any(a.axison for a in plot_axes(figure))
    assert figure.get_suptitle() == "Most confident mistakes"


@pytest.mark.parametrize("count", [1, 0])
def test_image_grid_single_or_no_image(tmp_path: Path, count: int, saved_figures) -> None:
    images = _images(count)
    path = plots.plot_image_grid(images, ["only"] * count, tmp_path / "grid.png")
    _check_png(path, _size(plots.GRID_CELL_SIZE))
    figure = saved_figures[0]
    if count:
        [(shown, caption)] = _cells(figure)
        np.testing.assert_array_equal(shown, images[0])
        assert caption == "only"
    else:
        assert figure.axes == [] and texts(figure) == ["nothing to show"]


def test_image_grid_accepts_array_batch_and_grayscale(tmp_path: Path, saved_figures) -> None:
    batch = np.stack(_images(2))
    gray = batch[..., 0]
    path = plots.plot_image_grid([*batch, gray[0]], ["a", "b", "gray"], tmp_path / "g.png", ncols=3)
    _check_png(path, _size((3 * plots.GRID_CELL_SIZE[0], plots.GRID_CELL_SIZE[1])))
    path = plots.plot_image_grid(batch, ["a", "b"], tmp_path / "batch.png")
    _check_png(path, _size((2 * plots.GRID_CELL_SIZE[0], plots.GRID_CELL_SIZE[1])))

    mixed, from_batch = saved_figures
    for figure, expected in ((mixed, [batch[0], batch[1], gray[0]]), (from_batch, list(batch))):
        for (shown, _), image in zip(_cells(figure), expected, strict=True):
            np.testing.assert_array_equal(shown, image)
    gray_image = plot_axes(mixed)[2].get_images()[0]
    assert gray_image.get_cmap().name == "gray"  # a 2-D image in grey, not a false-colour map


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


def test_side_by_side(tmp_path: Path, saved_figures) -> None:
    image, overlay = _images(2, height=64, width=64)
    path = plots.plot_side_by_side(image, overlay, "cat.jpg: cat (0.93)", tmp_path / "x.png",
                                   title_color="red")
    pixels = _check_png(path, _size(plots.SIDE_BY_SIDE_SIZE))
    assert pixels.shape == (*_size(plots.SIDE_BY_SIDE_SIZE)[::-1], 3)

    figure = saved_figures[0]
    (left, left_title), (right, right_title) = _cells(figure)
    np.testing.assert_array_equal(left, image)  # the input on the left, the overlay beside it
    np.testing.assert_array_equal(right, overlay)
    assert (left_title, right_title) == ("input", "attention rollout")
    assert figure.get_suptitle() == "cat.jpg: cat (0.93)"
    assert figure._suptitle.get_color() == "red"


def test_accuracy_vs_time(tmp_path: Path, saved_figures) -> None:
    series = {"tiny": [(0.0, 10.0), (300.0, 60.0), (150.0, 40.0)], "small": [(0.0, 10.0)],
              "none": []}
    path = plots.plot_accuracy_vs_time(series, tmp_path / "bench.png", title="CIFAR-10",
                                       budgets_s=[120.0, 600.0])
    _check_png(path, _size(plots.ACCURACY_VS_TIME_SIZE))
    empty = plots.plot_accuracy_vs_time({}, tmp_path / "empty.png")
    _check_png(empty, _size(plots.ACCURACY_VS_TIME_SIZE))

    [axes] = plot_axes(saved_figures[0])  # up to 600 s: minutes; each run sorted by time
    assert lines_by_label(axes) == {"tiny (best 60)": ([0.0, 2.5, 5.0], [10.0, 40.0, 60.0]),
                                    "small (best 10)": ([0.0], [10.0])}
    budgets = [line.get_xdata()[0] for line in axes.get_lines() if line.get_linestyle() == ":"]
    assert budgets == [2.0, 10.0]
    assert axes.get_title() == "CIFAR-10" and "(min)" in axes.get_xlabel()
    [nothing] = plot_axes(saved_figures[1])
    assert lines_by_label(nothing) == {} and texts(nothing) == ["no data"]


def test_time_unit() -> None:
    assert plots._time_unit(90) == ("s", 1.0)
    assert plots._time_unit(600) == ("min", 60.0)
    assert plots._time_unit(3 * 3600) == ("h", 3600.0)


def test_plots_from_threads(tmp_path: Path, saved_figures) -> None:
    errors: list[Exception] = []

    def draw(index: int) -> None:
        try:
            plots.plot_image_grid(_images(2, height=24 + index), [f"a{index}", f"b{index}"],
                                  tmp_path / f"grid{index}.png")
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
    # each figure holds its own thread's images and titles, none of another's
    drawn = sorted((cells[0][1], cells[1][1], cells[0][0].shape[0])
                   for cells in map(_cells, saved_figures))
    assert drawn == [(f"a{i}", f"b{i}", 24 + i) for i in range(3)]


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
def test_explain_bench_figure(tmp_path: Path, sanity: bool, saved_figures) -> None:
    path = bench_figure.plot_explain_bench(_bench_result(sanity), tmp_path / "bench.png",
                                           threshold=0.3, references=("random", "occlusion"),
                                           title="a run")
    size = (bench_figure.EXPLAIN_BENCH_SIZE if sanity
            else bench_figure.EXPLAIN_BENCH_ONE_PANEL_SIZE)
    pixels = _check_png(path, _size(size)).astype(int)
    coloured = pixels.max(axis=-1) - pixels.min(axis=-1) > 80  # the methods' lines and points
    half = pixels.shape[1] // 2
    assert coloured[:, :half].sum() > 100  # faithfulness points in the left half
    if sanity:  # the cascade's lines in the right half
        assert coloured[:, half:].sum() > 1000

    figure = saved_figures[0]
    panels = plot_axes(figure)
    assert len(panels) == (2 if sanity else 1) and figure.get_suptitle() == "a run"
    rows = _bench_result(sanity)["rows"]
    # left: one point per method at (deletion, insertion), references as diamonds
    points = {}
    for container in panels[0].containers:
        line = container.lines[0]
        points[container.get_label()] = (line.get_xdata()[0], line.get_ydata()[0],
                                         line.get_marker(), line.get_color())
    assert {label: point[:3] for label, point in points.items()} == {
        "rollout": (0.2, 0.8, "o"), "attnlrp": (pytest.approx(0.3), pytest.approx(0.7), "o"),
        "random (reference)": (pytest.approx(0.4), pytest.approx(0.6), "D"),
        "occlusion (reference)": (pytest.approx(0.5), pytest.approx(0.5), "D")}
    colour = {label.split()[0]: point[3] for label, point in points.items()}
    assert colour == {"rollout": "C0", "attnlrp": "C1", "random": "0.55", "occlusion": "black"}
    if sanity:  # right: each method's correlation per stage, in the same colour as on the left
        cascade = {line.get_label(): (line.get_ydata().tolist(), line.get_color())
                   for line in panels[1].get_lines() if not line.get_label().startswith("_")}
        expected = {}
        for row in rows:
            if "random_0" in row:
                means = [row[f"random_{k}"] for k in range(5)]
                expected[f"{row['method']} ({row['sanity']})"] = (pytest.approx(means),
                                                                 colour[row["method"]])
        assert cascade == expected
        threshold = [line.get_ydata()[0] for line in panels[1].get_lines()
                     if line.get_linestyle() == "--"]
        assert threshold == [0.3]
