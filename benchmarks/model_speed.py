"""Our VisionTransformer against timm's: same configuration, same weights, timed in turns.

    python benchmarks/model_speed.py                    # CPU defaults: a few minutes on 2 cores
    python benchmarks/model_speed.py --models vit_tiny_patch4_32 --repeats 7 --json out.json
    python benchmarks/model_speed.py --device cuda --precision bf16 --batch 256 --compile

For every preset, timm's model is built (``timm.create_model(name)`` for the 224 px names, timm's
``VisionTransformer`` class with the same keyword arguments for our 32 px presets), its state_dict
is loaded into ours, and both must give the same fp32 logits (to 1e-4) before anything is timed.
Then, after a warm-up, each round times ours and timm once each, in alternating order, for

    infer   eval mode, torch.inference_mode, forward only
    train   forward + cross-entropy + backward + AdamW step

and the table shows median images/s, the ratio ours/timm (>= 1.0 means ours is at least as fast)
with its range over the rounds, and the achieved GFLOP/s (analytic FLOPs, ``count_flops_per_image``;
training counts forward + backward as 3x forward). ``--profile`` adds torch.profiler tables.

glibc's malloc is kept from unmapping freed memory (``--malloc pinned``, see ``pin_malloc``):
otherwise page faults, which depend on what ran just before, bias the turns by several percent.
On a machine busy with other work, ``--threads 1`` avoids OpenMP threads waiting for each other
(2 threads ran 6x slower than 1 at load 5 on 2 cores); the header records threads and load.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer
from torch import nn

from vit.models.presets import count_flops_per_image, create_model, list_models
from vit.models.vision_transformer import VisionTransformer, ViTConfig
from vit.runtime import autocast, resolve_device, resolve_precision

if not __package__:  # run as `python benchmarks/model_speed.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    BenchmarkError,
    Column,
    command_line,
    format_header,
    format_table,
    load_average,
    machine_info,
    parse_list,
    pin_malloc,
    run_cli,
    time_alternating,
    write_json,
)

DEFAULT_MODELS = (
    "vit_tiny_patch16_224",
    "vit_small_patch16_224",
    "vit_base_patch16_224",
    "vit_tiny_patch4_32",
    "vit_small_patch4_32",
)
MODES = ("infer", "train")
LOGIT_ATOL = 1e-4
# Per-device defaults: small enough that the whole CPU run takes minutes on 2 cores.
DEFAULT_BATCH = {"cpu": {224: 8, 32: 64}, "cuda": {224: 256, 32: 1024}}
DEFAULT_INFER_ONLY = {"cpu": "vit_base_patch16_224", "cuda": ""}

COLUMNS = (
    Column("model", "model"),
    Column("mode", "mode"),
    Column("batch", "batch"),
    Column("ours_img_s", "ours img/s", ".1f"),
    Column("timm_img_s", "timm img/s", ".1f"),
    Column("ratio", "ours/timm", ".3f"),
    Column("ratio_range", "ratio min-max"),
    Column("gflop_per_img", "GFLOP/img", ".3f"),
    Column("ours_gflop_s", "ours GFLOP/s", ".1f"),
    Column("timm_gflop_s", "timm GFLOP/s", ".1f"),
)


# --- the two models -----------------------------------------------------------------------------


def timm_kwargs(cfg: ViTConfig) -> dict[str, Any]:
    """Keyword arguments that build timm's ``VisionTransformer`` with the shape of ``cfg``."""
    return dict(
        img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans,
        num_classes=cfg.num_classes, embed_dim=cfg.embed_dim, depth=cfg.depth,
        num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias,
        qk_norm=cfg.qk_norm, init_values=cfg.init_values, reg_tokens=cfg.reg_tokens,
        global_pool=cfg.global_pool,
    )


def build_timm(name: str) -> nn.Module:
    """timm's model of this name when timm has it, else timm's class with our preset's shape."""
    if timm.is_model(name):
        return timm.create_model(name, pretrained=False)
    return TimmVisionTransformer(**timm_kwargs(create_model(name).config))


def build_pair(
    name: str, *, device: torch.device, seed: int
) -> tuple[VisionTransformer, nn.Module]:
    """(ours, timm's) with identical weights: timm's random init copied into ours (strict)."""
    torch.manual_seed(seed)
    theirs = build_timm(name)
    ours = create_model(name, num_classes=theirs.num_classes)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours.to(device), theirs.to(device)


