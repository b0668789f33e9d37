"""What an explanation costs in time and peak memory, against the pass it explains.

    python benchmarks/rollout_cost.py --model vit_base_patch16_224 --sizes 224,448,896 --batch 1 \
        --repeats 3 --json benchmarks/results/rollout_cost_cpu.json
    python benchmarks/rollout_cost.py --device cuda --repeats 10    # on a GPU, fp32

For each input size (ViT-B/16: 197, 785 and 3,137 tokens at 224, 448 and 896 px; the position
embedding is resampled), on one random batch:

    forward            model(x), fused attention, no grad          reference for rollout, attention
    forward+backward   model(x), backward of the top logits        reference for the gradient methods
    rollout, attention, grad-rollout, legrad, attnlrp, gradcam      vit.explain.saliency(...)
    explicit forward   model(x, return_attention=True): every layer's N x N attention, as rollout
                       used to (only up to --explicit-max-tokens tokens: 5.7 GB at 896 px)

Time: a warm-up round, then ``--repeats`` rounds that run every measurement once, in turn
(common.time_alternating: drifts in clock speed and load hit all alike); median and minimum.

Peak memory: bytes in use by malloc (glibc ``mallinfo2``: ``uordblks`` in the heap plus
``hblkhd`` in mmapped chunks, where large tensors live), read after every aten op through a
``TorchDispatchMode``, minus the bytes in use just before the call. Weights and input were
allocated before, so this is the memory the call itself needs ("extra"); "total" adds the bytes
the weights and the input ("weights + extra"), what one call needs in all. Peaks inside one op
(a kernel's scratch) are not seen; with --threads 1 every allocation is in the main arena that
mallinfo2 reports. On CUDA: ``torch.cuda.max_memory_allocated`` during the call minus what was
allocated before it (the caching allocator's own accounting, kernels' workspaces included), and
times taken with CUDA events after a synchronisation.

The goal (issue 14): rollout within 1.5x of a forward pass in peak memory and in time at every
size; the gradient methods' figures are stated against forward+backward and forward.

``--timm``: timm's own model of the same name (``dynamic_img_size=True``) holding the same
weights is measured too, in the same alternating rounds, with its own forward as reference;
a last table gives each method's time on timm's model over its time on ours (the goal of issue
24: at most 1.2x), and its rollout's memory against timm's forward.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vit.explain import saliency
from vit.models.presets import create_model, list_models

if not __package__:  # run as `python benchmarks/rollout_cost.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (
    Column,
    command_line,
    format_header,
    format_table,
    machine_info,
    time_alternating,
    write_json,
)

EXPLAINERS = ("rollout", "attention", "grad-rollout", "legrad", "attnlrp", "gradcam")
REFERENCE = {"rollout": "forward", "attention": "forward", "explicit forward": "forward",
             "grad-rollout": "forward+backward", "legrad": "forward+backward",
             "attnlrp": "forward+backward", "gradcam": "forward+backward"}


# --- peak memory ---------------------------------------------------------------------------------


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _mallinfo2() -> Callable[[], int] | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None

    def in_use() -> int:
        info = libc.mallinfo2()
        return int(info.uordblks + info.hblkhd)

    return in_use


MALLOC_IN_USE = _mallinfo2()


class PeakMemory(TorchDispatchMode):
    """Peak of ``MALLOC_IN_USE()`` after every aten op run inside, relative to the start."""

    def __enter__(self) -> PeakMemory:
        self.start = self.peak = MALLOC_IN_USE()
        return super().__enter__()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, MALLOC_IN_USE())
        return out


def peak_memory(fn: Callable[[], object], device: torch.device | None = None) -> int:
    """Bytes the call needed at its peak beyond what was in use before it (on the CPU unless
    ``device`` is a CUDA device)."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    if MALLOC_IN_USE is None:
        raise RuntimeError("peak memory needs glibc's mallinfo2 (Linux, glibc >= 2.33)")
    with PeakMemory() as mode:
        fn()
    return mode.peak - mode.start


# --- the measurements ----------------------------------------------------------------------------


def measurements(model: torch.nn.Module, x: torch.Tensor, explicit: bool,
                 methods: tuple[str, ...] = EXPLAINERS, chunk_size: int | None = None
                 ) -> dict[str, Callable[[], object]]:
    def forward() -> None:
        with torch.no_grad():
            model(x)

    def forward_backward() -> None:
        model(x).max(dim=-1).values.sum().backward()
        model.zero_grad(set_to_none=True)

    def forward_explicit() -> None:
        with torch.no_grad():
            model(x, return_attention=True)

    fns: dict[str, Callable[[], object]] = {"forward": forward}
    if any(REFERENCE[m] == "forward+backward" for m in methods):
        fns["forward+backward"] = forward_backward
    if explicit:
        fns["explicit forward"] = forward_explicit
    for method in methods:
        options = {"chunk_size": chunk_size} if method == "rollout" and chunk_size else {}
        fns[method] = lambda method=method, options=options: saliency(model, x, method, **options)
    return fns


