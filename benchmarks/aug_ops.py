"""How many operations the memory pipeline's augmentation and a compiled training step issue,
counted with torch.profiler on the CPU (issue 27: what a GPU will have to launch).

    python benchmarks/aug_ops.py --json benchmarks/results/aug_ops_cpu.json

A GPU runs roughly one kernel per aten operation that reaches a device kernel, and at small
batches launching them, not computing them, sets the pace. No GPU is needed to count them:

    augmentation   ``BatchAugment.apply`` (crop + flip, RandAugment ``--randaug``, normalise) on
                   one batch of each size in ``--batches``, 32 px images: aten operations per call
                   and per image. The random draws are made on the CPU beforehand and counted
                   apart ("draws": host-side work that launches nothing on a GPU).
    aug_batches    one call of ``MemoryLoader(aug_batches=K)`` for each K in ``--ks`` (K batches of
                   ``--k-batch``, augmented together; the draws of each batch included): aten
                   operations per call and per image.
    compiled step  the CIFAR model of ``--config`` under ``torch.compile(mode=--compile-mode)``:
                   ``torch._dynamo.explain`` of the model (graphs, breaks), then ``--steps``
                   training steps as ``train_one_epoch`` makes them (forward, label-smoothed
                   loss, backward, gradient clipping, AdamW), dynamo's and inductor's counters,
                   and one profiled step: calls into compiled graphs vs aten operations outside.

Counts: "aten" counts every ``aten::`` event of the profiler; "top" those not called from another
aten op (what Python dispatches); "leaf" those that call no other aten op. On the CPU the
profiler cannot tell the images' device from the host, so the same calls run once more with the
images on PyTorch's ``meta`` device (shapes only) under a dispatch mode: "device ops" are the
operations on image tensors (each one kernel launch on a GPU), "host ops" those on the CPU
tensors of the draws and per-image parameters (no launch).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from vit.data.augmentation import AugmentRecipe
from vit.data.loader import set_epoch
from vit.data.memory import AugmentDraws, BatchAugment, MemoryLoader

if not __package__:  # run as `python benchmarks/aug_ops.py`
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
    write_json,
)

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
ROOT = Path(__file__).resolve().parent.parent


def _aten_ancestor(event: Any) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def count_aten(fn: Callable[[], object], *, warmup: int = 1) -> dict[str, int]:
    """aten events of one call of ``fn`` (after ``warmup`` calls): all, top-level and leaves."""
    for _ in range(warmup):
        fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    return {
        "aten": len(events),
        "top": sum(not _aten_ancestor(e) for e in events),
        "leaf": sum(not any(c.name.startswith("aten::") for c in e.cpu_children) for e in events),
    }


class _DeviceCounter(TorchDispatchMode):
    """Counts the operations that reach a kernel, split by where their tensors live."""

    def __init__(self) -> None:
        super().__init__()
        self.device = self.host = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        leaves = tree_leaves((args, kwargs, out))
        on_device = any(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in leaves)
        self.device += on_device
        self.host += not on_device
        return out


def count_by_device(fn: Callable[[torch.device], object]) -> dict[str, int]:
    """Operations of ``fn(meta)`` on the "device" (tensors on ``meta``: what a GPU would launch
    as kernels) and on the host (the CPU tensors of the random draws and parameters)."""
    with _DeviceCounter() as counter:
        fn(torch.device("meta"))
    return {"device_ops": counter.device, "host_ops": counter.host}


def _augment(randaug: tuple[int, int]) -> BatchAugment:
    recipe = AugmentRecipe(scale=(0.35, 1.0), randaug_n=randaug[0], randaug_m=randaug[1])
    return BatchAugment(img_size=32, mean=MEAN, std=STD, recipe=recipe)


def augmentation_counts(batches: Sequence[int], randaug: tuple[int, int]) -> list[dict]:
    """One row per batch size: aten operations of one augmentation call, and of its draws."""
    aug, rows = _augment(randaug), []
    for b in batches:
        images = torch.randint(0, 256, (b, 32, 32, 3), dtype=torch.uint8,
                               generator=torch.Generator().manual_seed(b))

        def draw(b: int = b) -> AugmentDraws:
            return aug.draw(b, height=32, width=32, generator=torch.Generator().manual_seed(1))

        draws = draw()
        apply = count_aten(lambda images=images, draws=draws: aug.apply(images, draws))
        split = count_by_device(lambda device, images=images, draws=draws:
                                aug.apply(images.to(device), draws))
        rows.append({"batch": b, **apply, "per_image": apply["aten"] / b, **split,
                     "device_per_image": split["device_ops"] / b,
                     "draws_aten": count_aten(draw)["aten"]})
    return rows


def aug_batches_counts(ks: Sequence[int], batch: int, randaug: tuple[int, int]) -> list[dict]:
    """One row per K: aten operations of one MemoryLoader call that augments K batches."""
    rows = []
    for k in ks:
        images = torch.randint(0, 256, (2 * k * batch, 32, 32, 3), dtype=torch.uint8,
                               generator=torch.Generator().manual_seed(k))
        loader = MemoryLoader(images, [0] * images.shape[0], augment=_augment(randaug),
                              batch_size=batch, shuffle=True, drop_last=True, seed=0,
                              aug_batches=k)

        def one_call(loader: MemoryLoader = loader, k: int = k) -> list:
            set_epoch(loader, 0)
            return list(islice(iter(loader), k))  # the first call: K batches

        def on(device: torch.device, images: torch.Tensor = images, k: int = k) -> list:
            meta = MemoryLoader(images.to(device), [0] * images.shape[0],
                                augment=_augment(randaug), batch_size=batch, shuffle=True,
                                drop_last=True, seed=0, aug_batches=k)
            set_epoch(meta, 0)
            return list(islice(iter(meta), k))

        counts, split = count_aten(one_call), count_by_device(on)
        rows.append({"K": k, "batch": batch, **counts, "per_image": counts["aten"] / (k * batch),
                     **split, "device_per_image": split["device_ops"] / (k * batch)})
    return rows


# --- the compiled training step ------------------------------------------------------------------


def _cifar_model(config: Path, depth: int | None) -> torch.nn.Module:
    from vit.config import load_config
    from vit.training.model_build import build_model

    overrides = [f"model.depth={depth}"] if depth else []
    cfg = load_config(config, overrides)
    return build_model(cfg, classes=[str(i) for i in range(10)])


PHASES = ("forward", "loss", "backward", "clip", "optimizer")


def _train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                y: torch.Tensor) -> None:
    """What ``vit.training.epoch`` does for one batch without accumulation (fp32, no scaler),
    each phase under a profiler label."""
    trees = sys.modules.get("torch._inductor.cudagraph_trees")
    if trees is not None:
        trees.mark_step_begin()
    with record_function("forward"):
        logits = model(x)
    with record_function("loss"):
        loss = torch.nn.functional.cross_entropy(logits.float(), y, label_smoothing=0.1)
    with record_function("backward"):
        loss.backward()
    with record_function("clip"):
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    with record_function("optimizer"):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def _explain(model: torch.nn.Module, x: torch.Tensor) -> dict[str, Any]:
    import torch._dynamo

    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(x)
    return {"graphs": explained.graph_count, "graph_breaks": explained.graph_break_count,
            "break_reasons": [str(r.reason) for r in explained.break_reasons],
            "ops_in_graphs": explained.op_count}


def _ancestors(event: Any) -> list[str]:
    names, parent = [], event.cpu_parent
    while parent is not None:
        names.append(parent.name)
        parent = parent.cpu_parent
    return names


def _profile_step(step: Callable[[], None]) -> dict[str, Any]:
    """One step: calls into compiled graphs (forward, backward), and per phase the top-level
    aten operations that run outside them (eagerly)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.events()
    names: dict[str, Counter[str]] = {phase: Counter() for phase in PHASES}
    for e in events:
        if not e.name.startswith("aten::"):
            continue
        up = _ancestors(e)
        if any(n.startswith(("aten::", "CompiledFunction", "Torch-Compiled Region")) for n in up):
            continue
        phase = next((n for n in up if n in names), None)
        if phase is not None:
            names[phase][e.name] += 1
    return {"compiled_forward_calls": sum(e.name == "CompiledFunction" for e in events),
            "compiled_backward_calls": sum(e.name == "CompiledFunctionBackward" for e in events),
            "aten_top_outside_graphs": {k: sum(c.values()) for k, c in names.items()},
            "outside_by_name": {k: dict(c.most_common()) for k, c in names.items()}}


