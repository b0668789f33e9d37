"""The explorer page in a real browser: headless Chromium driven by playwright.

Needs Python's ``playwright`` and a Chromium executable (Debian's ``chromium``; ``.ci/run``
installs both; ``VIT_CHROMIUM=/path`` picks another). Without them these tests skip and say why.
With ``VIT_EXPLORER_SCREENSHOT=path.png`` the screenshot of the first test is also copied there
(that is how ``assets/explorer.png`` was made).
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from helpers.models import SHAPES as CLASSES
from helpers.models import SHAPES_PREPROCESS as PREPROCESS
from helpers.models import peaky_classifier, peaky_model, save_checkpoint
from PIL import Image

from vit.cli import main
from vit.explain import METHODS, attention_rollout, saliency
from vit.explain.explorer import PageOptions, explorer_page
from vit.inference.classifier import Classifier
from vit.models.presets import create_model

pytestmark = pytest.mark.browser

LUT = np.rint(matplotlib.colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255)
PAGE_LIMIT_BYTES = 40 * 10**6


# ---------------------------------------------------------------------------------------------
# The browser
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Python playwright is not installed (pip install playwright)")
    executable = (os.environ.get("VIT_CHROMIUM") or shutil.which("chromium")
                  or shutil.which("chromium-browser"))
    if not executable:
        pytest.skip("no Chromium executable (apt-get install chromium, or set VIT_CHROMIUM)")
    playwright = sync_api.sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
    except Exception as e:  # any failure to start is a reason to skip
        playwright.stop()
        pytest.skip(f"Chromium at {executable} does not start: {str(e).splitlines()[0]}")
    yield chromium
    chromium.close()
    playwright.stop()


def wait_until(page, expression: str, timeout_s: float = 60.0) -> None:
    """Poll a JavaScript expression from Python (``page.wait_for_function`` evaluates strings
    inside the page, which the page's Content-Security-Policy forbids)."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {expression}")
        time.sleep(0.01)


class Watched:
    """A page with every dialog, console error, page error and non-data request recorded."""

    def __init__(self, browser, path: Path, *, viewport=(1280, 1500)):
        self.problems: list[str] = []
        self.page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
        self.page.on("dialog", self._dialog)
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(
            f"console error: {m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("request", lambda r: r.url.startswith(("data:", "file:")) or
                     self.problems.append(f"request: {r.url}"))
        self.page.goto(path.as_uri())
        wait_until(self.page,
                   "window.vitExplorer && (window.vitExplorer.ready || window.vitExplorer.error)")
        assert self.page.evaluate("window.vitExplorer.error") is None

    def _dialog(self, dialog) -> None:
        self.problems.append(f"dialog: {dialog.message}")
        dialog.dismiss()

    def text(self, selector: str) -> str:
        return self.page.locator(selector).inner_text()


# ---------------------------------------------------------------------------------------------
# Reading what was drawn
# ---------------------------------------------------------------------------------------------


def drawn(page, selector: str) -> tuple[np.ndarray, dict]:
    """The canvas's pixels as colormap levels in [0, 1] (one per patch), and its data-* values."""
    pixels = page.eval_on_selector(selector, """canvas => ({
        rgba: Array.from(canvas.getContext("2d")
                         .getImageData(0, 0, canvas.width, canvas.height).data),
        shape: [canvas.height, canvas.width], dataset: {...canvas.dataset}})""")
    rgba = np.asarray(pixels["rgba"], dtype=float).reshape(*pixels["shape"], 4)
    assert (rgba[..., 3] == 255).all()
    distance = ((rgba[..., None, :3] - LUT) ** 2).sum(-1)  # nearest colour of the map
    return distance.argmin(-1) / 255.0, pixels["dataset"]


def normalised(values: torch.Tensor, from_minimum: bool = False) -> np.ndarray:
    v = values.double().numpy()
    low = v.min() if from_minimum else 0.0
    return (v - low) / (v.max() - low)


def set_layer(page, layer: int) -> None:
    page.eval_on_selector("#layer", """(input, value) => {
        input.value = value; input.dispatchEvent(new Event("input", {bubbles: true})); }""",
                          str(layer + 1))


def click_patch(page, row: int, column: int, grid: tuple[int, int]) -> None:
    box = page.locator("#stage").bounding_box()
    page.mouse.click(box["x"] + (column + 0.5) * box["width"] / grid[1],
                     box["y"] + (row + 0.5) * box["height"] / grid[0])


def save_screenshot(page, path: Path) -> None:
    """The whole page as a small palette PNG; copied to $VIT_EXPLORER_SCREENSHOT when set."""
    page.screenshot(path=str(path), full_page=True)
    Image.open(path).convert("RGB").quantize(colors=128).save(path, optimize=True)
    if os.environ.get("VIT_EXPLORER_SCREENSHOT"):
        shutil.copyfile(path, os.environ["VIT_EXPLORER_SCREENSHOT"])


def rollout_rows(attentions: list[torch.Tensor], image: int) -> np.ndarray:
    """Rollout from every query, written out independently: M_L ... M_1, M = rownorm(A/2 + I/2)."""
    result = np.eye(attentions[0].shape[-1])
    for attention in reversed(attentions):
        m = 0.5 * attention[image].double().mean(0).numpy() + 0.5 * np.eye(result.shape[0])
        result = result @ (m / m.sum(-1, keepdims=True))
    return result


# ---------------------------------------------------------------------------------------------
# The overlay is the attention row
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_page(tmp_path_factory, shapes_dataset):
    clf = peaky_classifier()
    paths = [str(p) for p in sorted(shapes_dataset.rglob("0000[01].png"))][:4]
    names = [str(Path(p).relative_to(shapes_dataset)) for p in paths]  # e.g. circle/00000.png
    page = tmp_path_factory.mktemp("page") / "explorer.html"
    page.write_text(explorer_page(clf, paths, names, options=PageOptions(auc_steps=4)))
    x = clf.transform(paths)
    with torch.no_grad():
        _, attentions = clf.model(x, return_attention=True)
    return page, clf, x, attentions, names


def check_attention(page, attentions, *, image, layer, head, query, prefix=3):
    levels, data = drawn(page, "#attention-overlay")
    assert data == {"image": str(image), "layer": str(layer), "head": str(head),
                    "query": str(query)}
    rows = attentions[layer][image, :, query, prefix:]  # (heads, patches)
    peaks = rows.amax(-1)
    quantum = 0.5 / 63  # 6 bits, relative to each head's own maximum over the patches
    if head == "mean":
        want = rows.mean(0)
        tolerance = 2 * quantum * float(peaks.mean()) / float(want.max())
    elif head == "max":
        want, tolerance = rows.amax(0), 2 * quantum
    else:
        want, tolerance = rows[head], quantum
    np.testing.assert_allclose(levels.ravel(), normalised(want), rtol=0,
                               atol=tolerance + 1.5 / 255)


def check_saliency_maps(page, clf, x, *, image):
    """Side by side, one per method of vit.explain.saliency: each drawn map is that method's map
    of the image for the predicted class, and its AUCs are shown beside it."""
    with torch.no_grad():
        predicted = clf.model(x).argmax(-1)
    assert page.locator("#maps figure").count() == len(METHODS)
    for method in METHODS:
        want = saliency(clf.model, x, method, target=predicted)[image]
        assert want.max() > want.min()  # a flat map would show nothing
        levels, _ = drawn(page, f"#map-{method} canvas")
        np.testing.assert_allclose(levels, normalised(want, True), atol=1.5 / 255)
        assert "deletion AUC" in page.locator(f"#map-{method} .auc").inner_text()


def test_overlay_is_the_attention_row_of_the_chosen_query_layer_and_head(browser, tiny_page,
                                                                         tmp_path, capsys):
    path, clf, x, attentions, names = tiny_page
    watched = Watched(browser, path)
    page = watched.page
    click_patch(page, 1, 4, (6, 6))           # query: patch (row 2, column 5) = token 3 + 10
    set_layer(page, 1)
    page.select_option("#head", "1")         # head 2
    check_attention(page, attentions, image=0, layer=1, head=1, query=13)
    # the check can tell this head from the others and from the other layers
    rows = [normalised(attentions[layer][0, head, 13, 3:]) for layer, head in
            ((1, 1), (1, 0), (1, 2), (0, 1), (2, 1))]
    assert min(np.abs(rows[0] - other).max() for other in rows[1:]) > 0.2

    set_layer(page, 2)
    page.select_option("#head", "2")
    page.click("#query-tokens >> text=[CLS]")
    check_attention(page, attentions, image=0, layer=2, head=2, query=0)
    page.click("#query-tokens >> text=reg 2")
    check_attention(page, attentions, image=0, layer=2, head=2, query=2)
    for fused in ("max", "mean"):
        page.select_option("#head", fused)
        check_attention(page, attentions, image=0, layer=2, head=fused, query=2)
    rows = attentions[2][0, :, 2, 3:]
    assert np.abs(normalised(rows.amax(0)) - normalised(rows.mean(0))).max() > 0.1
    assert np.abs(normalised(rows.mean(0)) - normalised(rows[2])).max() > 0.1
    page.select_option("#head", "2")
    levels, data = drawn(page, "#rollout-overlay")
    assert data["query"] == "2"
    from_query = torch.tensor(rollout_rows(attentions, 0)[2, 3:])
    np.testing.assert_allclose(levels.ravel(), normalised(from_query), atol=1.0 / 255 + 1.5 / 255)

    page.click("#images button >> nth=2")   # another image: the same view of its own attention
    wait_until(page, "document.querySelector('#attention-overlay').dataset.image === '2'")
    check_attention(page, attentions, image=2, layer=2, head=2, query=2)
    rollout_map, _ = drawn(page, "#map-rollout canvas")
    np.testing.assert_allclose(rollout_map, normalised(attention_rollout(clf.model, x)[2], True),
                               atol=1.5 / 255)
    check_saliency_maps(page, clf, x, image=2)
    click_patch(page, 5, 0, (6, 6))
    check_attention(page, attentions, image=2, layer=2, head=2, query=3 + 30)
    box = page.locator("#stage").bounding_box()   # hovering shows a patch, leaving restores
    page.mouse.move(box["x"] + 2.5 * box["width"] / 6, box["y"] + 2.5 * box["height"] / 6)
    check_attention(page, attentions, image=2, layer=2, head=2, query=3 + 14)
    page.mouse.move(box["x"] + box["width"] + 40, box["y"])
    check_attention(page, attentions, image=2, layer=2, head=2, query=3 + 30)
    page.focus("#stage")                          # arrow keys move the chosen patch
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowRight")
    check_attention(page, attentions, image=2, layer=2, head=2, query=3 + 25)
    with torch.no_grad():
        from vit.explain.attention_stats import mean_attention_distance
        distance = mean_attention_distance(attentions[2], 3, (6, 6), 8)[2, 2].item()
    assert f"mean attention distance {distance:.1f} px" in watched.text("#stats-readout")
    assert watched.text("#image-name") == names[2]

    page.mouse.move(0, 0)
    save_screenshot(page, tmp_path / "explorer.png")
    assert watched.problems == []
    page.close()


# ---------------------------------------------------------------------------------------------
# Names from the data are text, never markup
# ---------------------------------------------------------------------------------------------


HOSTILE_CLASSES = ["<script>", "<img src=x onerror=alert(1)>", "</script><script>alert(2)</script>",
                   "a&amp;b", '"><svg onload=alert(3)>']


def test_file_and_class_names_show_as_text_and_run_nothing(browser, tmp_path, shapes_dataset):
    folder = tmp_path / "images" / "<script>"
    folder.mkdir(parents=True)
    names = ["<img src=x onerror=alert(1)>.jpg", "\"'><svg onload=alert(4)>.png", "plain.png"]
    for name, source in zip(names, sorted(shapes_dataset.rglob("00000.png")), strict=False):
        image = Image.open(source).convert("RGB")
        image.save(folder / name)
    ckpt = save_checkpoint(tmp_path / "best.pt", peaky_model(), HOSTILE_CLASSES)
    page_path = tmp_path / "page.html"
    assert main(["explain", "--checkpoint", str(ckpt), str(tmp_path / "images"), "--html",
                 str(page_path), "--auc-steps", "0", "--topk", "5"]) == 0

    watched = Watched(browser, page_path)
    page = watched.page
    shown = sorted(str(folder / name) for name in names)
    assert page.locator("#images .name").all_inner_texts() == shown
    for index, name in enumerate(shown):
        page.click(f"#images button >> nth={index}")
        wait_until(page, f"window.vitExplorer.state.image === {index}")
        assert watched.text("#image-name") == name
        assert sorted(page.locator("#predictions .label").all_inner_texts()) == sorted(
            HOSTILE_CLASSES)
    counts = page.evaluate("""() => ({
        scripts: document.querySelectorAll("script:not([type])").length,
        injected: document.querySelectorAll("img[src='x'], svg, [onerror], [onload]").length})""")
    assert counts == {"scripts": 1, "injected": 0}
    assert watched.problems == []  # no dialog, no console error, no request
    page.close()


# ---------------------------------------------------------------------------------------------
# Size and speed: 16 images of 224 px from ViT-S/16
# ---------------------------------------------------------------------------------------------


def photo_crops(count: int, seed: int = 0) -> list[np.ndarray]:
    """Photo-like test images: random crops (some mirrored) of the photo matplotlib ships."""
    photo = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg"))
    photo = np.asarray(photo.convert("RGB"))
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(count):
        side = int(rng.integers(160, min(photo.shape[:2]) + 1))
        top, left = (int(rng.integers(0, photo.shape[i] - side + 1)) for i in (0, 1))
        crop = photo[top:top + side, left:left + side]
        crops.append(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop))
    return crops


