"""Do the defaults fit the data? Today's fixed ImageNet-style defaults against the defaults
chosen from the data (vit/training/defaults.py), same model, same epochs, same images.

    python benchmarks/defaults_fit.py --json benchmarks/results/defaults_fit_cpu.json

Two small folders, unpacked from /work/shared/data (see its README) into a temporary folder:

- ``cifar``: 2,000 CIFAR-10 training images (200 per class, 32 px) in train/ and 500 others in
  val/, trained as `python train.py --data DIR --model vit_nano_patch4_32 --epochs 3`;
  ``cifar_tiny`` is the same with `--model vit_tiny_patch4_32`, the command of issue 15 (18.8%
  with the old defaults), 6x slower on a CPU;
- ``photos``: 300 flower photos (60 per class, 5 classes) in train/ and 150 in val/, trained with
  the README's CPU photo recipe, `--config configs/photos_cpu.yaml`.

"before" sets the old defaults explicitly (batch 128, RandomResizedCrop area 0.08-1, RandAugment
2 ops at 9, drop path 0.1); "after" leaves them unset. Both use the same loader workers, so
only the recipe differs. Prints one table and writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from vit.config import load_config
from vit.io import read_jsonl
from vit.training.trainer import train

if not __package__:  # run as `python benchmarks/defaults_fit.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import format_header, machine_info, write_json

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path("/work/shared/data")
OLD_DEFAULTS = ["train.batch_size=128", "data.scale=[0.08,1.0]", "data.randaug_n=2",
                "data.randaug_m=9", "model.drop_path_rate=0.1"]
CASES = {
    "cifar": dict(archive="cifar10-train.tar.gz", train=200, val=50, config=None,
                  flags=["model.name=vit_nano_patch4_32", "train.epochs=3"]),
    "cifar_tiny": dict(archive="cifar10-train.tar.gz", train=200, val=50, config=None,
                       flags=["model.name=vit_tiny_patch4_32", "train.epochs=3"]),
    "photos": dict(archive="flowers256-train.tar", train=60, val=30,
                   config=ROOT / "configs" / "photos_cpu.yaml", flags=[]),
}


def unpack_subset(archive: Path, dest: Path, *, train: int, val: int) -> Path:
    """The first ``train`` + ``val`` images of each class (in archive order) as
    dest/train/<class>/ and dest/val/<class>/."""
    taken: dict[str, int] = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3 or parts[-3] != "train":
                continue
            cls = parts[-2]
            n = taken.get(cls, 0)
            if n >= train + val:
                continue
            split = "train" if n < train else "val"
            target = dest / split / cls / parts[-1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
            taken[cls] = n + 1
    return dest


def run_case(name: str, case: dict, data: Path, out: Path, variant: str, workers: int) -> dict:
    overrides = [*case["flags"], f"data.root={data}", f"data.workers={workers}",
                 "train.device=cpu", "train.explain_samples=0", f"train.output={out / variant}",
                 *(OLD_DEFAULTS if variant == "before" else [])]
    start = time.time()
    summary = train(load_config(case["config"], overrides), show_progress=False)
    epochs = read_jsonl(summary.run_dir / "metrics.jsonl")
    resolved = load_config(summary.run_dir / "config.yaml")
    return {"case": name, "variant": variant, "overrides": overrides,
            "wall_s": round(time.time() - start, 1), "best_top1": summary.best_top1,
            "last_top1": epochs[-1]["val_top1"], "first_train_loss": epochs[0]["train_loss"],
            "last_train_loss": epochs[-1]["train_loss"],
            "batch_size": resolved.train.batch_size, "scale": resolved.data.scale,
            "randaug": [resolved.data.randaug_n, resolved.data.randaug_m],
            "drop_path_rate": resolved.model.drop_path_rate}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shared", type=Path, default=SHARED, help="folder with the archives")
    p.add_argument("--cases", default="cifar,photos",
                   help=f"comma-separated, of {', '.join(CASES)}")
    p.add_argument("--workers", type=int, default=1, help="loader processes, both variants")
    p.add_argument("--epochs", type=int, default=None,
                   help="override every case's epochs (a smaller budget on a busy machine)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    info = machine_info(torch.device("cpu"), " ".join(sys.argv))
    print(format_header(info))
    results = {"machine": info, "runs": []}
    with tempfile.TemporaryDirectory(prefix="defaults_fit_") as tmp:
        for name in args.cases.split(","):
            case = CASES[name]
            data = unpack_subset(args.shared / case["archive"], Path(tmp) / name,
                                 train=case["train"], val=case["val"])
            if args.epochs is not None:
                case = {**case, "flags": [*case["flags"], f"train.epochs={args.epochs}"]}
            for variant in ("before", "after"):
                row = run_case(name, case, data, Path(tmp) / "runs" / name, variant,
                               args.workers)
                results["runs"].append(row)
                print(json.dumps(row), flush=True)
                if args.json:  # after every run: a long benchmark keeps what it measured
                    write_json(args.json, results)
    print(f"\n{'case':<8} {'variant':<7} {'batch':>5} {'scale':>11} {'randaug':>8} "
          f"{'drop':>5} {'loss first->last':>17} {'best top-1':>10} {'wall':>7}")
    for r in results["runs"]:
        print(f"{r['case']:<8} {r['variant']:<7} {r['batch_size']:>5} {str(r['scale']):>11} "
              f"{str(r['randaug']):>8} {r['drop_path_rate']:>5} "
              f"{r['first_train_loss']:>7.3f} -> {r['last_train_loss']:<7.3f} "
              f"{r['best_top1']:>9.2f}% {r['wall_s']:>6.0f}s")


if __name__ == "__main__":
    main()
