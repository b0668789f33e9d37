"""The pages of `vit explain`: the overlays of a folder of any size as grid pages a person can
open, mistakes first, and an index that links them.

    tiles = TileStore()                      # each image's row of cells, kept on disk
    tiles.add(cells, titles, colours)
    pages = write_pages(tiles, order, base=DIR / "grid.png", draw=draw_page)
    write_index(DIR / "index.html", items, pages, methods=["attnlrp"])

A page holds at most ``IMAGES_PER_PAGE`` images (``ROWS_PER_PAGE`` with several methods) and
is never larger than ``MAX_PAGE_BYTES``: a page that comes out larger is drawn again as two.
One page is ``grid.png`` (or the ``--grid`` name); several are ``grid_001.png``, ... .
"""

from __future__ import annotations

import html
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vit.io import atomic_write

__all__ = ["IMAGES_PER_PAGE", "ROWS_PER_PAGE", "MAX_PAGE_BYTES", "TileStore", "Page",
           "mistakes_first", "write_pages", "write_index"]

IMAGES_PER_PAGE = 18  # one method: 3 columns x 6 rows
ROWS_PER_PAGE = 6  # several methods: one image per row
MAX_PAGE_BYTES = 5_000_000  # what an image viewer, a chat or a pull request takes in

Tile = tuple[list[np.ndarray], list[str], list[str | None]]  # one image: cells, titles, colours


class TileStore:
    """Each image's cells, titles and title colours, in the order they were added; the pixels
    wait in a temporary folder (a folder of thousands of images does not fill the memory)."""

    def __init__(self) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="vit-explain-")
        self._texts: list[tuple[list[str], list[str | None]]] = []

    def add(self, cells: list[np.ndarray], titles: list[str], colours: list[str | None]) -> None:
        np.savez(Path(self._folder.name) / f"{len(self._texts)}.npz", *cells)
        self._texts.append((titles, colours))

    def __len__(self) -> int:
        return len(self._texts)

    def get(self, index: int) -> Tile:
        with np.load(Path(self._folder.name) / f"{index}.npz") as saved:
            cells = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        return cells, *self._texts[index]

    def close(self) -> None:
        self._folder.cleanup()


@dataclass
class Page:
    path: Path
    images: list[int]  # the indices of the images it shows


def mistakes_first(wrong: Sequence[bool | None]) -> list[int]:
    """Image indices: the wrong predictions, then those whose truth is unknown, then the right
    ones; each group in its original order."""
    rank = {True: 0, None: 1, False: 2}
    return sorted(range(len(wrong)), key=lambda i: rank[wrong[i]])


def _page_name(base: Path, number: int | None) -> Path:
    return base if number is None else base.with_name(f"{base.stem}_{number:03d}{base.suffix}")


def write_pages(tiles: TileStore, order: Sequence[int], *, base: Path, per_page: int,
                draw: Callable[[list[Tile], Path], Any]) -> list[Page]:
    """Draw the images of ``order`` on pages of at most ``per_page`` (``draw(tiles, path)``),
    halving any page whose file comes out larger than MAX_PAGE_BYTES; one page is ``base``,
    several ``base_001``, ``base_002``, ... . Stale numbered pages of an earlier run go."""
    queue = [list(order[i:i + per_page]) for i in range(0, len(order), per_page)]
    single = len(queue) == 1
    draft = base.with_name(f".{base.stem}.draft{base.suffix}")
    pages: list[Page] = []
    while queue:
        group = queue.pop(0)
        draw([tiles.get(i) for i in group], draft)
        if draft.stat().st_size > MAX_PAGE_BYTES and len(group) > 1:
            half = len(group) // 2
            queue[:0] = [group[:half], group[half:]]
            single = False
            continue
        path = _page_name(base, None if single and not queue else len(pages) + 1)
        os.replace(draft, path)
        pages.append(Page(path, group))
    for stale in base.parent.glob(f"{base.stem}_[0-9][0-9][0-9]{base.suffix}"):
        if stale not in {p.path for p in pages}:
            stale.unlink()
    return pages


def _cell(value: Any) -> str:
    return f"<td>{html.escape('' if value is None else str(value))}</td>"


def _image_row(item: Any, page: Path | None, folder: Path) -> str:
    """One table row: the image, truth, prediction, verdict, share on the object, links."""
    verdict = {True: "wrong", False: "right", None: ""}[item.wrong]
    predicted = ", ".join(f"{label} {p:.0%}" for label, p in item.predictions[:3])
    on_object = "" if item.on_object is None else f"{item.on_object:.0%}"
    links = " ".join(f'<a href="{html.escape(_relative(p, folder))}">{html.escape(p.name)}</a>'
                     for p in (item.output, page) if p is not None)
    return (f'<tr class="{verdict}">' + _cell(item.path) + _cell(item.true_label)
            + _cell(predicted) + _cell(verdict) + _cell(on_object) + f"<td>{links}</td></tr>")


def _relative(path: Path, folder: Path) -> str:
    return Path(os.path.relpath(path, folder)).as_posix()


def write_index(path: Path, items: Sequence[Any], pages: Sequence[Page], *,
                methods: Sequence[str], key: str) -> Path:
    """``index.html``: the pages, then every image (mistakes first) with its true label, the
    prediction, the share of relevance on its object (when boxes are known) and links to its
    overlay and its page. Names are escaped: a file name is text, never markup."""
    folder = path.parent
    page_of = {i: page.path for page in pages for i in page.images}
    order = [i for page in pages for i in page.images]
    wrong = sum(1 for item in items if item.wrong)
    known = sum(1 for item in items if item.wrong is not None)
    tally = f"{wrong} of {known} predictions wrong; " if known else ""
    page_links = "".join(f'<li><a href="{html.escape(_relative(p.path, folder))}">'
                         f"{html.escape(p.path.name)}</a> ({len(p.images)} images)</li>"
                         for p in pages)
    rows = "".join(_image_row(items[i], page_of.get(i), folder) for i in order)
    text = (
        "<!doctype html><meta charset=\"utf-8\"><title>vit explain</title><style>"
        "body{font:14px sans-serif;margin:2em}td,th{padding:2px 8px;text-align:left}"
        "tr.wrong td{color:crimson}</style>"
        f"<h1>vit explain: {html.escape(', '.join(methods))}</h1>"
        f"<p>{len(items)} images; {tally}mistakes first.</p>"
        f"<p>{html.escape(key)}</p><h2>Pages</h2><ul>{page_links}</ul><h2>Images</h2>"
        "<table><tr><th>image</th><th>true</th><th>predicted</th><th></th>"
        f"<th>relevance on the object</th><th>files</th></tr>{rows}</table>\n")
    return atomic_write(path, text)
