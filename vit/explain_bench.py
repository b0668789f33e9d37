"""The evidence that a saliency map means something, measured on held-out images.

    result = explain_bench(model, images, methods=("legrad", "rollout"))   # a dict of rows
    vit explain-bench --checkpoint RUN/best.pt --data DIR [--methods ...] [--images N]

For every method, a random map (the baseline every method must beat) and the occlusion oracle
(what the model really uses, at one forward pass per patch), per image and then mean ± standard
error over the images:

    deletion, insertion (pixels)   the target class's probability as patches are replaced by a
                                   baseline in saliency order, most salient first, area under the
                                   curve (Petsiuk et al. 2018, RISE): vit.explain.deletion_auc
    deletion, insertion (tokens)   the same with the patch tokens dropped from the sequence: the
                                   ViT-native removal, which creates no out-of-distribution pixels
    LeRF - MoRF                    deletion least-relevant-first minus most-relevant-first, the
                                   gap of Samek et al. 2017 (pixels and tokens): larger is better
    randomisation                  the model-randomisation sanity check (Adebayo et al. 2018):
                                   head, then one more block from the top, re-initialised; the
                                   Spearman rank correlation of each map with the trained one.
                                   A method passes when it is below 0.3 once half the blocks are
                                   random: its map depends on what the model learned.
    asked object                   with an ``objects.json`` (images holding two objects of
                                   different classes): how often the map for class c has its top
                                   patch on c's object, every object asked in turn.

The target class is the one the trained model predicts on the full image (the randomised
models keep it). Everything is computed in full precision on the model's device.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from vit.errors import ConfigError, DataError
from vit.explain import _eval_mode, _input_grid, deletion_auc, insertion_auc, make_baseline
from vit.explainers import METHODS, saliency

__all__ = [
    "BENCH_METHODS",
    "OBJECTS_FILE",
    "SANITY_THRESHOLD",
    "explain_bench",
    "token_drop_auc",
    "token_drop_curves",
    "occlusion",
    "spearman",
    "randomised_cascade",
    "asked_object_hits",
    "markdown_report",
]

logger = logging.getLogger(__name__)

BENCH_METHODS = (*METHODS, "random", "occlusion")
REFERENCES = ("random", "occlusion")  # rows to compare against, not contenders
OBJECTS_FILE = "objects.json"
SANITY_THRESHOLD = 0.3
MEASURES = ("pixel_deletion", "pixel_insertion", "pixel_gap",
            "token_deletion", "token_insertion", "token_gap")


# ---------------------------------------------------------------------------------------------
# Removing patch tokens from the sequence
# ---------------------------------------------------------------------------------------------


def _target_probability(model: nn.Module, tokens: torch.Tensor, keep: torch.Tensor,
                        classes: torch.Tensor) -> torch.Tensor:
    """Class probability (B,) with only the patch tokens ``keep`` (B, K) in the sequence."""
    prefix = model.num_prefix_tokens
    patches = tokens[:, prefix:]
    kept = patches.gather(1, keep[..., None].expand(-1, -1, patches.shape[-1]))  # (B, K, D)
    sequence = torch.cat([tokens[:, :prefix], kept], dim=1)
    for block in model.blocks:
        sequence, _ = block(sequence)
    probs = model.forward_head(model.norm(sequence)).float().softmax(dim=-1)
    return probs.gather(1, classes[:, None])[:, 0]


def _probabilities(model: nn.Module, tokens: torch.Tensor, kept: Sequence[torch.Tensor],
                   classes: torch.Tensor) -> list[torch.Tensor]:
    """The class probability (B,) for each set of kept patches (B, K); sets of the same length
    share one forward pass."""
    by_length: dict[int, list[int]] = {}
    for i, keep in enumerate(kept):
        by_length.setdefault(keep.shape[1], []).append(i)
    out: list[torch.Tensor] = [classes] * len(kept)
    b = tokens.shape[0]
    for members in by_length.values():
        keep = torch.cat([kept[i] for i in members])  # (len(members) * B, K)
        probs = _target_probability(model, tokens.repeat(len(members), 1, 1), keep,
                                    classes.repeat(len(members)))
        for j, i in enumerate(members):
            out[i] = probs[j * b:(j + 1) * b]
    return out


def token_drop_curves(
    model: nn.Module, images: torch.Tensor, orders: Mapping[str, tuple[torch.Tensor, bool]],
    classes: torch.Tensor, *, steps: int,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """For each ``name: (saliency_map, insert)``, the class probability (B, steps + 1) as patch
    tokens leave (deletion) or join (insertion) the sequence, most salient first, and the
    fraction of patches moved at each point.

    Tokens keep their position embedding, so what remains is the same image with holes, not a
    shifted one. A model pooling by the patch mean needs at least one patch: its curves stop
    one patch short of the empty sequence.
    """
    least = 1 if model.global_pool == "avg" else 0
    kept, points = [], {}
    for name, (saliency_map, insert) in orders.items():
        num_patches = saliency_map[0].numel()
        order = saliency_map.flatten(1).argsort(dim=1, descending=True, stable=True)  # (B, P)
        counts = torch.linspace(0, num_patches - least, steps + 1).round().long()
        points[name] = (len(kept), counts.float() / num_patches)
        for count in counts.tolist():
            keep = order[:, :count + least] if insert else order[:, count:]
            kept.append(keep.sort(dim=1).values.to(images.device))
    with _eval_mode(model), torch.no_grad():
        probs = _probabilities(model, model.embed(images), kept, classes)
    return {name: (torch.stack(probs[first:first + steps + 1], dim=1), x)
            for name, (first, x) in points.items()}


def token_drop_curve(
    model: nn.Module, images: torch.Tensor, saliency_map: torch.Tensor, classes: torch.Tensor,
    *, insert: bool, steps: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One curve of ``token_drop_curves``: (B, steps + 1) probabilities, fractions moved."""
    return token_drop_curves(model, images, {"curve": (saliency_map, insert)}, classes,
                             steps=steps)["curve"]


