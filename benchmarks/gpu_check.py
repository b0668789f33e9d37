"""Does mixed-precision training work on this device? Short real runs, each checked.

    python benchmarks/gpu_check.py --data /tmp/data --device cuda --json gpu_check.json

On a class-balanced subset of an image folder (CIFAR-10 by default; ``--per-class`` images of
each class, linked into a temporary folder), ``vit.training.trainer.train`` runs ``--epochs`` epochs of
``vit_tiny_patch4_32`` once per combination of precision (bf16; fp16 with a GradScaler) and input
pipeline (albumentations with loader workers; memory), exactly as ``python train.py`` would.
Each run must end with

    falling loss     the last epoch's mean training loss below the first's, all finite
    few skips        fp16: skipped (overflowing) steps only in epoch 1, while the GradScaler
                     calibrates its scale (at most ``--max-calibration-skips``); none after

Then, on the checkpoint of the first run:

    GPU -> CPU       ``best.pt`` loaded on the CPU gives the same top-1 labels as on the GPU
                     (both fp32) for a fixed batch of held-out images; bf16 agreement is shown
    explanations     attention rollout and gradient rollout on the GPU, called plainly and
                     inside a bf16 autocast (which they switch off), against the CPU maps:
                     relative error ||gpu - cpu|| / ||cpu|| below 1e-3

Every check prints PASS or FAIL with its numbers; the exit status is 1 if any failed.
``--device cpu --per-class 20 --epochs 2`` rehearses the whole script on a CPU in a minute.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from vit.config import load_config
from vit.data.folders import resolve_data_dirs, scan_folder
from vit.explain import attention_rollout, gradient_rollout
from vit.inference.classifier import Classifier
from vit.io import read_jsonl
from vit.runtime import resolve_device
from vit.training.trainer import train

if not __package__:  # run as `python benchmarks/gpu_check.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import command_line, format_header, machine_info, run_cli, write_json

CIFAR_NORM = ["data.mean=[0.4914,0.4822,0.4465]", "data.std=[0.2470,0.2435,0.2616]"]
RUNS = (("bf16", "memory"), ("bf16", "albumentations"), ("fp16", "memory"),
        ("fp16", "albumentations"))


def link_subset(source: Path, dest: Path, *, per_class: int) -> Path:
    """``dest/<class>/<image>`` symlinks to the first ``per_class`` images of every class."""
    train_dir, _ = resolve_data_dirs(source)
    scan = scan_folder(train_dir)
    taken: dict[int, int] = {}
    for path, target in scan.samples:
        if taken.get(target, 0) >= per_class:
            continue
        taken[target] = taken.get(target, 0) + 1
        out = dest / scan.classes[target] / Path(path).name
        out.parent.mkdir(parents=True, exist_ok=True)
        out.symlink_to(Path(path).resolve())
    return dest


def train_run(data: Path, out: Path, *, precision: str, pipeline: str, device: str, epochs: int,
              workers: int, batch_size: int, extra: list[str]) -> dict[str, Any]:
    """One short training run; returns its per-epoch records and the verdicts."""
    cfg = load_config(None, [
        f"data.root={data}", f"train.output={out}", f"train.device={device}",
        f"train.precision={precision}", f"data.pipeline={pipeline}", f"data.workers={workers}",
        "model.name=vit_tiny_patch4_32", f"train.epochs={epochs}", f"train.batch_size={batch_size}",
        "train.lr=1e-3", "train.warmup_epochs=1", "data.scale=[0.35,1.0]",
        "train.explain_samples=0", *CIFAR_NORM, *extra])
    start = time.perf_counter()
    summary = train(cfg, show_progress=False)
    records = read_jsonl(summary.run_dir / "metrics.jsonl")
    losses = [r["train_loss"] for r in records]
    skips = [r.get("skipped_steps", 0) for r in records]
    return {"precision": precision, "pipeline": pipeline, "wall_s": time.perf_counter() - start,
            "losses": losses, "skipped_steps": skips, "val_top1": [r["val_top1"] for r in records],
            "images_per_s": [r["images_per_s"] for r in records], "run_dir": str(summary.run_dir)}


def judge_run(run: dict[str, Any], *, max_calibration_skips: int) -> list[tuple[str, bool, str]]:
    losses, skips = run["losses"], run["skipped_steps"]
    name = f"{run['precision']} {run['pipeline']}"
    falling = all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    checks = [(f"{name}: loss falls", falling,
               " -> ".join(f"{v:.3f}" for v in losses))]
    if run["precision"] == "fp16":
        ok = skips[0] <= max_calibration_skips and not any(skips[1:])
        checks.append((f"{name}: skipped steps only while calibrating", ok,
                       f"per epoch {skips}"))
    return checks


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def gpu_to_cpu(checkpoint: Path, images: list[Path], device: torch.device
               ) -> list[tuple[str, bool, str]]:
    """Top-1 labels of the same files from the checkpoint on ``device`` and on the CPU."""
    on_cpu = Classifier.from_checkpoint(checkpoint, device="cpu")
    on_dev = Classifier.from_checkpoint(checkpoint, device=device)
    mixed_precision = on_dev.precision
    cpu_labels = on_cpu.predict_proba(images).argmax(1)
    mixed = on_dev.predict_proba(images).argmax(1).cpu()
    on_dev.precision = "fp32"
    p_dev = on_dev.predict_proba(images)
    same = (p_dev.argmax(1).cpu() == cpu_labels).float().mean().item()
    return [(f"checkpoint from {device} on the CPU: same top-1 labels (fp32)", same == 1.0,
             f"{100 * same:.2f}% of {len(images)} images agree, probabilities' relative error "
             f"{relative_error(p_dev, on_cpu.predict_proba(images)):.1e}; {mixed_precision} on "
             f"{device}: {100 * (mixed == cpu_labels).float().mean().item():.2f}% agree")]


def explanations(checkpoint: Path, images: list[Path], device: torch.device
                 ) -> list[tuple[str, bool, str]]:
    """Rollout and gradient rollout on ``device`` (plain, inside bf16 autocast) against the CPU."""
    on_cpu = Classifier.from_checkpoint(checkpoint, device="cpu")
    on_dev = Classifier.from_checkpoint(checkpoint, device=device)
    batch = on_cpu.transform(images)
    checks = []
    for name, method in (("rollout", attention_rollout), ("gradient rollout", gradient_rollout)):
        reference = method(on_cpu.model, batch)
        for precision in ("fp32", "bf16"):  # explanations switch an outer autocast off
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                maps = method(on_dev.model, batch.to(device))
            err = relative_error(maps.float(), reference)
            ok = maps.device.type == device.type and bool(torch.isfinite(maps).all()) and err < 1e-3
            checks.append((f"{name} on {device} (inside {precision} autocast) matches the CPU",
                           ok, f"relative error {err:.1e} (tolerance 1e-3)"))
    return checks


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="image folder, e.g. CIFAR-10's")
    p.add_argument("--device", default="cuda")
    p.add_argument("--per-class", type=int, default=1000, help="images per class in the subset")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workers", type=int, default=8, help="loader workers / decoding threads")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--max-calibration-skips", type=int, default=20)
    p.add_argument("--images", type=int, default=256, help="held-out images for the label check")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("overrides", nargs="*", help="key=value for every run")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    device = resolve_device(args.device)
    info = machine_info(device, command_line(__file__, argv))
    print(format_header(info), flush=True)
    results: dict[str, Any] = {"machine": info, "runs": [], "checks": []}
    with tempfile.TemporaryDirectory(prefix="vit-gpu-check-") as tmp:
        data = link_subset(args.data, Path(tmp) / "data", per_class=args.per_class)
        for precision, pipeline in RUNS:
            if precision == "fp16" and device.type != "cuda":
                continue  # fp16 autocast training is a GPU feature (the CLI refuses it on CPU)
            run = train_run(data, Path(tmp) / f"{precision}-{pipeline}", precision=precision,
                            pipeline=pipeline, device=args.device, epochs=args.epochs,
                            workers=args.workers, batch_size=args.batch_size,
                            extra=args.overrides)
            results["runs"].append(run)
            results["checks"] += judge_run(run, max_calibration_skips=args.max_calibration_skips)
            _report(results["checks"][-2:] if precision == "fp16" else results["checks"][-1:],
                    extra=f"  ({run['wall_s']:.1f} s, {run['images_per_s'][-1]:.0f} img/s, "
                          f"top-1 {run['val_top1'][-1]:.1f}%)")
        first = Path(results["runs"][0]["run_dir"]) / "best.pt"
        split = json.loads((first.parent / "split.json").read_text())
        held_out = [Path(f) for f in split["val_files"][:args.images]]
        for check in gpu_to_cpu(first, held_out, device) + explanations(first, held_out[:32], device):
            results["checks"].append(check)
            _report([check])
    results["passed"] = all(ok for _, ok, _ in results["checks"])
    results["checks"] = [{"check": n, "passed": ok, "detail": d} for n, ok, d in results["checks"]]
    if args.json:
        write_json(args.json, results)
    print(f"{sum(c['passed'] for c in results['checks'])}/{len(results['checks'])} checks passed")
    if not results["passed"]:
        raise SystemExit(1)
    return results


def _report(checks: list[tuple[str, bool, str]], extra: str = "") -> None:
    for name, ok, detail in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}{extra}", flush=True)


if __name__ == "__main__":
    run_cli(main)
