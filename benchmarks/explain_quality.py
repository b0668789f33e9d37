"""How good are the explanations of a trained model: localisation and faithfulness.

    python benchmarks/explain_quality.py --checkpoint runs/quickstart/best.pt --data data/shapes
    python benchmarks/explain_quality.py --checkpoint runs/cifar/best.pt --data data/cifar10 \
        --limit 200 --json results/explain_cifar.json

On up to ``--limit`` held-out images of ``--data`` (a seeded, class-balanced pick from its
``val/`` folder, else from the validation files the run's ``split.json`` lists, else from the
folder itself when it has no ``train/``), for every explainer -- ``rollout`` (attention
rollout), ``grad-rollout`` (Chefer et al. 2021), ``attention`` (last layer's [CLS] attention,
heads averaged) and ``random`` (a random map: the reference every explainer must beat):

    pointing   fraction of images whose most salient patch has its centre inside the object's
               box; tied highest patches score the fraction of them inside. Only when the data
               folder holds a ``boxes.json``, as the synthetic shapes do. The box is carried
               through the model's eval resize and centre crop as a mask; "chance" is the mean
               fraction of patch centres inside the box: what a random patch scores on average.
    deletion   mean area under the predicted class's probability as the most salient patches
               are set to 0 after normalisation (the normalisation's mean colour), from none
               to all patches (Petsiuk et al. 2018, RISE). Lower is more faithful.
    insertion  the same as patches are revealed on a blurred copy. Higher is more faithful.

With boxes, rows "<method>, random weights" repeat the pointing game on a freshly initialised
copy of the model (the model-randomisation check of Adebayo et al. 2018): a score as high as
the trained model's says the map follows the image (e.g. a bright object), not the training.

The target class is the one predicted on the full image. Every mean comes with its standard
error over the images (``±``); two methods differ clearly when their gap is several of those.
Curves take ``min(--steps, patches)`` steps: one patch per step for grids up to ``--steps``
patches, else about ``patches / steps``. The cost is about ``2 x methods x (steps + 1)``
forward passes per image. Measured on 2 shared CPU cores (load 5), defaults, 200 images:
about 2 minutes for the 48 px quickstart model, 4.5 for the 32 px vit_nano_patch4_32; a 224 px
ViT-S wants a GPU, or e.g. ``--limit 50 --steps 16 --methods rollout,random``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from vit.data.folders import resolve_data_dirs, scan_folder
from vit.data.images import load_image
from vit.data.synthetic import BOXES_FILE, load_boxes
from vit.data.transforms import eval_geometry
from vit.errors import DataError
from vit.explain import (
    attention_rollout,
    deletion_auc,
    gradient_rollout,
    insertion_auc,
    random_saliency,
    raw_attention,
)
from vit.inference.classifier import Classifier
from vit.models.vision_transformer import VisionTransformer, config_dict

if not __package__:  # run as `python benchmarks/explain_quality.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import command_line, format_header, machine_info, write_json

logger = logging.getLogger(__name__)

Box = tuple[int, int, int, int]
Saliency = Callable[[nn.Module, torch.Tensor, torch.Generator], torch.Tensor]


def input_grid(model: nn.Module, images: torch.Tensor) -> tuple[int, int]:
    """The patch grid of a batch: (H // patch_h, W // patch_w)."""
    ph, pw = model.patch_embed.patch_size
    return images.shape[-2] // ph, images.shape[-1] // pw


def _random_map(model: nn.Module, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return random_saliency(images.shape[0], input_grid(model, images), gen)


METHODS: dict[str, Saliency] = {
    "rollout": lambda model, images, _: attention_rollout(model, images),
    "grad-rollout": lambda model, images, _: gradient_rollout(model, images),
    "attention": lambda model, images, _: raw_attention(model, images, layer=-1),
    "random": _random_map,
}


# ---------------------------------------------------------------------------------------------
# Which images
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    box: Box | None  # pixel box [x0, y0, x1, y1) in the file's own coordinates


def _label_under(path: Path, data: Path, classes: Sequence[str]) -> int:
    """The class of ``data/<class>/.../<image>`` from its first folder below ``data``."""
    try:
        name = path.resolve().relative_to(data.resolve()).parts[0]
    except ValueError:
        raise DataError(f"{path} is not inside {data}: the checkpoint was trained on another "
                        "data folder; pass that one with --data") from None
    if name not in classes:
        raise DataError(f"{path} is in folder {name!r}, not one of the classes {list(classes)}")
    return classes.index(name)


def held_out_images(
    data: Path, checkpoint: Path, classes: Sequence[str]
) -> tuple[list[tuple[Path, int]], str]:
    """(path, label) of images the run did not train on, and where they come from.

    In order: ``data/val/`` (or valid/, validation/); the ``val_files`` of the run's
    ``split.json`` next to the checkpoint (a split drawn from ``data/train/`` or ``data``);
    ``data`` itself when it is a plain ``<class>/<image>`` folder without train/.
    """
    train_dir, val_dir = resolve_data_dirs(data)
    if val_dir is not None:
        samples = scan_folder(val_dir, classes=classes).samples
        return [(Path(p), label) for p, label in samples], str(val_dir)
    split_file = checkpoint.parent / "split.json"
    split = json.loads(split_file.read_text()) if split_file.is_file() else {}
    if split.get("kind") == "stratified":
        paths = [Path(p) for p in split["val_files"]]
        return [(p, _label_under(p, train_dir, classes)) for p in paths], \
            f"{split_file} (val_files)"
    if train_dir != data:
        raise DataError(
            f"{data} has train/ but no val/, and {split_file} does not list held-out files; "
            "pass a folder of held-out images (<class>/<image>) with --data")
    samples = scan_folder(data, classes=classes).samples
    return [(Path(p), label) for p, label in samples], str(data)


def pick_balanced(labels: Sequence[int], limit: int, seed: int) -> list[int]:
    """Up to ``limit`` indices, classes taking turns, each class in a seeded random order."""
    gen = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    queues = [[members[j] for j in torch.randperm(len(members), generator=gen).tolist()]
              for _, members in sorted(by_class.items())]
    picked = [q[k] for k in range(max(map(len, queues), default=0)) for q in queues if k < len(q)]
    return sorted(picked[:limit])


def attach_boxes(images: Sequence[tuple[Path, int]], data: Path) -> list[Sample]:
    """Samples with the object box from ``data/boxes.json`` when there is one, else None."""
    if not (data / BOXES_FILE).is_file():
        return [Sample(path, label, None) for path, label in images]
    boxes = load_boxes(data)
    samples = []
    for path, label in images:
        key = path.resolve().relative_to(data.resolve()).as_posix()
        if key not in boxes:
            raise DataError(f"{data / BOXES_FILE} has no box for {key}; regenerate the data")
        samples.append(Sample(path, label, boxes[key]))
    return samples


def load_samples(
    data: Path, checkpoint: Path, classes: Sequence[str], *, limit: int, seed: int
) -> tuple[list[Sample], str]:
    """Up to ``limit`` held-out images (class-balanced, seeded) and where they come from."""
    data = data.expanduser()
    images, source = held_out_images(data, checkpoint, classes)
    chosen = pick_balanced([label for _, label in images], limit, seed)
    return attach_boxes([images[i] for i in chosen], data), source


# ---------------------------------------------------------------------------------------------
# Boxes on the patch grid
# ---------------------------------------------------------------------------------------------


def box_mask(box: Box, height: int, width: int) -> np.ndarray:
    """(height, width) uint8 mask, 1 on the pixels of the box [x0, x1) x [y0, y1)."""
    x0, y0, x1, y1 = box
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = 1
    return mask


def mask_in_view(mask: np.ndarray, *, img_size: int, crop_pct: float) -> np.ndarray:
    """The mask through the eval resize + centre crop the model's input went through."""
    image = np.zeros((*mask.shape, 3), dtype=np.uint8)
    return eval_geometry(img_size, crop_pct)(image=image, mask=mask)["mask"]


def patch_centres_inside(mask: np.ndarray, patch_size: tuple[int, int]) -> torch.Tensor:
    """(grid_h, grid_w) bool: is each patch's centre on the mask.

    The centre of patch (i, j) is the point ((i + 1/2) ph, (j + 1/2) pw); the pixel whose
    top-left corner (even sizes) or middle (odd sizes) lies there stands for it.
    """
    ph, pw = patch_size
    gh, gw = mask.shape[0] // ph, mask.shape[1] // pw
    centres = mask[ph // 2::ph, pw // 2::pw][:gh, :gw]
    return torch.from_numpy(centres.astype(bool))


def pointing_hits(saliency: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """(B,) float: does each map's highest patch lie inside the object.

    A map with several equal highest patches picks one of them at random: it scores the
    fraction of them inside (so a constant map scores the chance level, not its first patch).
    """
    flat = saliency.flatten(1)
    top = flat == flat.max(dim=1, keepdim=True).values
    return (top & inside.flatten(1)).sum(dim=1) / top.sum(dim=1)


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------


@dataclass
class Batch:
    images: torch.Tensor  # (B, 3, S, S), normalised
    labels: torch.Tensor  # (B,)
    inside: torch.Tensor | None  # (B, grid_h, grid_w) bool, or None without boxes


def load_batch(clf: Classifier, samples: Sequence[Sample]) -> Batch:
    arrays = [np.asarray(load_image(s.path)) for s in samples]
    images = clf.transform(arrays)
    labels = torch.tensor([s.label for s in samples])
    if any(s.box is None for s in samples):
        return Batch(images, labels, None)
    crop_pct = clf.preprocess["crop_pct"]
    patch = tuple(clf.model.patch_embed.patch_size)
    masks = [mask_in_view(box_mask(s.box, *a.shape[:2]), img_size=clf.img_size, crop_pct=crop_pct)
             for s, a in zip(samples, arrays, strict=True)]
    return Batch(images, labels, torch.stack([patch_centres_inside(m, patch) for m in masks]))


@contextmanager
def timed(seconds: dict[str, float], key: str) -> Iterator[None]:
    """Add the wall time of the block to ``seconds[key]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start


def with_random_weights(model: VisionTransformer, seed: int) -> VisionTransformer:
    """The same architecture freshly initialised (seeded), head included: the model-randomisation
    sanity check of Adebayo et al. 2018. A map that still "finds" the object on this model
    reflects the image, not what the trained model learned."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = VisionTransformer(model.config)
        nn.init.normal_(fresh.head.weight, std=0.02)  # a zero head gives zero gradients
    device = next(model.parameters()).device
    return fresh.to(device).eval()


def measure_batch(
    model: nn.Module, batch: Batch, *, methods: Sequence[str], steps: int,
    generator: torch.Generator, seconds: dict[str, float],
) -> dict[str, dict[str, torch.Tensor]]:
    """Per method, per image: ``pointing`` (with boxes), ``deletion`` and ``insertion``."""
    x = batch.images.to(next(model.parameters()).device)
    curve_steps = min(steps, math.prod(input_grid(model, x)))
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name in methods:
        with timed(seconds, f"{name} maps"):
            saliency = METHODS[name](model, x, generator).cpu()
        with timed(seconds, "deletion + insertion"):
            out[name] = {
                "deletion": deletion_auc(model, x, saliency, steps=curve_steps, batch_size=256),
                "insertion": insertion_auc(model, x, saliency, steps=curve_steps, batch_size=256),
            }
        if batch.inside is not None:
            out[name]["pointing"] = pointing_hits(saliency, batch.inside)
    return out


def pointing_batch(
    model: nn.Module, batch: Batch, *, methods: Sequence[str], generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Per method, per image: ``pointing`` only (for the randomised model)."""
    x = batch.images.to(next(model.parameters()).device)
    return {name: pointing_hits(METHODS[name](model, x, generator).cpu(), batch.inside)
            for name in methods}


def mean_and_sem(values: torch.Tensor) -> tuple[float, float]:
    """Mean and its standard error (sample std / sqrt(n)); 0 error for a single value."""
    values = values.double()
    n = values.numel()
    sem = float(values.std(unbiased=True)) / math.sqrt(n) if n > 1 else 0.0
    return float(values.mean()), sem


def summarise(per_image: Mapping[str, Mapping[str, torch.Tensor]]) -> list[dict[str, Any]]:
    """One row per method: the mean and standard error of each measure."""
    rows = []
    for name, measures in per_image.items():
        row: dict[str, Any] = {"method": name}
        for measure, values in measures.items():
            row[measure], row[f"{measure}_sem"] = mean_and_sem(values)
        rows.append(row)
    return rows


def run(
    clf: Classifier, samples: Sequence[Sample], *, methods: Sequence[str], steps: int,
    batch_size: int, seed: int, show_progress: bool = True,
) -> dict[str, Any]:
    """All measurements on ``samples``: rows per method, accuracy, chance level, timings.

    With boxes, rows "<method>, random weights" give the pointing game of each explainer on
    a freshly initialised copy of the model (see ``with_random_weights``).
    """
    generator = torch.Generator().manual_seed(seed)
    model = clf.model
    explainers = [m for m in methods if m != "random"]
    fresh = with_random_weights(model, seed)
    per_image: dict[str, dict[str, list[torch.Tensor]]] = {}
    correct, chance = [], []
    seconds: dict[str, float] = {}

    def collect(row: str, measure: str, values: torch.Tensor) -> None:
        per_image.setdefault(row, {}).setdefault(measure, []).append(values.cpu())

    for start in tqdm(range(0, len(samples), batch_size), desc="explain quality", unit="batch",
                      disable=not show_progress):
        batch = load_batch(clf, samples[start:start + batch_size])
        with torch.no_grad():
            correct.append(model(batch.images.to(clf.device)).argmax(dim=1).cpu() == batch.labels)
        measured = measure_batch(model, batch, methods=methods, steps=steps,
                                 generator=generator, seconds=seconds)
        for name, values in measured.items():
            for measure, v in values.items():
                collect(name, measure, v)
        if batch.inside is None:
            continue
        chance.append(batch.inside.flatten(1).float().mean(dim=1))
        with timed(seconds, "random-weights maps"):
            for name, hits in pointing_batch(fresh, batch, methods=explainers,
                                             generator=generator).items():
                collect(f"{name}, random weights", "pointing", hits)

    joined = {row: {k: torch.cat(v) for k, v in measures.items()}
              for row, measures in per_image.items()}
    accuracy, accuracy_sem = mean_and_sem(torch.cat(correct).float())
    result: dict[str, Any] = {"images": len(samples), "accuracy": accuracy,
                              "accuracy_sem": accuracy_sem, "rows": summarise(joined),
                              "seconds": seconds}
    if chance:
        result["chance"], result["chance_sem"] = mean_and_sem(torch.cat(chance))
    return result


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def _with_sem(row: Mapping[str, Any], key: str, scale: float = 1.0, digits: int = 3) -> str:
    if key not in row:
        return "-"
    return f"{row[key] * scale:.{digits}f} ± {row[f'{key}_sem'] * scale:.{digits}f}"


def _markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown_table(result: Mapping[str, Any]) -> str:
    """The per-method results as a markdown table; the pointing game (in %) only with boxes."""
    has_boxes = "chance" in result
    columns = [("deletion", "deletion AUC ↓", 1.0, 3), ("insertion", "insertion AUC ↑", 1.0, 3)]
    if has_boxes:
        columns.insert(0, ("pointing", "pointing game (%) ↑", 100.0, 1))
    lines = [_markdown_row(["method", *(title for _, title, _, _ in columns)]),
             _markdown_row(["---", *("---:" for _ in columns)])]
    for row in result["rows"]:
        lines.append(_markdown_row([row["method"], *(_with_sem(row, key, scale, digits)
                                                    for key, _, scale, digits in columns)]))
    if has_boxes:
        chance = _with_sem(result, "chance", 100.0, 1)
        lines.append(_markdown_row(["chance (patch centres in box)", chance, "", ""]))
    return "\n".join(lines)


def _describe_model(arch: Mapping[str, Any]) -> str:
    return (f"ViT patch {arch['patch_size']}, dim {arch['embed_dim']}, depth {arch['depth']}, "
            f"{arch['num_heads']} heads")


def report(result: Mapping[str, Any], info: Mapping[str, Any], setup: Mapping[str, Any]) -> str:
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in result["seconds"].items())
    return "\n".join([
        "```", format_header(info), "```", "",
        f"checkpoint `{setup['checkpoint']}` ({_describe_model(setup['model'])}, "
        f"{setup['img_size']} px, {setup['grid'][0]}x{setup['grid'][1]} patches), "
        f"images from `{setup['images_from']}`: "
        f"{result['images']} images, accuracy {_with_sem(result, 'accuracy', 100.0, 1)} %, "
        f"curves of {setup['curve_steps']} steps, seed {setup['seed']}", "",
        markdown_table(result), "",
        f"time: {timings}; total {setup['wall_s']:.1f} s wall, {setup['cpu_s']:.1f} s CPU",
    ])


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="a training checkpoint (best.pt)")
    parser.add_argument("--data", required=True, type=Path,
                        help="the image folder (its val/ part, or the run's held-out split)")
    parser.add_argument("--limit", type=int, default=200, help="at most this many images")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated subset of {', '.join(METHODS)}")
    parser.add_argument("--steps", type=int, default=32,
                        help="deletion/insertion curve steps (capped at the number of patches)")
    parser.add_argument("--batch-size", type=int, default=50, help="images per batch")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0, help="image pick and random maps")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        parser.error(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    if args.limit < 1 or args.steps < 1 or args.batch_size < 1:
        parser.error("--limit, --steps and --batch-size must be at least 1")
    args.methods = methods
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    clf = Classifier.from_checkpoint(args.checkpoint, device=args.device)
    samples, source = load_samples(args.data, args.checkpoint, clf.classes, limit=args.limit,
                                   seed=args.seed)
    model = clf.model
    grid = tuple(clf.img_size // p for p in model.patch_embed.patch_size)

    curve_steps = min(args.steps, grid[0] * grid[1])
    logger.info("%d images, %d methods: about %d forward passes for the deletion and insertion "
                "curves", len(samples), len(args.methods),
                2 * len(args.methods) * (curve_steps + 1) * len(samples))
    wall, cpu = time.perf_counter(), time.process_time()
    result = run(clf, samples, methods=args.methods, steps=args.steps,
                 batch_size=args.batch_size, seed=args.seed)
    setup = {
        "checkpoint": str(args.checkpoint), "model": config_dict(model),
        "img_size": clf.img_size, "crop_pct": clf.preprocess["crop_pct"], "grid": list(grid),
        "images_from": source, "limit": args.limit,
        "curve_steps": curve_steps, "seed": args.seed,
        "deletion_baseline": "zero", "insertion_baseline": "blur", "target": "predicted class",
        "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
    }
    argv_used = sys.argv[1:] if argv is None else list(argv)
    info = machine_info(clf.device, command_line(__file__, argv_used))
    print(report(result, info, setup))
    if args.json is not None:
        write_json(args.json, {"machine": info, "setup": setup, **result})
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
