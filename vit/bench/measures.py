"""The evidence that a saliency map means something, measured on a batch of held-out images,
and the method it recommends for the model.

    result = explain_bench(model, images, settings=BenchSettings(methods=("legrad", "rollout")))

For every method, a random map (the baseline every method must beat) and the occlusion oracle
(what the model really uses, at one forward pass per patch), per image and then mean ± standard
error over the images:

    deletion, insertion (tokens)   the target class's probability as patch tokens are dropped
                                   from the sequence in saliency order, most salient first, area
                                   under the curve (Petsiuk et al. 2018, RISE, with the ViT-native
                                   removal, which creates no out-of-distribution pixels)
    deletion, insertion (pixels)   with ``pixels``: the same with patches replaced by a baseline
                                   (vit.explain.deletion_auc); three times the forward passes
    LeRF - MoRF                    deletion least-relevant-first minus most-relevant-first, the
                                   gap of Samek et al. 2017 (tokens; pixels too): larger is better
    randomisation                  the model-randomisation sanity check (Adebayo et al. 2018):
                                   head, then blocks from the top, re-initialised; the Spearman
                                   rank correlation of each map with the trained one, on
                                   ``sanity_images`` of the images, at the head, half the blocks
                                   and all of them (every stage, and the occlusion oracle, with
                                   ``full_cascade``). A method
                                   passes when it is below 0.3 once half the blocks are random:
                                   its map depends on what the model learned.
    asked object                   with objects (images holding two objects of different
                                   classes): how often the map for class c has its top patch on
                                   c's object, every object asked in turn.

Then the recommendation (``vit.explain.recommend``): the method with the best mean rank on the
three token columns among those that pass the randomisation check, with its leads in standard
errors and its ties.

Batched: a batch's maps are computed once per method; the token curves of several methods share
each forward pass; the randomisation check runs every checked image of a batch and every method
on one randomised copy per stage. The target class is the one the trained model predicts on the
full image (the randomised models keep it). Everything is computed in full precision on the
model's device. Reading a checkpoint and a folder, and writing the report:
``vit.bench.run``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm as std_tqdm
from tqdm.auto import tqdm

from vit.errors import ConfigError
from vit.explain.adapters import adapter_for
from vit.explain.faithfulness import deletion_auc, insertion_auc
from vit.explain.inputs import input_grid
from vit.explain.occlusion import occlusion
from vit.explain.recommend import recommend
from vit.explain.saliency import METHODS, saliency
from vit.explain.sanity import cascade_stages, half_stage, randomised_cascade, spearman, spread
from vit.explain.token_drop import token_drop_curves

__all__ = [
    "BENCH_METHODS",
    "REFERENCES",
    "SANITY_THRESHOLD",
    "COLUMNS",
    "BenchSettings",
    "explain_bench",
    "asked_object_hits",
    "mean_and_sem",
]


BENCH_METHODS = (*METHODS, "random", "occlusion")


REFERENCES = ("random", "occlusion")  # rows to compare against, not contenders


SANITY_THRESHOLD = 0.3


# The defaults, sized so that the default run of `vit explain-bench` (32 images) on a 12-block,
# width-192 model ends within about 3 minutes on 2 CPU cores (benchmarks/RESULTS.md, "explain-
# bench: time"): 16-step curves, the randomisation check on 16 of the images at 3 stages.
DEFAULT_STEPS = 16
DEFAULT_BATCH_SIZE = 16
DEFAULT_SANITY_IMAGES = 16
TOKEN_BATCH = 128  # images per token-dropping forward pass (several methods' curves together)
LOG_EVERY_S = 30.0  # how often the progress line is written to a log (stderr not a terminal)


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


@dataclass(frozen=True)
class BenchSettings:
    """What explain-bench measures and how (``explain_bench``, ``run_explain_bench``, the
    options of `vit explain-bench`): the methods, the points on each curve, the seed of the
    random map and the checks, the images per batch, and the randomisation check (``sanity``,
    on ``sanity_images`` of the images; ``full_cascade``: at every stage, and on the occlusion
    oracle too); ``pixels``: also the measures with pixels replaced."""

    methods: Sequence[str] = BENCH_METHODS
    steps: int = DEFAULT_STEPS
    seed: int = 0
    batch_size: int = DEFAULT_BATCH_SIZE
    sanity: bool = True
    sanity_images: int = DEFAULT_SANITY_IMAGES
    full_cascade: bool = False
    pixels: bool = False

    def check(self) -> None:
        """Raise ConfigError for an unknown method or a count under 1."""
        unknown = [m for m in self.methods if m not in BENCH_METHODS]
        if unknown or not self.methods:
            raise ConfigError(f"unknown methods {unknown}; choose from {', '.join(BENCH_METHODS)}")
        if self.steps < 1 or self.batch_size < 1 or self.sanity_images < 1:
            raise ConfigError(f"steps, batch_size and sanity_images must be >= 1; got "
                              f"{self.steps}, {self.batch_size}, {self.sanity_images}")


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


def _pixel_measures(model: nn.Module, x: torch.Tensor, maps: torch.Tensor,
                    classes: torch.Tensor, steps: int) -> dict[str, torch.Tensor]:
    """Deletion, insertion and LeRF-MoRF (B,) of one method's maps with pixels replaced."""
    pixels = {"target": classes, "steps": steps, "batch_size": 256}
    morf = deletion_auc(model, x, maps, baseline="zero", **pixels)
    lerf = deletion_auc(model, x, -maps, baseline="zero", **pixels)
    return {"pixel_deletion": morf,
            "pixel_insertion": insertion_auc(model, x, maps, baseline="blur", **pixels),
            "pixel_gap": lerf - morf}


