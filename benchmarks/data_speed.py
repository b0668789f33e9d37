"""Images per second through the data pipeline, and how much of a training step waits for data.

    mkdir -p /tmp/data && tar -xzf /work/shared/data/cifar10-train.tar.gz -C /tmp/data
    mkdir -p /tmp/data/flowers
    tar -xf /work/shared/data/flowers256-train.tar -C /tmp/data/flowers
    python benchmarks/data_speed.py --cifar /tmp/data --flowers /tmp/data/flowers --json out.json

Each folder may be the image folder itself (``<class>/<image>``) or hold ``train/<class>/...``.
A fixed random subset of ``--limit`` images goes through, per data set (CIFAR-10 JPEGs with the
32 px pipeline, flower photos with the 224 px one):

    decode              vit.data.images.load_image, in this process
    train augment       the training transform alone (random resized crop, flip, RandAugment,
                        normalise)
    decode + train      both: what one loader worker does per image
    decode + eval       load_image + the evaluation transform (resize, centre crop, normalise)
    loader, N workers   ImageFolderDataset through vit.data.loader.build_loader, after the first batch
    memory: decode once vit.decode_images (the one-off cost of data.pipeline=memory)
    memory: augment     vit.BatchAugment on whole batches on --device (crop, flip,
                        RandAugment, normalise), timed with device events

and then ``vit.training.epoch.train_one_epoch`` runs ``--train-batches`` batches on a tiny model while the
loader is timed: "data wait" is the time blocked in ``next(loader)``, as a share of the loop's
time (the first batch, which includes starting the workers, is left out and shown apart). The
loop runs once per ``--train-workers`` count with the worker pipeline and once with
``data.pipeline=memory`` (workers "mem").
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vit.data.dataset import ImageFolderDataset
from vit.data.folders import resolve_data_dirs, scan_folder
from vit.data.images import load_image
from vit.data.loader import build_loader, set_epoch
from vit.data.memory import BatchAugment, MemoryLoader, decode_images
from vit.data.transforms import build_transform
from vit.models.presets import create_model
from vit.training.epoch import EpochOptions, EpochStart, StepParts, train_one_epoch

if not __package__:  # run as `python benchmarks/data_speed.py`: make `benchmarks` importable
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
    run_cli,
    time_call,
    write_json,
)

Samples = list[tuple[str, int]]  # (image path, class index)


@dataclass(frozen=True)
class Pipeline:
    """A data set's image size and the tiny model and batch its training loop uses."""

    img_size: int
    batch: int
    model: str
    model_overrides: dict[str, Any] = field(default_factory=dict)

    def model_label(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in self.model_overrides.items())
        return self.model + extra


PIPELINES = {
    "cifar": Pipeline(img_size=32, batch=128, model="vit_nano_patch4_32"),
    "flowers": Pipeline(img_size=224, batch=32, model="vit_tiny_patch16_224",
                        model_overrides={"depth": 4}),
}

STAGE_COLUMNS = (
    Column("dataset", "dataset"),
    Column("stage", "stage"),
    Column("workers", "workers"),
    Column("images", "images"),
    Column("img_s", "img/s", ".1f"),
    Column("img_s_per_worker", "img/s/worker", ".1f"),
    Column("ms_per_img", "ms/img", ".2f"),
)
TRAIN_COLUMNS = (
    Column("dataset", "dataset"),
    Column("model", "model"),
    Column("batch", "batch"),
    Column("workers", "workers"),
    Column("batches", "batches"),
    Column("first_batch_s", "first batch s", ".2f"),
    Column("step_ms", "ms/batch", ".1f"),
    Column("wait_ms", "wait ms/batch", ".1f"),
    Column("wait_pct", "data wait %", ".1f"),
    Column("img_s", "img/s", ".1f"),
)


# --- data ---------------------------------------------------------------------------------------


def sample_subset(root: str | Path, *, limit: int, seed: int) -> tuple[Samples, list[str]]:
    """A fixed random subset of at most ``limit`` samples of the training images under ``root``."""
    train_dir, _ = resolve_data_dirs(root)
    scan = scan_folder(train_dir)
    samples, classes = scan.samples, scan.classes
    if limit < len(samples):
        samples = sorted(random.Random(seed).sample(samples, limit))
    return samples, classes


def stage_row(dataset: str, stage: str, workers: int, images: int, seconds: float
              ) -> dict[str, Any]:
    """A table row; ``workers=0`` means this process, counted as one for the per-worker rate."""
    if seconds <= 0:
        raise BenchmarkError(f"{dataset} {stage}: measured {seconds} s; use a larger --limit")
    rate = images / seconds
    return {"dataset": dataset, "stage": stage, "workers": workers, "images": images,
            "img_s": rate, "img_s_per_worker": rate / max(workers, 1),
            "ms_per_img": 1e3 * seconds / images, "seconds": seconds}