def check_same_logits(ours: nn.Module, theirs: nn.Module, x: torch.Tensor) -> float:
    """Max |logit difference| in fp32 eval mode; raises ``BenchmarkError`` above ``LOGIT_ATOL``."""
    ours.eval()
    theirs.eval()
    with torch.inference_mode():
        a, b = ours(x).float(), theirs(x).float()
    diff = (a - b).abs().max().item()
    if not diff <= LOGIT_ATOL:
        raise BenchmarkError(
            f"ours and timm's logits differ by {diff:.3g} (> {LOGIT_ATOL}); the comparison would "
            "time two different functions. Check vit/models/vision_transformer.py against timm before benchmarking."
        )
    if a.std().item() == 0.0:
        raise BenchmarkError("the logits are constant, so the correctness check proves nothing")
    return diff


# --- what is timed ------------------------------------------------------------------------------


def inference_step(
    model: nn.Module, x: torch.Tensor, *, device: torch.device, precision: str
) -> Callable[[], None]:
    """One eval-mode forward pass under inference_mode."""
    model.eval()

    def step() -> None:
        with torch.inference_mode(), autocast(device, precision):
            model(x)

    return step


def training_step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, device: torch.device, precision: str
) -> Callable[[], None]:
    """One optimizer step: forward, cross-entropy, backward, AdamW (its own optimizer)."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.05)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            logits = model(x)
        F.cross_entropy(logits.float(), y).backward()
        optimizer.step()

    return step


def make_steps(
    models: dict[str, nn.Module], mode: str, *, cfg: ViTConfig, batch: int, device: torch.device,
    precision: str, seed: int,
) -> dict[str, Callable[[], None]]:
    """The timed function of each model, all fed the same random batch."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, generator=generator)
    y = torch.randint(0, cfg.num_classes, (batch,), generator=generator)
    x, y = x.to(device), y.to(device)
    if mode == "infer":
        return {k: inference_step(m, x, device=device, precision=precision)
                for k, m in models.items()}
    return {k: training_step(m, x, y, device=device, precision=precision)
            for k, m in models.items()}


def summarize(
    name: str, mode: str, batch: int, times: dict[str, list[float]], cfg: ViTConfig
) -> dict[str, Any]:
    """One table row from the per-round seconds of ours and timm."""
    ours_s, timm_s = statistics.median(times["ours"]), statistics.median(times["timm"])
    round_ratios = [t / o for o, t in zip(times["ours"], times["timm"], strict=True)]
    gflop = count_flops_per_image(cfg, train=mode == "train") / 1e9
    return {
        "model": name, "mode": mode, "batch": batch,
        "ours_img_s": batch / ours_s, "timm_img_s": batch / timm_s, "ratio": timm_s / ours_s,
        "ratio_range": f"{min(round_ratios):.2f}-{max(round_ratios):.2f}", "gflop_per_img": gflop,
        "ours_gflop_s": gflop * batch / ours_s, "timm_gflop_s": gflop * batch / timm_s,
        "ours_seconds": times["ours"], "timm_seconds": times["timm"],
    }


