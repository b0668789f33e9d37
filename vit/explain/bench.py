"""The evidence that a saliency map means something, measured on a batch of held-out images.

    result = explain_bench(model, images, methods=("legrad", "rollout"))   # a dict of rows

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
    asked object                   with objects (images holding two objects of different
                                   classes): how often the map for class c has its top patch on
                                   c's object, every object asked in turn.

The target class is the one the trained model predicts on the full image (the randomised
models keep it). Everything is computed in full precision on the model's device. Reading a
checkpoint and a folder, and writing the report: ``vit.inference.explain_bench``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from vit.errors import ConfigError
from vit.explain.faithfulness import deletion_auc, insertion_auc
from vit.explain.inputs import input_grid
from vit.explain.occlusion import occlusion
from vit.explain.saliency import METHODS, saliency
from vit.explain.sanity import half_stage, randomised_cascade, spearman
from vit.explain.token_drop import token_drop_curves

__all__ = [
    "BENCH_METHODS",
    "REFERENCES",
    "SANITY_THRESHOLD",
    "COLUMNS",
    "explain_bench",
    "asked_object_hits",
    "mean_and_sem",
]


BENCH_METHODS = (*METHODS, "random", "occlusion")


REFERENCES = ("random", "occlusion")  # rows to compare against, not contenders


SANITY_THRESHOLD = 0.3


MEASURES = ("pixel_deletion", "pixel_insertion", "pixel_gap",
            "token_deletion", "token_insertion", "token_gap")


COLUMNS = (  # (key, title, True when higher is better)
    ("token_deletion", "deletion, tokens ↓", False),
    ("token_insertion", "insertion, tokens ↑", True),
    ("token_gap", "LeRF−MoRF, tokens ↑", True),
    ("pixel_deletion", "deletion, pixels ↓", False),
    ("pixel_insertion", "insertion, pixels ↑", True),
    ("pixel_gap", "LeRF−MoRF, pixels ↑", True),
)


def _method_maps(model: nn.Module, images: torch.Tensor, classes: torch.Tensor, method: str,
                 generator: torch.Generator) -> torch.Tensor:
    """(B, grid_h, grid_w) maps of ``method`` (a saliency method, "random" or "occlusion")."""
    if method == "random":
        return torch.rand((images.shape[0], *input_grid(model, images)), generator=generator)
    if method == "occlusion":
        return occlusion(model, images, classes)
    return saliency(model, images, method, target=classes)


def asked_object_hits(saliency_map: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """(B,) does the top patch of each map lie on the asked object (``inside``: (B, gh, gw)
    bool)? Several equal top patches score the fraction of them inside."""
    flat = saliency_map.flatten(1)
    top = flat == flat.max(dim=1, keepdim=True).values
    return (top & inside.flatten(1)).sum(dim=1) / top.sum(dim=1)


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
    steps = min(steps, math.prod(input_grid(model, x)))
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


def mean_and_sem(values: torch.Tensor) -> tuple[float, float]:
    """Mean and its standard error (sample std / sqrt(n)); 0 error for a single value."""
    values = values.double()
    n = values.numel()
    return float(values.mean()), (float(values.std()) / math.sqrt(n) if n > 1 else 0.0)


def check_bench_args(methods: Sequence[str], steps: int, batch_size: int) -> None:
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
    check_bench_args(methods, steps, batch_size)
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