def _token_measures(model: nn.Module, x: torch.Tensor, maps: Mapping[str, torch.Tensor],
                    classes: torch.Tensor, steps: int, bar: tqdm
                    ) -> dict[str, dict[str, torch.Tensor]]:
    """Per method, deletion, insertion and LeRF-MoRF (B,) with patch tokens dropped. Batched:
    the curves of several methods share each forward pass (up to ``TOKEN_BATCH`` images)."""
    b, names, out = x.shape[0], list(maps), {}
    per_call = max(1, TOKEN_BATCH // b)
    for first in range(0, len(names), per_call):
        group = names[first:first + per_call]
        bar.set_postfix_str(f"tokens: {', '.join(group)}", refresh=False)
        stacked = torch.cat([maps[m].to(x.device) for m in group])
        curves = token_drop_curves(
            model, x.repeat(len(group), 1, 1, 1), {"deletion": (stacked, False),
                                                   "insertion": (stacked, True),
                                                   "lerf": (-stacked, False)},
            classes.repeat(len(group)), steps=steps)
        auc = {name: torch.trapezoid(curve, fraction.to(curve), dim=1).split(b)
               for name, (curve, fraction) in curves.items()}
        for j, m in enumerate(group):
            out[m] = {"token_deletion": auc["deletion"][j], "token_insertion": auc["insertion"][j],
                      "token_gap": auc["lerf"][j] - auc["deletion"][j]}
        bar.update(len(group))
    return out


def _randomisation(model: nn.Module, x: torch.Tensor, classes: torch.Tensor,
                   trained: Mapping[str, torch.Tensor], stages: Sequence[int], seed: int,
                   generator: torch.Generator, bar: tqdm) -> dict[str, dict[int, torch.Tensor]]:
    """Per method and cascade stage (those in ``stages``), the Spearman correlation (B,) with the
    trained map. Batched: every image of ``x`` and every method on one randomised copy per stage."""
    out: dict[str, dict[int, torch.Tensor]] = {m: {} for m in trained}
    for stage, randomised in randomised_cascade(model, seed):
        if stage in stages:
            for method in out:
                bar.set_postfix_str(f"randomisation check, stage {stage}: {method}", refresh=False)
                maps = _method_maps(randomised, x, classes, method, generator).cpu()
                out[method][stage] = spearman(trained[method], maps)
                bar.update()
        if stage >= max(stages):
            break
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


@dataclass(frozen=True)
class _Plan:
    """What one batch measures besides the faithfulness of every method."""

    steps: int
    pixels: bool  # also the measures with pixels replaced
    seed: int
    stages: Sequence[int]  # randomisation stages (empty: no check)
    checked: Sequence[int]  # the batch's images (positions) that take the randomisation check
    checked_methods: Sequence[str]  # the methods that take it
    asks: Asks | None


def _measure_batch(model: nn.Module, x: torch.Tensor, methods: Sequence[str], plan: _Plan,
                   generator: torch.Generator, bar: tqdm) -> dict[str, dict[str, torch.Tensor]]:
    """Per method, per measure: one value per image (per checked image for the randomisation
    stages ``random_<k>``, per ask for ``asked_object``)."""
    with torch.no_grad():
        classes = model(x).argmax(dim=1)
    steps = min(plan.steps, math.prod(input_grid(model, x)))
    maps = {}
    for m in methods:
        bar.set_postfix_str(f"maps: {m}", refresh=False)
        maps[m] = _method_maps(model, x, classes, m, generator)
        bar.update()
    out = _token_measures(model, x, maps, classes, steps, bar)
    for m in methods if plan.pixels else ():
        bar.set_postfix_str(f"pixels: {m}", refresh=False)
        out[m].update(_pixel_measures(model, x, maps[m], classes, steps))
        bar.update()
    if plan.stages and plan.checked and plan.checked_methods:
        which = torch.tensor(plan.checked, device=x.device)
        cascade = _randomisation(model, x[which], classes[which],
                                 {m: maps[m][which.to(maps[m].device)].cpu()
                                  for m in plan.checked_methods},
                                 plan.stages, plan.seed, generator, bar)
        for method, stages in cascade.items():
            out[method].update({f"random_{k}": v for k, v in stages.items()})
    if plan.asks:
        bar.set_postfix_str("asked objects", refresh=False)
        for method, hits in _asked_objects(model, x, plan.asks, methods, generator).items():
            out[method]["asked_object"] = hits
        bar.update()
    return {m: {k: v.detach().float().cpu() for k, v in measures.items()}
            for m, measures in out.items()}


def mean_and_sem(values: torch.Tensor) -> tuple[float, float]:
    """Mean and its standard error (sample std / sqrt(n)); 0 error for a single value."""
    values = values.double()
    n = values.numel()
    return float(values.mean()), (float(values.std()) / math.sqrt(n) if n > 1 else 0.0)


class _Lines:
    """tqdm's output for a log file: every refresh on a line of its own (no carriage returns)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.strip()  # tqdm writes "\r" + the line; a line ends with "\n" here
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(total: int, *, enabled: bool) -> tqdm:
    """The bar with the time left: redrawn in place on a terminal; on a log file (stderr not a
    terminal) one line every ``LOG_EVERY_S`` seconds. Averaged over the whole run (smoothing 0):
    every batch does the same work, so the estimate holds once the first batch is done."""
    terminal = sys.stderr.isatty()
    return std_tqdm(total=total, desc="explain-bench", unit="pass", disable=not enabled,
                    smoothing=0.0, mininterval=0.5 if terminal else LOG_EVERY_S,
                    file=sys.stderr if terminal else _Lines(sys.stderr), dynamic_ncols=terminal)


def checked_methods(methods: Sequence[str], full_cascade: bool) -> list[str]:
    """The methods that take the randomisation check: not the random map; the occlusion oracle
    (one forward pass per patch at every stage) only with ``full_cascade``."""
    return [m for m in methods if m != "random" and (full_cascade or m != "occlusion")]


def _passes(batches: Sequence[range], checked: set[int], methods: Sequence[str],
            cascade: int, pixels: bool, objects: Any) -> int:
    """The bar's total: per batch, one pass per method for its maps, one for its token curves
    (one more with ``pixels``), ``cascade`` (stages x methods) when the batch has images to
    check, one for the asked objects."""
    return sum((3 if pixels else 2) * len(methods) + bool(objects)
               + (cascade if checked.intersection(b) else 0) for b in batches)


def explain_bench(
    model: nn.Module, images: torch.Tensor, *, settings: BenchSettings | None = None,
    objects: Sequence[Sequence[tuple[int, torch.Tensor]]] | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Every measure for every method of ``settings`` (default: ``BenchSettings()``) on
    ``images`` (N, C, H, W), normalised as the model wants.

    Faithfulness with patch tokens dropped; with ``settings.pixels`` also with pixels replaced
    (three times the forward passes). The randomisation check runs on ``sanity_images`` of them,
    spread evenly over the list, at the stages of ``cascade_stages`` (``full_cascade``: every
    stage). ``objects``, when given,
    holds for each image its objects as (class, (grid_h, grid_w) bool mask of the patches on the
    object); each object is then asked for in turn. Returns ``{"images", "depth", "half_stage",
    "stages", "sanity_images", "rows": [{"method", measure, measure_sem, ...}], "paired",
    "per_image", "recommendation"}``.
    """
    settings = settings or BenchSettings()
    settings.check()
    if objects is not None and len(objects) != len(images):
        raise ConfigError(f"objects must list {len(images)} images' objects; got {len(objects)}")
    methods, batch_size = settings.methods, settings.batch_size
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(settings.seed)
    depth = adapter_for(model).depth  # any family the explainers read; others: one line
    stages = cascade_stages(depth, settings.full_cascade) if settings.sanity else []
    checked = spread(len(images), settings.sanity_images) if settings.sanity else []
    sane = checked_methods(methods, settings.full_cascade)
    batches = [range(s, min(s + batch_size, len(images))) for s in range(0, len(images), batch_size)]
    per_image: dict[str, dict[str, list[torch.Tensor]]] = {m: {} for m in methods}
    with progress_bar(_passes(batches, set(checked), methods, len(stages) * len(sane),
                              settings.pixels, objects),
                      enabled=show_progress) as bar:
        for batch in batches:
            plan = _Plan(steps=settings.steps, pixels=settings.pixels, seed=settings.seed,
                         stages=stages,
                         checked=[i - batch.start for i in checked if i in batch],
                         checked_methods=sane,
                         asks=None if objects is None else [
                             (i - batch.start, c, mask) for i in batch for c, mask in objects[i]])
            measured = _measure_batch(model, images[batch.start:batch.stop].to(device), methods,
                                      plan, generator, bar)
            for method, measures in measured.items():
                for name, values in measures.items():
                    per_image[method].setdefault(name, []).append(values)
    values = {m: {name: torch.cat(chunks) for name, chunks in measures.items()}
              for m, measures in per_image.items()}
    return _summary(values, images=len(images), depth=depth, stages=stages, checked=checked)


def _summary(values: Mapping[str, Mapping[str, torch.Tensor]], *, images: int, depth: int,
             stages: Sequence[int], checked: Sequence[int]) -> dict[str, Any]:
    """The result: rows of means and standard errors, sanity verdicts, paired leads, the values
    per image and the recommendation."""
    rows = []
    for method, measures in values.items():
        row: dict[str, Any] = {"method": method}
        for name, v in measures.items():
            row[name], row[f"{name}_sem"] = mean_and_sem(v)
        rows.append(row)
    result = {"images": images, "depth": depth, "half_stage": half_stage(depth),
              "stages": list(stages), "sanity_images": list(checked), "rows": rows,
              "paired": _paired_gaps(values),
              "per_image": {m: {k: v.tolist() for k, v in measures.items()}
                            for m, measures in values.items()}}
    _add_verdicts(result)
    result["recommendation"] = recommend(result, REFERENCES, SANITY_THRESHOLD)
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