@pytest.fixture(scope="module")
def vit_s_page(tmp_path_factory):
    """The page of 16 photos from ViT-S/16 at 224 px (random weights), no faithfulness curves
    (they add a few numbers, not bytes)."""
    torch.manual_seed(0)
    clf = Classifier(create_model("vit_small_patch16_224", num_classes=5), classes=CLASSES,
                     device="cpu", preprocess={**PREPROCESS, "img_size": 224})
    page = tmp_path_factory.mktemp("vit_s") / "explorer.html"
    page.write_text(explorer_page(clf, photo_crops(16), options=PageOptions(auc_steps=0)))
    return page


@pytest.mark.slow
def test_vit_s_page_of_16_images_fits_in_40_mb(vit_s_page, capsys):
    size = vit_s_page.stat().st_size
    with capsys.disabled():
        print(f"\nexplorer page, 16 photos, ViT-S/16 at 224 px (random weights): "
              f"{size / 1e6:.1f} MB")
    assert size <= PAGE_LIMIT_BYTES


CLOCK = """() => {
    window.clickTimes = [];
    document.addEventListener("click", (event) => {
        const start = event.timeStamp;
        requestAnimationFrame(() => window.clickTimes.push(
            {frame: performance.now() - start, draw: window.vitExplorer.lastDrawMs}));
    }, true);
}"""