def compiled_step(config: Path, *, mode: str, batch: int, steps: int,
                  depth: int | None) -> dict[str, Any]:
    """Graphs and breaks of the model, and what ``steps`` compiled training steps did."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from vit.training.optim import build_optimizer

    torch.manual_seed(0)
    model = _cifar_model(config, depth).train()
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    result: dict[str, Any] = {"config": str(config), "mode": mode, "batch": batch,
                              "depth": model.config.depth, "explain": _explain(model, x)}
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, mode=mode)
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.05, fused=True)  # as on a GPU
    for _ in range(steps):
        _train_step(compiled, optimizer, x, y)
    result["counters"] = {
        "frames_ok": counters["frames"]["ok"], "unique_graphs": counters["stats"]["unique_graphs"],
        "graph_breaks": sum(counters["graph_break"].values()),
        "recompiles": sum(counters["recompiles"].values()),
        "cudagraph_skips": counters["inductor"]["cudagraph_skips"],
    }
    result["step"] = _profile_step(lambda: _train_step(compiled, optimizer, x, y))
    return result


# --- the command ---------------------------------------------------------------------------------


def _print_compiled(result: dict[str, Any]) -> None:
    ex, c, step = result["explain"], result["counters"], result["step"]
    print(f"\ncompiled training step: {result['config']} (depth {result['depth']}), batch "
          f"{result['batch']}, torch.compile(mode={result['mode']!r}), fp32 on the CPU")
    print(f"  torch._dynamo.explain(model): {ex['graphs']} graph, {ex['graph_breaks']} graph "
          f"breaks, {ex['ops_in_graphs']} ops in the graph")
    print(f"  after the steps: frames compiled {c['frames_ok']}, unique graphs "
          f"{c['unique_graphs']}, graph breaks {c['graph_breaks']}, recompiles "
          f"{c['recompiles']}, CUDA graphs skipped {c['cudagraph_skips']} (none on a CPU)")
    outside = step["aten_top_outside_graphs"]
    print(f"  one profiled step: {step['compiled_forward_calls']} call into the compiled "
          f"forward, {step['compiled_backward_calls']} into the compiled backward; top-level "
          "aten ops outside them: " + ", ".join(f"{k} {v}" for k, v in outside.items()))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", default="32,128,512", help="batch sizes of the augmentation")
    p.add_argument("--ks", default="1,2,4,8", help="data.aug_batches values")
    p.add_argument("--k-batch", type=int, default=128, help="batch size for the K rows")
    p.add_argument("--randaug", default="2,9", help="RandAugment ops,strength (as today's GPU "
                   "recipe configs/cifar10_gpu_5min.yaml)")
    p.add_argument("--config", type=Path, default=ROOT / "configs/cifar10_gpu_5min_light.yaml",
                   help="the CIFAR config whose model is compiled")
    p.add_argument("--compile-mode", default="reduce-overhead")
    p.add_argument("--step-batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=3, help="compiled steps before the profiled one")
    p.add_argument("--depth", type=int, default=None, help="override the model's depth (tests)")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled step")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    info = machine_info(torch.device("cpu"), command_line(__file__, sys.argv[1:] if argv is None
                                                          else argv))
    print(format_header(info))
    randaug = tuple(int(v) for v in parse_list(args.randaug))
    result: dict[str, Any] = {"machine": info, "randaug": randaug}
    result["augmentation"] = augmentation_counts([int(b) for b in parse_list(args.batches)],
                                                 randaug)
    print(f"\naugmentation call, RandAugment {randaug[0]}x{randaug[1]}, 32 px:")
    print(format_table(result["augmentation"], [
        Column("batch", "batch"), Column("aten", "aten ops"), Column("top", "top-level"),
        Column("leaf", "leaves"), Column("per_image", "aten per image", ".2f"),
        Column("device_ops", "device ops"), Column("host_ops", "host ops"),
        Column("device_per_image", "device ops per image", ".2f"),
        Column("draws_aten", "draws (host)")]))
    result["aug_batches"] = aug_batches_counts([int(k) for k in parse_list(args.ks)],
                                               args.k_batch, randaug)
    print(f"\nMemoryLoader(aug_batches=K), batch {args.k_batch}: one call augments K batches")
    print(format_table(result["aug_batches"], [
        Column("K", "K"), Column("aten", "aten ops per call"), Column("top", "top-level"),
        Column("leaf", "leaves"), Column("per_image", "aten per image", ".2f"),
        Column("device_ops", "device ops"), Column("host_ops", "host ops"),
        Column("device_per_image", "device ops per image", ".2f")]))
    if not args.no_compile:
        result["compiled_step"] = compiled_step(args.config, mode=args.compile_mode,
                                                batch=args.step_batch, steps=args.steps,
                                                depth=args.depth)
        _print_compiled(result["compiled_step"])
    info["loadavg_end"] = load_average()
    if args.json:
        write_json(args.json, result)
        print(f"\nwrote {args.json}")
    return result


if __name__ == "__main__":
    run_cli(main)
