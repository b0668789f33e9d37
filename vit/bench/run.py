"""`vit explain-bench` behind the command: a checkpoint and held-out images of a folder in,
``explain_bench.md``, ``.json`` and ``.png`` (the figure) out.

    result, paths = run_explain_bench("runs/quickstart/best.pt", "data/shapes")
    result, paths = run_explain_bench(ckpt, data, images=100,
                                      settings=BenchSettings(steps=16, full_cascade=True))

The images: ``DIR/val``, else the run's held-out ``split.json`` files, else ``DIR`` itself; or,
with an ``objects.json`` in DIR (images holding two objects of different classes, e.g. from
``vit.data.squares.make_two_squares_set``), its images, each object asked for in turn. With a
``boxes.json`` in DIR (one object per image: the synthetic shapes), each held-out image's object
is asked for by its class: the pointing game. The measures: ``vit.bench.measures``. The method
the report recommends is written beside the checkpoint (``explain_method.json``), where
``vit explain``, the end-of-run overlays, the explorer page and ``vit demo`` find it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vit import run_folder
from vit.bench.figure import plot_explain_bench
from vit.bench.measures import (
    REFERENCES,
    SANITY_THRESHOLD,
    BenchSettings,
    explain_bench,
    mean_and_sem,
)
from vit.bench.report import cell, markdown_report
from vit.data.images import load_image
from vit.data.sources import open_source
from vit.data.synthetic import BOXES_FILE, load_boxes
from vit.errors import ConfigError, DataError
from vit.explain.object_boxes import Box, patch_mask
from vit.explain.recommend import method_file, recorded_method
from vit.explain.saliency import METHODS
from vit.inference.classifier import Classifier
from vit.io import atomic_write

__all__ = ["OBJECTS_FILE", "DEFAULT_IMAGES", "run_explain_bench", "held_out_images", "pick_balanced",
           "read_objects", "boxed_objects"]


OBJECTS_FILE = "objects.json"

DEFAULT_IMAGES = 32  # held-out images measured by default (see run_explain_bench)




def held_out_images(data: Path, checkpoint: Path, classes: Sequence[str]
                    ) -> tuple[list[tuple[Path, int]], str]:
    """(path, label) of images the run did not train on, and where they come from: ``data/val``,
    else the ``val_files`` of the run's ``split.json``, else ``data`` itself (no train/)."""
    split_file = checkpoint.parent / run_folder.SPLIT
    split = run_folder.read_split(checkpoint.parent)
    return open_source(data).held_out(classes, split=split, split_file=split_file)


def pick_balanced(labels: Sequence[int], limit: int, seed: int) -> list[int]:
    """Up to ``limit`` indices, classes taking turns, each class in a seeded random order."""
    generator = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    queues = [[members[j] for j in torch.randperm(len(members), generator=generator).tolist()]
              for _, members in sorted(by_class.items())]
    picked = [q[k] for k in range(max(map(len, queues), default=0)) for q in queues if k < len(q)]
    return sorted(picked[:limit])


def read_objects(data: Path, classes: Sequence[str]) -> list[tuple[Path, list[tuple[int, Box]]]]:
    """``data/objects.json``: ``{"image path": [{"class": name, "box": [x0, y0, x1, y1]}, ...]}``."""
    listed = json.loads((data / OBJECTS_FILE).read_text())
    out = []
    for name, objects in sorted(listed.items()):
        unknown = [o["class"] for o in objects if o["class"] not in classes]
        if unknown:
            raise DataError(f"{data / OBJECTS_FILE}: {name} holds classes {unknown} that the "
                            f"checkpoint does not know ({', '.join(classes)})")
        out.append((data / name, [(classes.index(o["class"]), tuple(o["box"])) for o in objects]))
    return out


def _machine(device: torch.device, command: str | None) -> dict[str, Any]:
    import datetime
    import os
    import platform

    cpu = platform.processor()
    if Path("/proc/cpuinfo").is_file():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                 .splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": command, "cpu": cpu, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": str(device), "loadavg": [round(v, 2) for v in os.getloadavg()]}


Selection = tuple[list[Path], list[int] | None, list[list[tuple[int, Box]]] | None, str]


def boxed_objects(data: Path, samples: Sequence[tuple[Path, int]]
                  ) -> list[list[tuple[int, Box]]] | None:
    """With ``data/boxes.json`` (one object per image, as ``make_shapes_dataset`` writes it,
    keyed by the path relative to ``data``), each image's one object: its class and box; the
    asked-object score is then the pointing game for the image's class. None without the file."""
    if not (data / BOXES_FILE).is_file():
        return None
    boxes = load_boxes(data)
    found = []
    for path, label in samples:
        try:
            key = path.resolve().relative_to(data.resolve()).as_posix()
        except ValueError:
            raise DataError(f"{path} is not inside {data}, whose {BOXES_FILE} gives the boxes"
                            ) from None
        if key not in boxes:
            raise DataError(f"{data / BOXES_FILE} has no box for {key}; regenerate the data")
        found.append([(label, tuple(boxes[key]))])
    return found


def _select(clf: Any, checkpoint: Path, data: Path, limit: int, seed: int) -> Selection:
    """(paths, labels or None, objects or None, where from): with ``objects.json``, up to
    ``limit`` of its images (seeded); else up to ``limit`` held-out images, classes balanced,
    with their boxes when ``boxes.json`` lists them."""
    if (data / OBJECTS_FILE).is_file():
        listed = read_objects(data, clf.classes)
        order = torch.randperm(len(listed), generator=torch.Generator().manual_seed(seed))
        listed = [listed[i] for i in sorted(order[:limit].tolist())]
        return [p for p, _ in listed], None, [o for _, o in listed], str(data / OBJECTS_FILE)
    images, source = held_out_images(data, checkpoint, clf.classes)
    if not images:
        raise DataError(f"no held-out images found in {source}")
    chosen = [images[i] for i in pick_balanced([label for _, label in images], limit, seed)]
    return ([p for p, _ in chosen], [label for _, label in chosen], boxed_objects(data, chosen),
            source)


