"""Time from `vit train` to the first training step, on a first and a later run of a folder.

    python benchmarks/startup.py                      # 40 files and 20,000 files
    python benchmarks/startup.py --files 40 2000      # a quick look

Writes folders of photo-sized JPEGs (``--size`` 320x240, ``--classes`` classes; 64 distinct
images, repeated under new names) into a temporary folder that is deleted at the end, with the
pre-flight cache (``VIT_CACHE_DIR``) in it too. For every folder size it runs ``vit train``
twice in a fresh Python process (``--batch-size 32 --workers 2 --device cpu``, the default tiny
model): the first run finds no cache, the second finds the one the first wrote. The time is
from starting the process to the end of the first training step (a patched step prints the
time and ends the process), so it holds interpreter start, imports, the folder scan, the
pre-flight check, the split, the model, the loader workers and the first batch.

Two parts are reported apart, being less noisy on a shared machine: from the start of
the data source's ``prepare`` to the first step (no interpreter start, no imports), and the data source's ``prepare``
itself (scan, check, split). The smallest folder measures the fixed cost; the cost per file is
``(time(N files) - time(smallest)) / (N - smallest)``, extrapolated to ImageNet's 1.28M files.
The files were just written, so they are in the page cache: on cold disks or network storage
the first run's header reads cost more (one small read at each end of every file).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import command_line, format_header, load_average, machine_info, write_json

IMAGENET_FILES = 1_281_167

# Runs `vit train` and ends the process after the first training step, printing the time.
DRIVER = """
import os, sys, time
import vit.training.epoch as epoch
import vit.data.sources as sources
for source in sources.registered_sources():
    def prepare(self, *a, _real=source.prepare, **k):
        start = time.perf_counter()
        print("SETUP_START", time.time(), flush=True)
        out = _real(self, *a, **k)
        print("PREPARE", time.perf_counter() - start, flush=True)
        return out
    source.prepare = prepare
real = epoch._Steps.batch
def first(self, *a, **k):
    out = real(self, *a, **k)
    print("FIRST_STEP", time.time(), flush=True)
    os._exit(0)
epoch._Steps.batch = first
from vit.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _jpegs(count: int, size: tuple[int, int]) -> list[bytes]:
    """``count`` distinct photo-like JPEGs: smooth colour fields with grain."""
    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for _ in range(count):
        a, b, c = rng.uniform(0, 6.28, 3)
        img = np.stack([127 + 100 * np.sin(xx / (20 + 30 * rng.random()) + a),
                        127 + 100 * np.sin(yy / (15 + 30 * rng.random()) + b),
                        127 + 100 * np.sin((xx + yy) / (25 + 30 * rng.random()) + c)], -1)
        img += rng.normal(0, 12, img.shape)
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def write_folder(root: Path, files: int, classes: int, images: list[bytes]) -> Path:
    for c in range(classes):
        (root / f"class_{c:02d}").mkdir(parents=True)
    for i in range(files):
        (root / f"class_{i % classes:02d}" / f"{i:07d}.jpg").write_bytes(images[i % len(images)])
    return root


def time_to_first_step(data: Path, run: Path, cache: Path, workers: int
                       ) -> tuple[float, float, float]:
    """Seconds from the command to the first step, in the source's prepare, and from its start
    to the first step (no interpreter start or imports)."""
    env = {**os.environ, "VIT_CACHE_DIR": str(cache)}
    argv = [sys.executable, "-c", DRIVER, "train", "--data", str(data), "--output", str(run),
            "--batch-size", "32", "--epochs", "1", "--device", "cpu", "--workers", str(workers),
            "--quiet", "train.explain_samples=0"]
    start = time.time()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    stamps = {line.split()[0]: float(line.split()[1]) for line in proc.stdout.splitlines()
              if line.startswith(("FIRST_STEP", "PREPARE", "SETUP_START"))}
    if "FIRST_STEP" not in stamps:
        raise RuntimeError(f"no training step (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return (stamps["FIRST_STEP"] - start, stamps["PREPARE"],
            stamps["FIRST_STEP"] - stamps["SETUP_START"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, nargs="+", default=[40, 20_000],
                   help="folder sizes; the smallest gives the fixed cost")
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--size", type=int, nargs=2, default=[320, 240], metavar=("W", "H"))
    p.add_argument("--workers", type=int, default=2, help="loader workers of vit train")
    p.add_argument("--json", metavar="FILE", help="write the results here")
    args = p.parse_args(argv)
    import torch

    info = machine_info(torch.device("cpu"), command_line(__file__, sys.argv[1:]))
    print(format_header(info))
    images = _jpegs(64, tuple(args.size))
    tmp = Path(tempfile.mkdtemp(prefix="vit_startup_"))
    rows = []
    try:
        for n in sorted(args.files):
            data = write_folder(tmp / f"data_{n}", n, args.classes, images)
            row: dict = {"files": n}
            for kind, run in (("first", "a"), ("later", "b")):
                total, prep, setup = time_to_first_step(data, tmp / f"run_{n}_{run}",
                                                        tmp / "cache", args.workers)
                row.update({f"{kind}_run_s": total, f"{kind}_prepare_s": prep,
                            f"{kind}_setup_s": setup})
            rows.append(row)
            print(f"{n:>9,} files: " + ", ".join(
                f"{kind} run {row[kind + '_run_s']:6.2f} s (from prepare_data "
                f"{row[kind + '_setup_s']:.2f} s, in it {row[kind + '_prepare_s']:.2f} s)"
                for kind in ("first", "later")), flush=True)
            shutil.rmtree(data)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = rows[0]
    for row in rows[1:]:
        extra = row["files"] - base["files"]
        for kind in ("first", "later"):
            per_file = (row[f"{kind}_run_s"] - base[f"{kind}_run_s"]) / extra
            row[f"{kind}_ms_per_file"] = 1e3 * per_file
            row[f"{kind}_imagenet_s"] = base[f"{kind}_run_s"] + per_file * IMAGENET_FILES
            for part in ("prepare", "setup"):
                cost = (row[f"{kind}_{part}_s"] - base[f"{kind}_{part}_s"]) / extra
                row[f"{kind}_{part}_ms_per_file"] = 1e3 * cost
                row[f"{kind}_{part}_imagenet_s"] = base[f"{kind}_{part}_s"] + cost * IMAGENET_FILES
        for kind in ("first", "later"):
            print(f"{row['files']:>9,} files, {kind} run, ms per file beyond the fixed cost: "
                  f"command to step {row[kind + '_ms_per_file']:.4f}, prepare to step "
                  f"{row[kind + '_setup_ms_per_file']:.4f}, in prepare "
                  f"{row[kind + '_prepare_ms_per_file']:.4f}; 1.28M files: command to step "
                  f"{row[kind + '_imagenet_s']:.0f} s, prepare to step "
                  f"{row[kind + '_setup_imagenet_s']:.0f} s")
    info["loadavg_end"] = load_average()
    print(f"load average at the end: {info['loadavg_end']}")
    if args.json:
        write_json(args.json, {"machine": info, "rows": rows})
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
