"""Training throughput and model-FLOPs utilisation (MFU) against the measured matmul ceiling.

    python benchmarks/gpu_efficiency.py --device cuda --json gpu_efficiency.json

First the ceiling: the rate of a large bf16 matrix product on this device, measured in the same
process (median of repeats over rotating inputs; on CPU fp32 and a smaller size). Then, for every
model x batch x {eager, compiled}: full training steps (bf16 autocast forward, backward, fused
AdamW on CUDA) timed with CUDA events, median of ``--repeats`` rounds of ``--iters`` steps.

    MFU = images/s x FLOPs per training image / measured matmul FLOP/s

FLOPs per image are analytic (``vit.models.presets.count_flops_per_image(train=True)``: forward with
attention, times 3). ``--profile`` prints the ten most expensive kernels of one compiled step
of the first configuration: the evidence for where a missed goal's time goes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vit.models.presets import count_flops_per_image, create_model

if not __package__:  # run as `python benchmarks/gpu_efficiency.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (
    Column,
    command_line,
    format_header,
    format_table,
    load_average,
    machine_info,
    parse_list,
    run_cli,
    time_call,
    write_json,
)


def matmul_peak(device: torch.device, *, size: int, dtype: torch.dtype, repeats: int = 20) -> float:
    """FLOP/s of ``size`` x ``size`` matrix products (median), rotating over 4 input pairs."""
    gen = torch.Generator(device=device).manual_seed(0)
    pairs = [(torch.randn(size, size, device=device, dtype=dtype, generator=gen),
              torch.randn(size, size, device=device, dtype=dtype, generator=gen)) for _ in range(4)]
    out = torch.empty(size, size, device=device, dtype=dtype)
    for a, b in pairs:  # warm-up: library handles, kernel selection
        torch.matmul(a, b, out=out)
    times = []
    for i in range(repeats):
        a, b = pairs[i % len(pairs)]
        times.append(time_call(lambda a=a, b=b: torch.matmul(a, b, out=out), device, iters=5))
    return 2 * size**3 / statistics.median(times)


COMPILE_MODES = ("off", "on", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compiled_model(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """``off``: the eager model; ``on``: torch.compile's default mode; else that mode."""
    if mode not in COMPILE_MODES:
        raise SystemExit(f"error: --compile takes {', '.join(COMPILE_MODES)}; got {mode!r}")
    if mode == "off":
        return model
    return torch.compile(model, mode=None if mode == "on" else mode)


def train_step_fn(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                  y: torch.Tensor, *, bf16: bool, cuda_graphs: bool = False):
    """One full training step: autocast forward, loss, backward, optimizer step."""
    def step() -> None:
        if cuda_graphs:  # each call is a new step: last step's graph outputs may be reused
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def make_step(name: str, *, batch: int, compiled: str, device: torch.device, bf16: bool):
    """(model, step): a fresh model, fused AdamW on CUDA, one random batch, and its train step."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=1000).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    size = model.config.img_size
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    step = train_step_fn(compiled_model(model, compiled), optimizer, x, y, bf16=bf16,
                         cuda_graphs=compiled == "reduce-overhead")
    return model, step


def measure(name: str, *, batch: int, compiled: str, device: torch.device, bf16: bool,
            warmup: int, iters: int, repeats: int, peak: float) -> dict[str, Any]:
    model, step = make_step(name, batch=batch, compiled=compiled, device=device, bf16=bf16)
    cfg = model.config
    for _ in range(warmup):
        step()
    times = [time_call(step, device, iters=iters) for _ in range(repeats)]
    seconds = statistics.median(times)
    flops = count_flops_per_image(cfg, train=True)
    images_per_s = batch / seconds
    row = {"model": name, "batch": batch, "compile": compiled, "fused_adamw": device.type == "cuda",
           "img_per_s": images_per_s, "step_ms": 1000 * seconds,
           "spread": (max(times) - min(times)) / seconds, "gflop_per_img": flops / 1e9,
           "tflops": images_per_s * flops / 1e12, "mfu": images_per_s * flops / peak,
           "max_mem_gib": (torch.cuda.max_memory_allocated(device) / 2**30
                           if device.type == "cuda" else None)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return row


def profile_top_kernels(name: str, *, batch: int, device: torch.device, bf16: bool) -> str:
    from torch.profiler import ProfilerActivity, profile

    _, step = make_step(name, batch=batch, compiled="on", device=device, bf16=bf16)
    for _ in range(3):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(3):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=10)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure, print the table; returns what ``--json`` writes."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--models", default="vit_small_patch16_224,vit_base_patch16_224")
    p.add_argument("--batches", default="256,512", help="per-step batch sizes to try")
    p.add_argument("--compile", default="off,on",
                   help=f"comma-separated torch.compile modes to try: {', '.join(COMPILE_MODES)}")
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    p.add_argument("--peak-size", type=int, default=None, help="matmul size (default 8192, CPU 1024)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA GPU is visible; use --device cpu")
    bf16 = args.precision == "bf16"
    info = machine_info(device, command_line(__file__, argv))
    print(format_header(info), flush=True)
    size = args.peak_size or (8192 if device.type == "cuda" else 1024)
    peak_dtype = torch.bfloat16 if bf16 and device.type == "cuda" else torch.float32
    peak = matmul_peak(device, size=size, dtype=peak_dtype)
    print(f"measured matmul ceiling: {peak / 1e12:.1f} TFLOP/s ({peak_dtype}, {size}^3)", flush=True)

    rows = []
    for name in parse_list(args.models):
        for batch in [int(b) for b in parse_list(args.batches)]:
            for mode in parse_list(args.compile):
                row = measure(name, batch=batch, compiled=mode, device=device, bf16=bf16,
                              warmup=args.warmup, iters=args.iters, repeats=args.repeats, peak=peak)
                rows.append(row)
                print(f"{name} batch {batch} compile {mode}: {row['img_per_s']:.0f} img/s, "
                      f"MFU {100 * row['mfu']:.1f}%", flush=True)
    info["loadavg_end"] = load_average()
    payload = {"machine": info, "precision": args.precision,
               "matmul_peak": {"flops": peak, "size": size, "dtype": str(peak_dtype)}, "rows": rows}
    if args.profile:
        first = parse_list(args.models)[0]
        payload["profile"] = profile_top_kernels(first, batch=int(parse_list(args.batches)[0]),
                                                 device=device, bf16=bf16)
        print(payload["profile"])
    if args.json:
        write_json(args.json, payload)
    for row in rows:
        row["mfu_pct"] = 100 * row["mfu"]
    print(format_table(rows, [
        Column("model", "model"), Column("batch", "batch"), Column("compile", "compile"),
        Column("img_per_s", "img/s", ".0f"), Column("step_ms", "ms/step", ".1f"),
        Column("gflop_per_img", "GFLOP/img", ".2f"), Column("tflops", "TFLOP/s", ".1f"),
        Column("mfu_pct", "MFU %", ".1f"), Column("spread", "spread", ".2f"),
    ]))
    return payload


if __name__ == "__main__":
    run_cli(main)