def time_stages(paths: Sequence[str], *, img_size: int, seed: int) -> dict[str, float]:
    """Seconds, summed over ``paths``, of decoding and of each transform (one process)."""
    train_tf = build_transform(img_size=img_size, train=True, seed=seed)
    eval_tf = build_transform(img_size=img_size, train=False)
    totals = {"decode": 0.0, "train augment": 0.0, "eval transform": 0.0}
    for path in paths:
        start = time.perf_counter()
        image = load_image(path)
        decoded = time.perf_counter()
        train_tf(image)
        augmented = time.perf_counter()
        eval_tf(image)
        totals["decode"] += decoded - start
        totals["train augment"] += augmented - decoded
        totals["eval transform"] += time.perf_counter() - augmented
    return totals


def single_process_rows(dataset: str, paths: Sequence[str], *, img_size: int, seed: int
                        ) -> list[dict[str, Any]]:
    t = time_stages(paths, img_size=img_size, seed=seed)
    stages = {
        "decode": t["decode"],
        "train augment": t["train augment"],
        "decode + train": t["decode"] + t["train augment"],
        "decode + eval": t["decode"] + t["eval transform"],
    }
    return [stage_row(dataset, stage, 0, len(paths), s) for stage, s in stages.items()]


def make_loader(samples: Samples, classes: Sequence[str], *, img_size: int,
                batch: int, workers: int, seed: int) -> torch.utils.data.DataLoader:
    """The training loader the trainer builds: train transform, shuffled, seeded."""
    transform = build_transform(img_size=img_size, train=True)
    dataset = ImageFolderDataset(samples, classes, transform, seed=seed)
    loader = build_loader(dataset, batch_size=batch, shuffle=True, drop_last=False,
                          workers=workers, seed=seed)
    set_epoch(loader, 0)
    return loader


def memory_pipeline(dataset: str, samples: Samples, *, img_size: int, batch: int, seed: int,
                    device: torch.device) -> tuple[list[dict[str, Any]], MemoryLoader]:
    """The data.pipeline=memory training loader (decoded once, augmented on ``device``) and the
    rows of its two stages: the one-off decode and the augmentation of one batch."""
    start = time.perf_counter()
    images, kept, _ = decode_images([p for p, _ in samples], size=img_size)
    decode_s = time.perf_counter() - start
    augment = BatchAugment(img_size=img_size, mean=(0.5,) * 3, std=(0.25,) * 3)
    loader = MemoryLoader(images.to(device), [samples[i][1] for i in kept],
                                   augment=augment, batch_size=batch, shuffle=True,
                                   drop_last=False, seed=seed)
    set_epoch(loader, 0)
    chunk = loader.images[:batch]
    counter = iter(range(10**9))

    def one_batch() -> None:
        augment(chunk, torch.Generator().manual_seed(next(counter)))

    one_batch()  # warm-up
    seconds = time_call(one_batch, device, iters=max(1, 2048 // chunk.shape[0]))
    rows = [stage_row(dataset, "memory: decode once", 0, len(samples), decode_s),
            stage_row(dataset, f"memory: augment ({device.type})", 0, chunk.shape[0], seconds)]
    return rows, loader


class TimedLoader:
    """Iterates over a loader of ``(x, y)`` batches (at most ``max_batches``), timing ``next()``.

    ``waits[i]`` is the time spent blocked fetching batch ``i``, ``handed[i]`` when it was handed
    over and ``sizes[i]`` its number of images; ``end`` is when the consumer came back after the
    last batch.
    """

    def __init__(self, loader: Iterable, max_batches: int | None = None):
        self.loader = loader
        self.max_batches = max_batches
        self.waits: list[float] = []
        self.handed: list[float] = []
        self.sizes: list[int] = []
        self.end = 0.0

    def __len__(self) -> int:
        n = len(self.loader)  # type: ignore[arg-type]
        return n if self.max_batches is None else min(n, self.max_batches)

    def __iter__(self) -> Iterator[Any]:
        self.waits, self.handed, self.sizes = [], [], []
        iterator = iter(self.loader)
        for _ in range(len(self)):
            start = time.perf_counter()
            batch = next(iterator, None)
            now = time.perf_counter()
            if batch is None:
                break
            self.waits.append(now - start)
            self.handed.append(now)
            self.sizes.append(len(batch[1]))
            yield batch
        self.end = time.perf_counter()

    def steady_state(self) -> tuple[float, float, int, int]:
        """(seconds, seconds waiting, batches, images) after the first batch."""
        if len(self.handed) < 2:
            raise BenchmarkError("need at least 2 batches to time the steady state; raise "
                                 "--limit or --train-batches")
        seconds = self.end - self.handed[0]
        return seconds, sum(self.waits[1:]), len(self.sizes) - 1, sum(self.sizes[1:])


def loader_row(dataset: str, samples: Samples, classes: Sequence[str], *,
               img_size: int, batch: int, workers: int, seed: int) -> dict[str, Any]:
    """Images/s through the loader alone (no model), after the first batch."""
    loader = TimedLoader(make_loader(samples, classes, img_size=img_size, batch=batch,
                                     workers=workers, seed=seed))
    for _ in loader:
        pass
    seconds, _, _, images = loader.steady_state()
    row = stage_row(dataset, "loader, train aug", workers, images, seconds)
    row["first_batch_s"] = loader.waits[0]
    return row


# --- training loop ------------------------------------------------------------------------------


def train_loop_row(dataset: str, loader: Iterable, *, classes: Sequence[str],
                   pipeline: Pipeline, batch: int, workers: int | str, batches: int, seed: int,
                   device: torch.device) -> dict[str, Any]:
    """Run ``train_one_epoch`` on a tiny model; how much of the loop is spent waiting for data."""
    torch.manual_seed(seed)
    model = create_model(pipeline.model, num_classes=len(classes),
                         **pipeline.model_overrides).to(device)
    timed = TimedLoader(loader, max_batches=batches)
    parts = StepParts(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-4),
                      criterion=nn.CrossEntropyLoss(), lr_at=lambda _step: 1e-4, device=device)
    train_one_epoch(parts=parts, loader=timed, start=EpochStart(num_batches=len(timed)),
                    options=EpochOptions(show_progress=False))
    seconds, waiting, measured, images = timed.steady_state()
    return {
        "dataset": dataset, "model": pipeline.model_label(), "batch": batch, "workers": workers,
        "batches": measured, "first_batch_s": timed.waits[0], "step_ms": 1e3 * seconds / measured,
        "wait_ms": 1e3 * waiting / measured, "wait_pct": 100 * waiting / seconds,
        "img_s": images / seconds,
    }


# --- the run ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cifar", default=None, help="CIFAR-10 image folder (32 px pipeline)")
    parser.add_argument("--flowers", default=None, help="flower photos folder (224 px pipeline)")
    parser.add_argument("--limit", type=int, default=1000, help="images per data set")
    parser.add_argument("--workers", default="0,1,2",
                        help="loader worker counts to time (0: in the main process)")
    parser.add_argument("--batch", type=int, default=None,
                        help="loader batch (default: 128 for CIFAR, 32 for flowers)")
    parser.add_argument("--train-batches", type=int, default=10,
                        help="batches of the training loop (0 skips it)")
    parser.add_argument("--train-workers", default="2", help="worker counts for the loop")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu",
                        help="where the training loop and the memory pipeline's augmentation run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write settings and results to this file")
    args = parser.parse_args(argv)
    if args.cifar is None and args.flowers is None:
        parser.error("give --cifar DIR and/or --flowers DIR (see the usage at the top of the file)")
    if args.limit < 2:
        parser.error("--limit must be at least 2")
    return args