def _record(checkpoint: Path, result: dict[str, Any], report: Path) -> None:
    """Write the recommendation beside the checkpoint (``vit.explain.recommend.recorded_method``)
    when the run can support one: every saliency method measured, with the randomisation
    check. Notes in the recommendation where it went, or why not."""
    found = result["recommendation"]
    missing = [m for m in METHODS if m not in result["setup"]["methods"]]
    if missing or not result["stages"]:
        found["recorded"] = None
        found["not_recorded"] = ("only a run of every saliency method with the randomisation "
                                 "check records a recommendation; this one left out "
                                 + (", ".join(missing) if missing else "the check"))
        return
    recorded_method(checkpoint, {
        "method": found["method"], "tied_with": found["tied_with"],
        "trades_off_with": found["trades_off_with"],
        "checkpoint": checkpoint.name, "images": result["images"],
        "date": result["machine"]["date"], "report": str(report), "rule": found["rule"]})
    found["recorded"] = str(method_file(checkpoint))


def _write_report(result: dict[str, Any], checkpoint: Path, output: Path) -> list[Path]:
    setup, machine = result["setup"], result["machine"]
    paths = [output / "explain_bench.md", output / "explain_bench.json"]
    _record(checkpoint, result, paths[0])
    result["recommendation"] = result.pop("recommendation")  # the JSON ends with it too
    accuracy = f", accuracy {cell(result, 'accuracy', 100.0, 1)}%" if "accuracy" in result else ""
    text = "\n".join([
        f"# explain-bench: `{setup['checkpoint']}`", "",
        f"{result['images']} images from `{setup['images_from']}`{accuracy}; target: the "
        f"predicted class; curves of {setup['steps']} steps; seed {setup['seed']}.", "",
        f"Machine: {machine['cpu']} ({machine['cpu_count']} cores, torch {machine['torch']}, "
        f"{machine['torch_threads']} threads, load {machine['loadavg']}), device "
        f"{machine['device']}, {machine['date']}, {setup['seconds']:.0f} s.",
        f"Command: `{machine['command']}`" if machine.get("command") else "", "",
        markdown_report(result), ""])
    atomic_write(paths[0], text)
    atomic_write(paths[1], json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    title = f"{setup['checkpoint']}: {result['images']} images"
    paths.append(plot_explain_bench(result, output / "explain_bench.png",
                                    threshold=SANITY_THRESHOLD, references=REFERENCES,
                                    title=title))
    return paths


def _objects(clf: Any, arrays: Sequence[np.ndarray], boxes: Any) -> Any:
    """Each image's objects as (class, patch mask) on the grid the model sees."""
    if boxes is None:
        return None
    return [[(c, patch_mask(box, a.shape[:2], img_size=clf.img_size,
                            crop_pct=clf.preprocess["crop_pct"],
                            patch_size=clf.model.patch_embed.patch_size[0])) for c, box in found]
            for a, found in zip(arrays, boxes, strict=True)]


def run_explain_bench(
    checkpoint: str | Path, data: str | Path, *, settings: BenchSettings | None = None,
    images: int = DEFAULT_IMAGES, output: str | Path | None = None, device: str = "auto",
    command: str | None = None, show_progress: bool = False,
) -> tuple[dict[str, Any], list[Path]]:
    """Load a checkpoint and up to ``images`` held-out images of ``data``, run ``explain_bench``
    with ``settings`` (default: ``BenchSettings()``) and write ``explain_bench.md``, ``.json``
    and the figure ``.png`` into ``output`` (default: ``explain_bench/`` beside the checkpoint),
    and the recommended method beside the checkpoint (``vit.explain.recommend``). Returns the
    result and the three paths. The defaults end within about 3 minutes on 2 CPU cores for a
    12-block, width-192 model at 32 px (benchmarks/RESULTS.md, "explain-bench: time")."""
    import time

    checkpoint, data = Path(checkpoint), Path(data).expanduser()
    settings = settings or BenchSettings()
    settings.check()
    if images < 1:
        raise ConfigError(f"images must be >= 1; got {images}")
    clf = Classifier.from_checkpoint(checkpoint, device=device)
    paths, labels, boxes, source = _select(clf, checkpoint, data, images, settings.seed)
    arrays = [np.asarray(load_image(p)) for p in paths]
    x = clf.transform(arrays).to(clf.device)
    start = time.perf_counter()
    result = explain_bench(clf.model, x, settings=settings, objects=_objects(clf, arrays, boxes),
                           show_progress=show_progress)
    if labels is not None:
        with torch.no_grad():
            correct = clf.model(x).argmax(dim=1).cpu() == torch.tensor(labels)
        result["accuracy"], result["accuracy_sem"] = mean_and_sem(correct.float())
    result["setup"] = {"checkpoint": str(checkpoint), "images_from": source,
                       "steps": settings.steps, "seed": settings.seed,
                       "methods": list(settings.methods), "img_size": clf.img_size,
                       "seconds": time.perf_counter() - start}
    result["machine"] = _machine(clf.device, command)
    out = Path(output) if output is not None else checkpoint.parent / "explain_bench"
    return result, _write_report(result, checkpoint, out)
