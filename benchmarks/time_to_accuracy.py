"""Accuracy against wall time for shipped training recipes: one run per config, a table and a PNG.

    python benchmarks/time_to_accuracy.py --data /tmp/data/cifar10 \
        --config configs/cifar10_cpu_5min.yaml --config configs/cifar10_cpu_30min.yaml \
        --out runs/tta --json benchmarks/results/time_to_accuracy_cpu.json \
        --png benchmarks/results/time_to_accuracy_cpu.png

Each run is `vit.training.trainer.train` exactly as `python train.py --config ...` runs it, including
the allocator setting the CLI applies at start-up (without it the CPU runs here were 1.3-1.6x
slower). Time is wall time from the start of the call (scanning, decoding, every evaluation
included) to the end of each epoch, read from the ``elapsed_s`` field of metrics.jsonl. ``--budget-min`` adds a line
at that time to the plot and reports the best accuracy reached within it. Extra ``key=value``
overrides (e.g. ``train.device=cuda``) apply to every run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from vit.config import load_config
from vit.io import read_jsonl
from vit.plots import plot_accuracy_vs_time
from vit.training.trainer import train

if not __package__:  # run as `python benchmarks/time_to_accuracy.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (
    command_line,
    format_header,
    load_average,
    machine_info,
    pin_malloc,
    run_cli,
)


def run_config(config: Path, *, data: Path, out: Path, overrides: list[str]) -> dict:
    """Train one config; returns its wall time and the per-epoch records."""
    start = time.perf_counter()
    cfg = load_config(config, [f"data.root={data}", f"train.output={out / config.stem}",
                               *overrides])
    summary = train(cfg, show_progress=False)
    records = read_jsonl(summary.run_dir / "metrics.jsonl")
    return {"config": str(config), "overrides": overrides, "wall_s": time.perf_counter() - start,
            "best_top1": summary.best_top1, "final_top1": records[-1]["val_top1"],
            "model": cfg.model.name, "epochs": records, "run_dir": str(summary.run_dir)}


def best_within(records: list[dict], seconds: float) -> float | None:
    """The best validation top-1 among epochs that ended within ``seconds`` of the start."""
    inside = [r["val_top1"] for r in records if r["elapsed_s"] <= seconds]
    return max(inside) if inside else None


def table(runs: list[dict], budgets: list[float]) -> str:
    head = ["config", "epochs", "wall", "final top-1", "best top-1",
            *[f"best within {b:g} min" for b in budgets]]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in runs:
        within = [best_within(r["epochs"], 60 * b) for b in budgets]
        cells = [Path(r["config"]).name, str(len(r["epochs"])), f"{r['wall_s'] / 60:.1f} min",
                 f"{r['final_top1']:.2f}%", f"{r['best_top1']:.2f}%",
                 *["-" if w is None else f"{w:.2f}%" for w in within]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(runs: list[dict], budgets: list[float], path: Path, title: str) -> None:
    series = {Path(r["config"]).stem: [(e["elapsed_s"], e["val_top1"]) for e in r["epochs"]]
              for r in runs}
    plot_accuracy_vs_time(series, path, title=title, budgets_s=[60 * b for b in budgets])


def main(argv: list[str] | None = None) -> dict:
    """Train every config, print the table; returns what ``--json`` writes."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="image folder (DIR/<class>/... or DIR/train/...)")
    p.add_argument("--config", type=Path, action="append", required=True, help="repeatable")
    p.add_argument("--out", type=Path, default=Path("runs/tta"))
    p.add_argument("--budget-min", type=float, action="append", default=None,
                   help="time budgets in minutes to report (repeatable; default 5 and 30)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--png", type=Path, default=None)
    p.add_argument("overrides", nargs="*", help="key=value applied to every run")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    budgets = args.budget_min or [5.0, 30.0]
    pin_malloc()  # what `python train.py` does at start-up (vit.runtime.keep_freed_memory)
    device = torch.device("cuda" if any(o.startswith("train.device=cuda") for o in args.overrides)
                          else "cpu")
    results = {"machine": machine_info(device, command_line(__file__, argv)),
               "budgets_min": budgets, "runs": []}
    for config in args.config:
        results["runs"].append(run_config(config, data=args.data, out=args.out,
                                          overrides=args.overrides))
        if args.json:  # after every run: a crash later keeps what finished
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2))
    results["machine"]["loadavg_end"] = load_average()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(format_header(results["machine"]))
    print(table(results["runs"], budgets))
    if args.png:
        m = results["machine"]
        plot(results["runs"], budgets, args.png,
             f"CIFAR-10 top-1 vs wall time - {m.get('gpu') or m.get('cpu')}, torch {m.get('torch')}")
    return results


if __name__ == "__main__":
    run_cli(main)