def bench_dataset(name: str, root: str, args: argparse.Namespace
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pipeline-stage rows, training-loop rows) of one data set."""
    pipeline = PIPELINES[name]
    batch = args.batch or pipeline.batch
    samples, classes = sample_subset(root, limit=args.limit, seed=args.seed)
    print(f"{name}: {len(samples)} images, {len(classes)} classes", file=sys.stderr, flush=True)
    paths = [p for p, _ in samples]
    stages = single_process_rows(name, paths, img_size=pipeline.img_size, seed=args.seed)
    for workers in map(int, parse_list(args.workers)):
        stages.append(loader_row(name, samples, classes, img_size=pipeline.img_size, batch=batch,
                                 workers=workers, seed=args.seed))
    device = torch.device(args.device)
    memory_stages, memory = memory_pipeline(name, samples, img_size=pipeline.img_size,
                                            batch=batch, seed=args.seed, device=device)
    stages += memory_stages
    loops = []
    if args.train_batches > 0:
        common = dict(classes=classes, pipeline=pipeline, batch=batch,
                      batches=args.train_batches, seed=args.seed, device=device)
        for workers in map(int, parse_list(args.train_workers)):
            loader = make_loader(samples, classes, img_size=pipeline.img_size, batch=batch,
                                 workers=workers, seed=args.seed)
            loops.append(train_loop_row(name, loader, workers=workers, **common))
        loops.append(train_loop_row(name, memory, workers="mem", **common))
    return stages, loops


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the header and tables; returns what ``--json`` writes."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info(torch.device(args.device), command_line(__file__, argv))
    roots: dict[str, str] = {k: v for k, v in (("cifar", args.cifar), ("flowers", args.flowers))
                             if v is not None}
    stages: list[dict[str, Any]] = []
    loops: list[dict[str, Any]] = []
    for name, root in roots.items():
        s, loop = bench_dataset(name, root, args)
        stages += s
        loops += loop

    info["loadavg_end"] = load_average()
    print(format_header(info))
    print("workers 0 = in this process; loader rows leave out the first batch (worker start-up)\n")
    print(format_table(stages, STAGE_COLUMNS))
    if loops:
        print(f"\ntraining loop (vit.training.epoch.train_one_epoch, fp32, {args.device}), after the first "
              "batch; workers 'mem' = data.pipeline=memory:")
        print(format_table(loops, TRAIN_COLUMNS))
    payload = {"benchmark": "data_speed", "machine": info, "settings": vars(args),
               "data": roots, "stages": stages, "train_loop": loops}
    if args.json:
        write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    run_cli(main)