def measure_size(models: dict[str, torch.nn.Module], size: int, *, batch: int, repeats: int,
                 warmup: int, explicit_max_tokens: int, seed: int,
                 methods: tuple[str, ...] = EXPLAINERS, chunk_size: int | None = None
                 ) -> list[dict[str, Any]]:
    """One row per model and measurement at ``size`` px: times, peak memory and ratios to the
    reference of the same model. ``models``: {label: model}, timed in the same alternating
    rounds; the explicit forward only for ours ("ours"). The models' device runs everything."""
    model = next(iter(models.values()))
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    x = torch.randn(batch, 3, size, size).to(device)
    tokens = model.num_prefix_tokens + (size // model.patch_embed.patch_size[0]) ** 2
    fns = {(label, name): fn for label, m in models.items() for name, fn in measurements(
        m, x, explicit=label == "ours" and tokens <= explicit_max_tokens, methods=methods,
        chunk_size=chunk_size).items()}
    memory = {key: peak_memory(fn, device) for key, fn in fns.items()}  # also a warm-up
    times = time_alternating(fns, device=device, warmup=warmup, repeats=repeats)
    resident = sum(p.numel() * p.element_size() for p in model.parameters()) \
        + x.numel() * x.element_size()  # weights and input
    rows = []
    for label, name in fns:
        ref = (label, REFERENCE[name]) if name in REFERENCE else None
        key = (label, name)
        row = {"size": size, "tokens": tokens, "model": label, "measurement": name,
               "median_s": statistics.median(times[key]), "min_s": min(times[key]),
               "extra_mib": memory[key] / 2**20, "total_mib": (resident + memory[key]) / 2**20}
        if ref is not None:
            row["reference"] = ref[1]
            row["time_ratio"] = row["median_s"] / statistics.median(times[ref])
            row["time_ratio_min"] = row["min_s"] / min(times[ref])
            row["extra_ratio"] = memory[key] / max(memory[ref], 1)
            row["total_ratio"] = (resident + memory[key]) / (resident + memory[ref])
        rows.append(row)
    return rows


def timm_over_ours(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per size and measurement: timm's model's time over ours (median and minimum)."""
    ours = {(r["size"], r["measurement"]): r for r in rows if r["model"] == "ours"}
    return [{"size": r["size"], "measurement": r["measurement"],
             "ours_s": ours[(r["size"], r["measurement"])]["median_s"], "timm_s": r["median_s"],
             "ratio": r["median_s"] / ours[(r["size"], r["measurement"])]["median_s"],
             "ratio_min": r["min_s"] / ours[(r["size"], r["measurement"])]["min_s"]}
            for r in rows if r["model"] == "timm" and (r["size"], r["measurement"]) in ours]


def timm_twin(model: torch.nn.Module) -> torch.nn.Module:
    """timm's own VisionTransformer of ``model``'s configuration (``timm_architecture``), any
    input size, holding ``model``'s weights."""
    import timm

    from vit.models.timm_interop import timm_architecture

    name, args = timm_architecture(model.config)
    twin = timm.create_model(name, pretrained=False, dynamic_img_size=True,
                             num_classes=model.num_classes, **args)
    twin.load_state_dict(model.state_dict(), strict=True)
    return twin.eval().to(next(model.parameters()).device)


RATIO_COLUMNS = [
    Column("size", "px"), Column("measurement", "measurement"), Column("ours_s", "ours s", ".3f"),
    Column("timm_s", "timm s", ".3f"), Column("ratio", "timm / ours (median)", ".2f"),
    Column("ratio_min", "timm / ours (min)", ".2f"),
]

COLUMNS = [
    Column("size", "px"), Column("tokens", "tokens"), Column("model", "model"),
    Column("measurement", "measurement"),
    Column("median_s", "median s", ".3f"), Column("min_s", "min s", ".3f"),
    Column("extra_mib", "peak extra MiB", ".1f"), Column("total_mib", "weights+extra MiB", ".1f"),
    Column("reference", "vs"), Column("time_ratio", "time x (median)", ".2f"),
    Column("time_ratio_min", "time x (min)", ".2f"), Column("extra_ratio", "extra memory x", ".2f"),
    Column("total_ratio", "weights+extra x", ".2f"),
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_base_patch16_224", choices=list_models())
    parser.add_argument("--sizes", default="224,448,896", help="comma-separated input sizes, px")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--explicit-max-tokens", type=int, default=800,
                        help="measure the explicit-attention forward up to this many tokens")
    parser.add_argument("--methods", default=",".join(EXPLAINERS),
                        help=f"comma-separated, from {', '.join(EXPLAINERS)} (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="rollout's query rows per chunk (default: the method's own)")
    parser.add_argument("--timm", action="store_true",
                        help="also measure timm's own model of that name with the same weights")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if not methods or any(m not in EXPLAINERS for m in methods):
        parser.error(f"--methods must name some of {', '.join(EXPLAINERS)}; got {args.methods!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU visible to torch")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = create_model(args.model).eval()
    torch.nn.init.normal_(model.head.weight, std=0.02)  # a zero head would give zero gradients
    model.to(device)
    models = {"ours": model, **({"timm": timm_twin(model)} if args.timm else {})}
    info = machine_info(device, command_line(__file__, sys.argv[1:] if argv is None else argv))
    print(format_header(info))
    memory = "CUDA allocator, peak during the call" if device.type == "cuda" else \
        "malloc in use (mallinfo2), peak after every op"
    print(f"model {args.model}, batch {args.batch}, median of {args.repeats} after "
          f"{args.warmup} warm-up; memory: {memory}\n")
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        rows += measure_size(models, size, batch=args.batch, repeats=args.repeats,
                             warmup=args.warmup, explicit_max_tokens=args.explicit_max_tokens,
                             seed=args.seed, methods=methods, chunk_size=args.chunk_size)
        print(format_table([r for r in rows if r["size"] == size], COLUMNS), "\n", flush=True)
    ratios = timm_over_ours(rows)
    if ratios:
        print(format_table(ratios, RATIO_COLUMNS), "\n", flush=True)
    if args.json is not None:
        write_json(args.json, {"machine": info, "model": args.model, "batch": args.batch,
                               "rows": rows, "timm_over_ours": ratios})
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
