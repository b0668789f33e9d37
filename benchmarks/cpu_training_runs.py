"""The CPU training runs behind benchmarks/RESULTS.md: CIFAR-10 for 1 and 4 epochs, then the
fine-tuning demonstration (CIFAR-10 pretraining -> flower photos, against flowers from scratch).

    python benchmarks/cpu_training_runs.py --cifar /tmp/data/cifar10 --flowers /tmp/data/flowers \
        --out runs/bench --json benchmarks/results/cpu_training_runs.json

Each run goes through the same `vit.training.trainer.train` as `python train.py`; the script only chains
them and collects metrics.jsonl into one JSON.
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
from vit.training.trainer import train

if not __package__:  # run as `python benchmarks/cpu_training_runs.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import machine_info

ROOT = Path(__file__).resolve().parent.parent


def run(name: str, config: Path | None, overrides: list[str], out: Path) -> dict:
    start = time.time()
    cfg = load_config(config, [*overrides, f"train.output={out / name}"])
    summary = train(cfg, show_progress=False)
    return {"name": name, "config": str(config) if config else None, "overrides": overrides,
            "wall_s": time.time() - start, "best_top1": summary.best_top1,
            "epochs": read_jsonl(summary.run_dir / "metrics.jsonl"),
            "run_dir": str(summary.run_dir)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cifar", type=Path, required=True, help="folder holding train/<class>/...")
    p.add_argument("--flowers", type=Path, required=True, help="folder holding train/<class>/...")
    p.add_argument("--out", type=Path, default=Path("runs/bench"))
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--cifar-epochs", type=int, default=4)
    p.add_argument("--flowers-epochs", type=int, default=10)
    p.add_argument("--skip-cifar-1", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cifar_cfg = ROOT / "configs" / "cifar10_vit_nano_cpu.yaml"
    results = {"machine": machine_info(torch.device("cpu"), " ".join(sys.argv)), "runs": []}

    def save() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2))

    if not args.skip_cifar_1:
        results["runs"].append(run("cifar_1epoch", cifar_cfg,
                                   [f"data.root={args.cifar}", "train.epochs=1"], args.out))
        save()
    cifar = run(f"cifar_{args.cifar_epochs}epochs", cifar_cfg,
                [f"data.root={args.cifar}", f"train.epochs={args.cifar_epochs}"], args.out)
    results["runs"].append(cifar)
    save()
    flowers_cfg = ROOT / "configs" / "flowers_vit_nano_cpu.yaml"
    flowers = [f"data.root={args.flowers}", f"train.epochs={args.flowers_epochs}"]
    results["runs"].append(run("flowers_scratch", flowers_cfg, flowers, args.out))
    save()
    pretrained = Path(cifar["run_dir"]) / "best.pt"
    results["runs"].append(run("flowers_finetune", flowers_cfg,
                               [*flowers, f"train.pretrained={pretrained}"], args.out))
    save()
    for r in results["runs"]:
        print(f"{r['name']:18s} best top-1 {r['best_top1']:.2f}%  wall {r['wall_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