@pytest.mark.slow
def test_vit_s_page_redraws_a_patch_click_quickly(browser, vit_s_page, capsys):
    """Speed is printed, not asserted (timing asserts fail on loaded machines)."""
    started = time.perf_counter()
    watched = Watched(browser, vit_s_page)
    load_s = time.perf_counter() - started
    page = watched.page
    page.evaluate(CLOCK)
    rng = np.random.default_rng(0)
    for i, (row, column) in enumerate(rng.integers(0, 14, size=(30, 2))):
        click_patch(page, int(row), int(column), (14, 14))
        wait_until(page, f"window.clickTimes.length === {i + 1}")
    times = page.evaluate("window.clickTimes")
    switch_ms = page.evaluate("""async () => { const t = performance.now();
        await window.vitExplorer.selectImage(9); return performance.now() - t; }""")
    frame = [t["frame"] for t in times]
    draw = [t["draw"] for t in times]
    with capsys.disabled():
        print(f"\nViT-S/16 page in headless Chromium: loaded and first image shown in "
              f"{load_s:.1f} s; "
              f"patch click -> next frame: median {statistics.median(frame):.1f} ms, "
              f"max {max(frame):.1f} ms; redraw itself: median {statistics.median(draw):.2f} ms, "
              f"max {max(draw):.2f} ms ({len(times)} clicks); first view of another image "
              f"(decode + draw): {switch_ms:.0f} ms")
    # performance.now() is coarsened (100 us in headless Chromium): a redraw may read 0
    assert len(times) == 30 and all(t >= 0 for t in draw) and max(frame) > 0
    assert watched.problems == []
    page.close()