def profile_table(fn: Callable[[], None], *, device: torch.device, rows: int) -> str:
    """torch.profiler's top operators (by self time) of one call of ``fn``."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    sort_by = "self_cpu_time_total"
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        sort_by = "self_cuda_time_total"
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return prof.key_averages().table(sort_by=sort_by, row_limit=rows)


# --- the run ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help=f"comma-separated presets, from: {', '.join(list_models())}")
    parser.add_argument("--modes", default=",".join(MODES), help="infer, train or both")
    parser.add_argument("--infer-only", default=None,
                        help="models timed in inference only (default on CPU: "
                             f"{DEFAULT_INFER_ONLY['cpu']}; pass '' to train all)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--batch", type=int, default=None,
                        help="images per step (default on CPU: 8 at 224 px, 64 at 32 px)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed rounds first (default: 1 on CPU, 3 on CUDA, +1 compiled)")
    parser.add_argument("--iters", type=int, default=None,
                        help="calls per timed sample (default: 1 on CPU, 10 on CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--malloc", default="pinned", choices=("pinned", "system"),
                        help="pinned (default): keep freed memory mapped so page faults do not "
                             "add allocator noise (see common.pin_malloc); system: glibc as is")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true",
                        help="also print torch.profiler tables of one step of each model")
    parser.add_argument("--json", default=None, help="write settings and results to this file")
    args = parser.parse_args(argv)
    unknown = sorted(set(parse_list(args.models)) - set(list_models()))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(list_models())}")
    if not set(parse_list(args.modes)) <= set(MODES) or not parse_list(args.modes):
        parser.error(f"--modes takes {', '.join(MODES)}, got {args.modes!r}")
    if args.repeats < 1 or (args.batch is not None and args.batch < 1):
        parser.error("--repeats and --batch must be at least 1")
    return args


def resolve_defaults(args: argparse.Namespace, device: torch.device) -> None:
    """Fill the per-device defaults that were left unset."""
    kind = "cuda" if device.type == "cuda" else "cpu"
    if args.infer_only is None:
        args.infer_only = DEFAULT_INFER_ONLY[kind]
    if args.warmup is None:
        args.warmup = (3 if kind == "cuda" else 1) + int(args.compile)
    if args.iters is None:
        args.iters = 10 if kind == "cuda" else 1


def batch_for(args: argparse.Namespace, device: torch.device, img_size: int) -> int:
    if args.batch is not None:
        return args.batch
    sizes = DEFAULT_BATCH["cuda" if device.type == "cuda" else "cpu"]
    return sizes.get(img_size, min(sizes.values()))


def bench_model(
    name: str, args: argparse.Namespace, device: torch.device, precision: str
) -> tuple[list[dict[str, Any]], float, list[str]]:
    """Rows of one preset, its max logit difference, and profiler tables if asked for."""
    ours, theirs = build_pair(name, device=device, seed=args.seed)
    cfg = ours.config
    probe = torch.randn(2, cfg.in_chans, cfg.img_size, cfg.img_size,
                        generator=torch.Generator().manual_seed(args.seed)).to(device)
    diff = check_same_logits(ours, theirs, probe)
    models: dict[str, nn.Module] = {"ours": ours, "timm": theirs}
    if args.compile:
        models = {k: torch.compile(m) for k, m in models.items()}
    modes = [m for m in parse_list(args.modes)
             if m == "infer" or name not in parse_list(args.infer_only)]
    batch = batch_for(args, device, cfg.img_size)
    rows, profiles = [], []
    for mode in modes:
        print(f"timing {name} {mode} (batch {batch})...", file=sys.stderr, flush=True)
        steps = make_steps(models, mode, cfg=cfg, batch=batch, device=device,
                           precision=precision, seed=args.seed)
        times = time_alternating(steps, device=device, warmup=args.warmup, repeats=args.repeats,
                                 iters=args.iters)
        rows.append(summarize(name, mode, batch, times, cfg))
        if args.profile:
            for impl, fn in steps.items():
                table = profile_table(fn, device=device, rows=15)
                profiles.append(f"--- {name} {mode} {impl} ---\n{table}")
    return rows, diff, profiles


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the header and table; returns what ``--json`` writes."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc = "pinned" if args.malloc == "pinned" and pin_malloc() else "system"
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    resolve_defaults(args, device)
    info = machine_info(device, command_line(__file__, argv))

    rows: list[dict[str, Any]] = []
    diffs: dict[str, float] = {}
    profiles: list[str] = []
    for name in parse_list(args.models):
        model_rows, diffs[name], model_profiles = bench_model(name, args, device, precision)
        rows += model_rows
        profiles += model_profiles
        gc.collect()

    info["loadavg_end"] = load_average()
    print(format_header(info))
    print(f"settings: precision {precision}, compile {args.compile}, malloc {malloc}, median of "
          f"{args.repeats} rounds x {args.iters} call(s) after {args.warmup} warm-up round(s), "
          f"seed {args.seed}")
    print("max |logit diff| ours vs timm (fp32, before timing): "
          + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()) + "\n")
    print(format_table(rows, COLUMNS))
    for table in profiles:
        print("\n" + table)
    payload = {"benchmark": "model_speed", "machine": info, "settings": vars(args),
               "precision": precision, "malloc": malloc, "logit_max_abs_diff": diffs,
               "results": rows}
    if args.json:
        write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    run_cli(main)