def token_drop_auc(
    model: nn.Module, images: torch.Tensor, saliency_map: torch.Tensor, classes: torch.Tensor,
    *, insert: bool, steps: int = 32,
) -> torch.Tensor:
    """Area (B,) under ``token_drop_curve``: lower for deletion, higher for insertion is better."""
    curve, x = token_drop_curve(model, images, saliency_map, classes, insert=insert, steps=steps)
    return torch.trapezoid(curve, x.to(curve), dim=1)


# ---------------------------------------------------------------------------------------------
# The occlusion oracle and the random baseline
# ---------------------------------------------------------------------------------------------


def occlusion(
    model: nn.Module, images: torch.Tensor, classes: torch.Tensor, *, baseline: str = "zero",
    batch_size: int = 256,
) -> torch.Tensor:
    """Occlusion (Zeiler & Fergus 2014): (B, grid_h, grid_w) drop of the target logit when that
    one patch is replaced by ``baseline`` (vit.explain.make_baseline); one forward pass per patch.
    """
    gh, gw = _input_grid(model, images)
    h, w = images.shape[-2:]
    patch_of_pixel = torch.arange(gh * gw, device=images.device).reshape(gh, gw) \
        .repeat_interleave(h // gh, dim=0).repeat_interleave(w // gw, dim=1)  # (H, W)
    fill = make_baseline(images, baseline)
    b, drops = images.shape[0], []
    with _eval_mode(model), torch.no_grad():
        full = model(images).float().gather(1, classes[:, None])  # (B, 1)
        for patches in torch.arange(gh * gw, device=images.device).split(max(1, batch_size // b)):
            hidden = patch_of_pixel[None] == patches[:, None, None]  # (k, H, W)
            variants = torch.where(hidden[None, :, None], fill[:, None], images[:, None])
            logits = model(variants.flatten(0, 1)).float().reshape(b, len(patches), -1)
            occluded = logits.gather(2, classes[:, None, None].expand(b, len(patches), 1))[..., 0]
            drops.append(full - occluded)  # (B, k)
    return torch.cat(drops, dim=1).reshape(b, gh, gw)


def _method_maps(model: nn.Module, images: torch.Tensor, classes: torch.Tensor, method: str,
                 generator: torch.Generator) -> torch.Tensor:
    """(B, grid_h, grid_w) maps of ``method`` (a saliency method, "random" or "occlusion")."""
    if method == "random":
        return torch.rand((images.shape[0], *_input_grid(model, images)), generator=generator)
    if method == "occlusion":
        return occlusion(model, images, classes)
    return saliency(model, images, method, target=classes)


# ---------------------------------------------------------------------------------------------
# The model-randomisation sanity check
# ---------------------------------------------------------------------------------------------


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """(B, P) -> each row's ranks 0..P-1, tied values sharing their mean rank."""
    ranks = torch.empty(values.shape, dtype=torch.float64)
    for i, row in enumerate(values.detach().cpu()):
        _, inverse, counts = torch.unique(row, return_inverse=True, return_counts=True)
        first = torch.cumsum(counts, 0) - counts  # rank of each group's first member
        ranks[i] = (first + (counts - 1) / 2).double()[inverse]
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation (B,) of each pair of maps; 0 where a map is constant."""
    ra, rb = _average_ranks(a.flatten(1)), _average_ranks(b.flatten(1))
    ra, rb = ra - ra.mean(dim=1, keepdim=True), rb - rb.mean(dim=1, keepdim=True)
    denominator = (ra.norm(dim=1) * rb.norm(dim=1)).clamp(min=1e-12)
    return ((ra * rb).sum(dim=1) / denominator).float()


def _reinitialise(module: nn.Module, generator: torch.Generator, init_values: float | None
                  ) -> None:
    """Fresh weights as at construction (trunc-normal 0.02 linears, unit norms, LayerScale at
    ``init_values``); the head too, but not zero: a zero head gives zero gradients, empty maps."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02, generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(getattr(m, "gamma", None), nn.Parameter):  # LayerScale
            nn.init.constant_(m.gamma, init_values or 1.0)


def randomised_cascade(model: nn.Module, seed: int) -> Iterator[tuple[int, nn.Module]]:
    """Adebayo et al. 2018's cascading randomisation: a copy of the model whose head (with the
    final norm) is re-initialised, yielded as stage 0; then stage k with the top k blocks
    re-initialised as well, down to every block. The same copy is changed between yields."""
    randomised = copy.deepcopy(model).eval()
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    init_values = getattr(getattr(model, "config", None), "init_values", None)
    with torch.no_grad():
        for top in (randomised.head, randomised.norm, randomised.fc_norm):
            _reinitialise(top, generator, init_values)
    yield 0, randomised
    for k, block in enumerate(reversed(randomised.blocks), start=1):
        with torch.no_grad():
            _reinitialise(block, generator, init_values)
        yield k, randomised


def half_stage(depth: int) -> int:
    """The stage at which half the blocks (rounded up) are random."""
    return (depth + 1) // 2


# ---------------------------------------------------------------------------------------------
# The asked-for object
# ---------------------------------------------------------------------------------------------


def asked_object_hits(saliency_map: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """(B,) does the top patch of each map lie on the asked object (``inside``: (B, gh, gw)
    bool)? Several equal top patches score the fraction of them inside."""
    flat = saliency_map.flatten(1)
    top = flat == flat.max(dim=1, keepdim=True).values
    return (top & inside.flatten(1)).sum(dim=1) / top.sum(dim=1)


# ---------------------------------------------------------------------------------------------
# One batch of images, every measure
# ---------------------------------------------------------------------------------------------


def _faithfulness(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, classes: torch.Tensor,
                  steps: int) -> dict[str, torch.Tensor]:
    """The six faithfulness measures (B,) of one method's maps."""
    pixels = {"target": classes, "steps": steps, "batch_size": 256}
    morf = deletion_auc(model, x, maps, baseline="zero", **pixels)
    lerf = deletion_auc(model, x, -maps, baseline="zero", **pixels)
    curves = token_drop_curves(model, x, {"deletion": (maps, False), "insertion": (maps, True),
                                          "lerf": (-maps, False)}, classes, steps=steps)
    token = {name: torch.trapezoid(curve, fraction.to(curve), dim=1)
             for name, (curve, fraction) in curves.items()}
    return {
        "pixel_deletion": morf,
        "pixel_insertion": insertion_auc(model, x, maps, baseline="blur", **pixels),
        "pixel_gap": lerf - morf,
        "token_deletion": token["deletion"],
        "token_insertion": token["insertion"],
        "token_gap": token["lerf"] - token["deletion"],
    }


def _randomisation(model: nn.Module, x: torch.Tensor, classes: torch.Tensor,
                   trained: Mapping[str, torch.Tensor], seed: int, generator: torch.Generator
                   ) -> dict[str, dict[int, torch.Tensor]]:
    """Per method and cascade stage, the Spearman correlation (B,) with the trained map."""
    out: dict[str, dict[int, torch.Tensor]] = {m: {} for m in trained if m != "random"}
    for stage, randomised in randomised_cascade(model, seed):
        for method in out:
            maps = _method_maps(randomised, x, classes, method, generator).cpu()
            out[method][stage] = spearman(trained[method], maps)
    return out


Asks = list[tuple[int, int, torch.Tensor]]  # (image in the batch, class, (gh, gw) bool mask)


def _asked_objects(model: nn.Module, x: torch.Tensor, asks: Asks, methods: Sequence[str],
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Per method, per ask: is the top patch of the map for the asked class on its object."""
    which = torch.tensor([i for i, _, _ in asks], device=x.device)
    classes = torch.tensor([c for _, c, _ in asks], device=x.device)
    inside = torch.stack([mask for _, _, mask in asks])
    return {m: asked_object_hits(_method_maps(model, x[which], classes, m, generator).cpu(),
                                 inside) for m in methods}


def _measure_batch(model: nn.Module, x: torch.Tensor, methods: Sequence[str], *, steps: int,
                   seed: int, sanity: bool, asks: Asks | None, generator: torch.Generator
                   ) -> dict[str, dict[str, torch.Tensor]]:
    """Per method, per measure: one value per image (per ask for ``asked_object``)."""
    with torch.no_grad():
        classes = model(x).argmax(dim=1)
    steps = min(steps, math.prod(_input_grid(model, x)))
    maps = {m: _method_maps(model, x, classes, m, generator) for m in methods}
    out = {m: _faithfulness(model, x, maps[m], classes, steps) for m in methods}
    if sanity:
        cascade = _randomisation(model, x, classes, {m: v.cpu() for m, v in maps.items()},
                                 seed, generator)
        for method, stages in cascade.items():
            out[method].update({f"random_{k}": v for k, v in stages.items()})
    if asks:
        for method, hits in _asked_objects(model, x, asks, methods, generator).items():
            out[method]["asked_object"] = hits
    return {m: {k: v.detach().float().cpu() for k, v in measures.items()}
            for m, measures in out.items()}


# ---------------------------------------------------------------------------------------------
# All images
# ---------------------------------------------------------------------------------------------


def mean_and_sem(values: torch.Tensor) -> tuple[float, float]:
    """Mean and its standard error (sample std / sqrt(n)); 0 error for a single value."""
    values = values.double()
    n = values.numel()
    return float(values.mean()), (float(values.std()) / math.sqrt(n) if n > 1 else 0.0)


def _check_bench_args(methods: Sequence[str], steps: int, batch_size: int) -> None:
    unknown = [m for m in methods if m not in BENCH_METHODS]
    if unknown or not methods:
        raise ConfigError(f"unknown methods {unknown}; choose from {', '.join(BENCH_METHODS)}")
    if steps < 1 or batch_size < 1:
        raise ConfigError(f"steps and batch_size must be >= 1; got {steps}, {batch_size}")


def explain_bench(
    model: nn.Module, images: torch.Tensor, *, methods: Sequence[str] = BENCH_METHODS,
    steps: int = 32, seed: int = 0, batch_size: int = 25, sanity: bool = True,
    objects: Sequence[Sequence[tuple[int, torch.Tensor]]] | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Every measure for every method on ``images`` (N, C, H, W), normalised as the model wants.

    ``objects``, when given, holds for each image its objects as (class, (grid_h, grid_w) bool
    mask of the patches on the object); each object is then asked for in turn. Returns
    ``{"images", "depth", "half_stage", "rows": [{"method", measure, measure_sem, ...}]}``.
    """
    _check_bench_args(methods, steps, batch_size)
    if objects is not None and len(objects) != len(images):
        raise ConfigError(f"objects must list {len(images)} images' objects; got {len(objects)}")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    per_image: dict[str, dict[str, list[torch.Tensor]]] = {m: {} for m in methods}
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc="explain-bench", unit="batch", disable=not show_progress):
        x = images[start:start + batch_size].to(device)
        asks = None if objects is None else [
            (i, c, mask) for i, found in enumerate(objects[start:start + batch_size])
            for c, mask in found]
        measured = _measure_batch(model, x, methods, steps=steps, seed=seed, sanity=sanity,
                                  asks=asks, generator=generator)
        for method, measures in measured.items():
            for name, values in measures.items():
                per_image[method].setdefault(name, []).append(values)
    values = {m: {name: torch.cat(chunks) for name, chunks in measures.items()}
              for m, measures in per_image.items()}
    rows = []
    for method, measures in values.items():
        row: dict[str, Any] = {"method": method}
        for name, v in measures.items():
            row[name], row[f"{name}_sem"] = mean_and_sem(v)
        rows.append(row)
    depth = len(model.blocks)
    result = {"images": len(images), "depth": depth, "half_stage": half_stage(depth), "rows": rows,
              "paired": _paired_gaps(values),
              "per_image": {m: {k: v.tolist() for k, v in measures.items()}
                            for m, measures in values.items()}}
    _add_verdicts(result)
    return result


def _paired_gaps(values: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, Any]:
    """Per faithfulness measure, the best contender and, paired image by image, how far it is
    ahead of every other method: {"best": name, "ahead_of": {name: [mean, sem]}}."""
    out = {}
    for key, _, higher in COLUMNS:
        contenders = [m for m in values if m not in REFERENCES and key in values[m]]
        if not contenders:
            continue
        sign = 1.0 if higher else -1.0
        best = max(contenders, key=lambda m: sign * float(values[m][key].mean()))
        out[key] = {"best": best, "ahead_of": {
            m: list(mean_and_sem(sign * (values[best][key] - values[m][key])))
            for m in values if m != best and key in values[m]}}
    return out


def _add_verdicts(result: dict[str, Any]) -> None:
    """Each row's sanity verdict: its correlation at half the blocks random vs the threshold."""
    key = f"random_{result['half_stage']}"
    for row in result["rows"]:
        if key in row:
            row["sanity"] = "pass" if row[key] < SANITY_THRESHOLD else "FAIL"


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------

COLUMNS = (  # (key, title, True when higher is better)
    ("token_deletion", "deletion, tokens ↓", False),
    ("token_insertion", "insertion, tokens ↑", True),
    ("token_gap", "LeRF−MoRF, tokens ↑", True),
    ("pixel_deletion", "deletion, pixels ↓", False),
    ("pixel_insertion", "insertion, pixels ↑", True),
    ("pixel_gap", "LeRF−MoRF, pixels ↑", True),
)


def _cell(row: Mapping[str, Any], key: str, scale: float = 1.0, digits: int = 3) -> str:
    if key not in row:
        return "-"
    return f"{row[key] * scale:.{digits}f} ± {row[f'{key}_sem'] * scale:.{digits}f}"


def _best(rows: Sequence[Mapping[str, Any]], key: str, higher: bool) -> str | None:
    """The contender (not a reference row) with the best mean in this column."""
    contenders = [r for r in rows if r["method"] not in REFERENCES and key in r]
    if not contenders:
        return None
    return max(contenders, key=lambda r: r[key] if higher else -r[key])["method"]


def _line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown_report(result: Mapping[str, Any]) -> str:
    """The main table (faithfulness, sanity, asked object) and the randomisation cascade."""
    rows, half = result["rows"], result["half_stage"]
    columns = [(k, t, h, 1.0, 3) for k, t, h in COLUMNS]
    columns.append((f"random_{half}", f"ρ, {half} of {result['depth']} blocks random ↓", False,
                    1.0, 2))
    if any("asked_object" in r for r in rows):
        columns.append(("asked_object", "asked object (%) ↑", True, 100.0, 1))
    best = {key: _best(rows, key, higher) for key, _, higher, _, _ in columns}
    lines = [_line(["method", *(title for _, title, _, _, _ in columns), "sanity check"]),
             _line(["---", *("---:" for _ in columns), "---"])]
    for row in rows:
        name = row["method"] + (" (reference)" if row["method"] in REFERENCES else "")
        cells = [f"**{_cell(row, k, s, d)}**" if best[k] == row["method"] else _cell(row, k, s, d)
                 for k, _, _, s, d in columns]
        lines.append(_line([name, *cells, row.get("sanity", "-")]))
    return "\n".join([*lines, "", _paired_lines(result), "", _cascade_table(result)])


def _paired_lines(result: Mapping[str, Any]) -> str:
    """How far the best method of each column is ahead of the others, paired per image."""
    lines = ["Best per column and its lead over each other method (mean ± standard error of the "
             "per-image difference; positive = ahead):", ""]
    for key, title, _ in COLUMNS:
        if key in result.get("paired", {}):
            found = result["paired"][key]
            leads = ", ".join(f"{m} {d:+.3f} ± {e:.3f}" for m, (d, e) in found["ahead_of"].items())
            lines.append(f"- {title}: **{found['best']}**, ahead of {leads}")
    return "\n".join(lines)


def _cascade_table(result: Mapping[str, Any]) -> str:
    stages = range(result["depth"] + 1)
    names = ["head"] + [f"+{k} block{'s' if k > 1 else ''}" for k in stages[1:]]
    lines = ["Spearman ρ between the trained model's map and the map with the head and the top "
             f"k blocks re-initialised (Adebayo et al. 2018); a map passes below "
             f"{SANITY_THRESHOLD} at {result['half_stage']} blocks.", "",
             _line(["method", *names]), _line(["---", *("---:" for _ in stages)])]
    for row in result["rows"]:
        if "random_0" in row:
            lines.append(_line([row["method"], *(_cell(row, f"random_{k}", 1.0, 2)
                                                 for k in stages)]))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Images from a folder: the work behind `vit explain-bench`
# ---------------------------------------------------------------------------------------------

Box = tuple[int, int, int, int]  # pixel box [x0, y0, x1, y1) in the file's own coordinates


def held_out_images(data: Path, checkpoint: Path, classes: Sequence[str]
                    ) -> tuple[list[tuple[Path, int]], str]:
    """(path, label) of images the run did not train on, and where they come from: ``data/val``,
    else the ``val_files`` of the run's ``split.json``, else ``data`` itself (no train/)."""
    from vit.data import resolve_data_dirs, scan_folder

    train_dir, val_dir = resolve_data_dirs(data)
    if val_dir is not None:
        samples = scan_folder(val_dir, classes=classes).samples
        return [(Path(p), label) for p, label in samples], str(val_dir)
    split_file = checkpoint.parent / "split.json"
    split = json.loads(split_file.read_text()) if split_file.is_file() else {}
    if split.get("kind") == "stratified":
        paths = [Path(p) for p in split["val_files"]]
        return [(p, classes.index(p.parent.name)) for p in paths if p.parent.name in classes], \
            f"{split_file} (val_files)"
    if train_dir != data:
        raise DataError(f"{data} has train/ but no val/, and {split_file} lists no held-out "
                        "files; pass a folder of held-out images (<class>/<image>) with --data")
    samples = scan_folder(data, classes=classes).samples
    return [(Path(p), label) for p, label in samples], str(data)


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


def patch_mask(box: Box, image_hw: tuple[int, int], *, img_size: int, crop_pct: float | None,
               patch_size: int) -> torch.Tensor:
    """(grid_h, grid_w) bool: the patches whose centre lies on the box, after the eval resize
    and centre crop the model's input went through."""
    from vit.data import eval_geometry

    x0, y0, x1, y1 = box
    mask = np.zeros(image_hw, dtype=np.uint8)
    mask[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = 1
    blank = np.zeros((*image_hw, 3), dtype=np.uint8)
    mask = eval_geometry(img_size, crop_pct)(image=blank, mask=mask)["mask"]
    centre = patch_size // 2
    return torch.from_numpy(mask[centre::patch_size, centre::patch_size].astype(bool))


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


def _select(clf: Any, checkpoint: Path, data: Path, limit: int, seed: int) -> Selection:
    """(paths, labels or None, objects or None, where from): with ``objects.json``, up to
    ``limit`` of its images (seeded); else up to ``limit`` held-out images, classes balanced."""
    if (data / OBJECTS_FILE).is_file():
        listed = read_objects(data, clf.classes)
        order = torch.randperm(len(listed), generator=torch.Generator().manual_seed(seed))
        listed = [listed[i] for i in sorted(order[:limit].tolist())]
        return [p for p, _ in listed], None, [o for _, o in listed], str(data / OBJECTS_FILE)
    images, source = held_out_images(data, checkpoint, clf.classes)
    if not images:
        raise DataError(f"no held-out images found in {source}")
    chosen = pick_balanced([label for _, label in images], limit, seed)
    return [images[i][0] for i in chosen], [images[i][1] for i in chosen], None, source


def _write_report(result: Mapping[str, Any], output: Path) -> list[Path]:
    setup, machine = result["setup"], result["machine"]
    accuracy = f", accuracy {_cell(result, 'accuracy', 100.0, 1)}%" if "accuracy" in result else ""
    text = "\n".join([
        f"# explain-bench: `{setup['checkpoint']}`", "",
        f"{result['images']} images from `{setup['images_from']}`{accuracy}; target: the "
        f"predicted class; curves of {setup['steps']} steps; seed {setup['seed']}.", "",
        f"Machine: {machine['cpu']} ({machine['cpu_count']} cores, torch {machine['torch']}, "
        f"{machine['torch_threads']} threads, load {machine['loadavg']}), device "
        f"{machine['device']}, {machine['date']}, {setup['seconds']:.0f} s.",
        f"Command: `{machine['command']}`" if machine.get("command") else "", "",
        markdown_report(result), ""])
    output.mkdir(parents=True, exist_ok=True)
    paths = [output / "explain_bench.md", output / "explain_bench.json"]
    paths[0].write_text(text)
    paths[1].write_text(json.dumps(result, indent=2) + "\n")
    return paths


def run_explain_bench(
    checkpoint: str | Path, data: str | Path, *, methods: Sequence[str] = BENCH_METHODS,
    images: int = 200, steps: int = 32, seed: int = 0, batch_size: int = 25,
    sanity: bool = True, output: str | Path | None = None, device: str = "auto",
    command: str | None = None, show_progress: bool = False,
) -> tuple[dict[str, Any], list[Path]]:
    """Load a checkpoint and held-out images of ``data``, run ``explain_bench`` and write
    ``explain_bench.md`` and ``.json`` into ``output`` (default: ``explain_bench/`` beside the
    checkpoint). Returns the result and the two paths."""
    import time

    from vit.data import load_image
    from vit.predict import Classifier

    checkpoint, data = Path(checkpoint), Path(data).expanduser()
    _check_bench_args(methods, steps, batch_size)
    if images < 1:
        raise ConfigError(f"images must be >= 1; got {images}")
    clf = Classifier.from_checkpoint(checkpoint, device=device)
    paths, labels, boxes, source = _select(clf, checkpoint, data, images, seed)
    arrays = [np.asarray(load_image(p)) for p in paths]
    x = clf.transform(arrays).to(clf.device)
    objects = None if boxes is None else [
        [(c, patch_mask(box, a.shape[:2], img_size=clf.img_size,
                        crop_pct=clf.preprocess["crop_pct"],
                        patch_size=clf.model.patch_embed.patch_size[0])) for c, box in found]
        for a, found in zip(arrays, boxes, strict=True)]
    start = time.perf_counter()
    result = explain_bench(clf.model, x, methods=methods, steps=steps, seed=seed,
                           batch_size=batch_size, sanity=sanity, objects=objects,
                           show_progress=show_progress)
    if labels is not None:
        with torch.no_grad():
            correct = clf.model(x).argmax(dim=1).cpu() == torch.tensor(labels)
        result["accuracy"], result["accuracy_sem"] = mean_and_sem(correct.float())
    result["setup"] = {"checkpoint": str(checkpoint), "images_from": source, "steps": steps,
                       "seed": seed, "methods": list(methods), "img_size": clf.img_size,
                       "seconds": time.perf_counter() - start}
    result["machine"] = _machine(clf.device, command)
    out = Path(output) if output is not None else checkpoint.parent / "explain_bench"
    return result, _write_report(result, out)
