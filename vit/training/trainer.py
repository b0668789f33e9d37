"""A whole training run: folder -> data -> model -> epochs -> files in the run folder.

    from vit.config import load_config
    from vit.training.trainer import train
    summary = train(load_config("configs/quickstart.yaml", ["data.root=data/shapes"]))

Files written to the run folder (rank 0 only): config.yaml, data_report.json, split.json,
metrics.jsonl, curves.png, last.pt, best.pt, and at the end overlays/ (attention rollout of
``train.explain_samples`` held-out images; 0: none).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vit.config import Config, to_dict, to_yaml
from vit.data import loader as loader_lib
from vit.data.dataset import ImageFolderDataset
from vit.data.folders import resolve_data_dirs, scan_folder
from vit.data.images import check_classes_readable, preflight
from vit.data.splits import (
    balanced_class_weights,
    build_data_report,
    class_counts,
    stratified_split,
)
from vit.data.transforms import build_transform, resolve_crop_pct
from vit.errors import ConfigError, DataError, VitError
from vit.io import (
    append_jsonl,
    atomic_save,
    atomic_write,
    make_output_dir,
    read_jsonl,
    remove_stale_temp_files,
    write_json,
)
from vit.models import checkpoint as ckpt_lib
from vit.models.vision_transformer import VisionTransformer, ViTConfig, create_model
from vit.runtime import make_grad_scaler, resolve_device, resolve_precision
from vit.training.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    broadcast_object,
    init_distributed,
)
from vit.training.epoch import evaluate, train_one_epoch
from vit.training.optim import build_optimizer, count_parameters, freeze_parameters, lr_at_step

logger = logging.getLogger(__name__)


class TrainingInterrupted(VitError):
    """Ctrl-C: a resumable last.pt was written; the message says how to resume."""


@dataclass(frozen=True)
class ResumePoint:
    """A run's last.pt, read once: by the CLI for the run's config, then by ``train``."""

    path: Path
    state: dict[str, Any]

    @classmethod
    def load(cls, run_dir_or_checkpoint: str | os.PathLike) -> ResumePoint:
        """``RUN_DIR`` (its last.pt) or a ``.pt`` file."""
        path = ckpt_lib.find_resume_checkpoint(run_dir_or_checkpoint)
        return cls(path=path, state=ckpt_lib.load_checkpoint(path, map_location="cpu"))


@dataclass
class TrainSummary:
    run_dir: Path
    best_top1: float | None
    last_metrics: dict[str, Any]
    epochs_done: int
    overlays: Path | None = None  # RUN/overlays, when train.explain_samples > 0


# --- the run folder ---------------------------------------------------------------------------


def default_run_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


# --- data -------------------------------------------------------------------------------------


@dataclass
class RunData:
    """The images of a run: classes, the split, and what was left out and why."""

    root: Path  # the training folder
    classes: list[str]
    train_samples: list[tuple[str, int]]
    val_samples: list[tuple[str, int]]
    split: dict[str, Any]  # what split.json records
    skipped: list[dict[str, str]] = field(default_factory=list)  # unreadable: path, reason
    ignored: list[str] = field(default_factory=list)  # files that are not images

    @property
    def train_targets(self) -> list[int]:
        return [t for _, t in self.train_samples]

    def report(self) -> dict[str, Any]:
        """What data_report.json holds."""
        return build_data_report(self.classes, self.train_samples, self.val_samples,
                                          self.skipped, self.ignored)


def prepare_data(cfg: Config) -> RunData:
    """Scan the image folder, pre-flight it and split it.

    The pre-flight check decodes every image once and skips the unreadable ones; the memory
    pipeline skips it, since decoding the images into memory is that check (``build_loaders``).
    """
    d = cfg.data
    if d.root is None:
        raise ConfigError("no data folder given: pass --data DIR (DIR/<class>/<image> or DIR/train/...)")
    check_images = d.preflight and d.pipeline != "memory"
    train_dir, val_dir = resolve_data_dirs(d.root)
    train = _scan(train_dir, check_images=check_images, workers=d.workers, check_classes=True)
    if val_dir is not None:
        val = _scan(val_dir, check_images=check_images, workers=d.workers)
        if val.classes != train.classes:
            raise VitError(f"{val_dir} has classes {val.classes} but {train_dir} has "
                           f"{train.classes}; they must match")
        data = RunData(root=train_dir, classes=train.classes, train_samples=train.samples,
                       val_samples=val.samples, split={"kind": "folder", "val_dir": str(val_dir)},
                       skipped=train.skipped + val.skipped, ignored=train.ignored + val.ignored)
    else:
        train_idx, val_idx = stratified_split(
            [t for _, t in train.samples], val_fraction=d.val_fraction, seed=cfg.train.seed)
        val_samples = [train.samples[i] for i in val_idx]
        split = {"kind": "stratified", "val_fraction": d.val_fraction, "seed": cfg.train.seed,
                 "val_files": [p for p, _ in val_samples]}
        data = RunData(root=train_dir, classes=train.classes,
                       train_samples=[train.samples[i] for i in train_idx],
                       val_samples=val_samples, split=split, skipped=train.skipped,
                       ignored=train.ignored)
    if not data.train_samples or not data.val_samples:
        raise DataError(
            f"the split left {len(data.train_samples)} training and {len(data.val_samples)} "
            "validation images; add images or change --val-fraction")
    return data


@dataclass
class _Scanned:
    classes: list[str]
    samples: list[tuple[str, int]]
    skipped: list[dict[str, str]]
    ignored: list[str]


def _scan(folder: Path, *, check_images: bool, workers: int, check_classes: bool = False
          ) -> _Scanned:
    scan = scan_folder(folder)
    samples, skipped = scan.samples, []
    if check_images:  # the pre-flight check
        samples, skipped = preflight(samples, workers=max(workers, 1))
        if check_classes:
            check_classes_readable(folder, scan.classes, samples, skipped)
    return _Scanned(classes=scan.classes, samples=samples, skipped=skipped,
                    ignored=list(scan.ignored))


def build_loaders(cfg: Config, data: RunData, *, img_size: int, device: torch.device,
                  batch_size: int, rank: int = 0, world_size: int = 1
                  ) -> tuple[Any, Any, RunData]:
    """Training and validation loaders for ``data.pipeline`` (albumentations workers, or memory),
    and the data they hold (the memory pipeline leaves out files it cannot decode)."""
    if cfg.data.pipeline == "memory":
        return _memory_loaders(cfg, data, img_size=img_size, device=device,
                               batch_size=batch_size, rank=rank, world_size=world_size)
    d = cfg.data
    aug = dict(img_size=img_size, mean=d.mean, std=d.std)
    train_tf = build_transform(
        train=True, scale=tuple(d.scale), ratio=tuple(d.ratio), hflip=d.hflip,
        randaug_n=d.randaug_n, randaug_m=d.randaug_m, **aug)
    eval_tf = build_transform(train=False, crop_pct=d.crop_pct, **aug)
    # per-sample augmentation seeds (seed, epoch, index): resume and worker count change nothing
    train_set = ImageFolderDataset(data.train_samples, data.classes, train_tf,
                                            seed=cfg.train.seed)
    val_set = ImageFolderDataset(data.val_samples, data.classes, eval_tf)
    shard = dict(batch_size=batch_size, workers=d.workers, seed=cfg.train.seed, rank=rank,
                 world_size=world_size, pin_memory=device.type == "cuda")
    train_loader = loader_lib.build_loader(
        train_set, shuffle=True, drop_last=True,
        weights=_sampler_weights(cfg, data.train_targets, len(data.classes)), **shard)
    val_loader = loader_lib.build_loader(val_set, shuffle=False, drop_last=False, **shard)
    return train_loader, val_loader, data


def _memory_loaders(cfg: Config, data: RunData, *, img_size: int, device: torch.device,
                    batch_size: int, rank: int, world_size: int) -> tuple[Any, Any, RunData]:
    """Decode both splits once into uint8 tensors on ``device`` (unreadable files are skipped
    and reported there); augment batches on the device."""
    from vit.data import memory

    d = cfg.data
    train_images, kept, skipped = memory.decode_images(
        [p for p, _ in data.train_samples], size=img_size, crop_pct=1.0,
        workers=max(d.workers, 1), desc="decoding training images")
    train_samples = [data.train_samples[i] for i in kept]
    check_classes_readable(data.root, data.classes, train_samples, skipped)
    val_images, val_kept, val_skipped = memory.decode_images(
        [p for p, _ in data.val_samples], size=img_size,
        crop_pct=resolve_crop_pct(img_size, d.crop_pct), workers=max(d.workers, 1),
        desc="decoding validation images")
    data = replace(data, train_samples=train_samples,
                   val_samples=[data.val_samples[i] for i in val_kept],
                   skipped=data.skipped + skipped + val_skipped)
    logger.info("data.pipeline=memory: %.0f MiB of uint8 images on %s",
                (train_images.numel() + val_images.numel()) / 2**20, device)

    norm = dict(img_size=img_size, mean=d.mean, std=d.std)
    train_aug = memory.BatchAugment(train=True, scale=d.scale, ratio=d.ratio, hflip=d.hflip,
                                      randaug_n=d.randaug_n, randaug_m=d.randaug_m, **norm)
    shard = dict(batch_size=batch_size, seed=cfg.train.seed, rank=rank, world_size=world_size)
    train_loader = memory.MemoryLoader(
        train_images.to(device), data.train_targets, augment=train_aug, shuffle=True,
        drop_last=True, weights=_sampler_weights(cfg, data.train_targets, len(data.classes)),
        **shard)
    val_loader = memory.MemoryLoader(
        val_images.to(device), [t for _, t in data.val_samples],
        augment=memory.BatchAugment(train=False, **norm), shuffle=False, drop_last=False,
        **shard)
    return train_loader, val_loader, data


def _sampler_weights(cfg: Config, targets: list[int], num_classes: int) -> list[float] | None:
    if cfg.data.sampler != "weighted":
        return None
    return _inverse_frequency_weights(targets, num_classes)


# --- model, loss ------------------------------------------------------------------------------


def build_model(cfg: Config, *, classes: list[str], pretrained: Any = None) -> VisionTransformer:
    """The preset named in the config, or pretrained weights adapted to these classes.

    With pretrained weights the architecture comes from the file (ours records it; for a raw
    timm state_dict it is read off the tensor shapes); only the head and, when
    ``model.img_size`` differs, the position embedding adapt.
    """
    m = cfg.model
    regularisation = dict(drop_rate=m.drop_rate, drop_path_rate=m.drop_path_rate)
    if pretrained is not None:
        from vit.models.pretrained import build_finetune_model

        model, _ = build_finetune_model(pretrained, num_classes=len(classes), classes=classes,
                                        img_size=m.img_size, overrides=regularisation)
        return model
    overrides = {k: v for k, v in dict(
        img_size=m.img_size, patch_size=m.patch_size, global_pool=m.global_pool,
        reg_tokens=m.reg_tokens, qk_norm=m.qk_norm, init_values=m.init_values,
        embed_dim=m.embed_dim, depth=m.depth, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
    ).items() if v is not None}
    try:
        return create_model(m.name, num_classes=len(classes), **overrides, **regularisation)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def build_criterion(cfg: Config, *, num_classes: int, train_targets: list[int],
                    device: torch.device) -> tuple[nn.Module, Any]:
    """Cross-entropy (label smoothing, optional class weights) or soft-target CE under mixup."""
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy

    loss = cfg.loss
    weight = None
    if loss.class_weights == "balanced":
        weight = balanced_class_weights(train_targets, num_classes).to(device)
    if loss.mixup_alpha > 0 or loss.cutmix_alpha > 0:
        if weight is not None:
            raise ConfigError("loss.class_weights=balanced cannot be combined with mixup/cutmix; "
                              "use data.sampler=weighted instead")
        mixup = Mixup(mixup_alpha=loss.mixup_alpha, cutmix_alpha=loss.cutmix_alpha,
                      prob=loss.mixup_prob, switch_prob=loss.mixup_switch_prob,
                      label_smoothing=loss.label_smoothing, num_classes=num_classes)
        return SoftTargetCrossEntropy(), mixup
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=loss.label_smoothing), None


# --- Ctrl-C -----------------------------------------------------------------------------------


@contextlib.contextmanager
def stop_on_sigint() -> Iterator[threading.Event]:
    """First Ctrl-C asks the loop to stop after the current step; a second one aborts at once."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):  # noqa: ARG001
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        logger.warning("interrupt: finishing this step and saving a resumable checkpoint "
                       "(press Ctrl-C again to abort without saving)")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


# --- the run ----------------------------------------------------------------------------------


def _preprocess(cfg: Config, model: VisionTransformer) -> dict[str, Any]:
    img_size = model.config.img_size
    crop_pct = resolve_crop_pct(img_size, cfg.data.crop_pct)
    return {"img_size": img_size, "mean": list(cfg.data.mean), "std": list(cfg.data.std),
            "crop_pct": crop_pct}



def train(cfg: Config, *, resume: str | os.PathLike | ResumePoint | None = None,
          show_progress: bool = True) -> TrainSummary:
    """Run (or resume) a training run described by ``cfg``; returns where the files are.

    ``resume`` is a run folder, its last.pt, or a ``ResumePoint`` already read.
    """
    started = time.perf_counter()
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    dist_info = init_distributed(device.type)
    if dist_info.enabled and device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
    show_progress = show_progress and dist_info.is_main
    _check_train_config(cfg, dist_info)

    resume_state: dict[str, Any] | None = None
    if resume is not None:
        if not isinstance(resume, ResumePoint):
            resume = ResumePoint.load(resume)
        resume_state = resume.state
        run_dir = Path(cfg.train.output) if cfg.train.output else resume.path.parent
    else:
        run_dir = Path(cfg.train.output) if cfg.train.output else default_run_dir()
    run_dir = Path(broadcast_object(str(run_dir)))
    if dist_info.is_main:
        make_output_dir(run_dir)
    cfg = replace(cfg, train=replace(cfg.train, output=str(run_dir)))

    torch.manual_seed(cfg.train.seed)
    pretrained = None
    if resume_state is not None:  # the architecture the run was saved with
        arch = ViTConfig.from_dict(resume_state["model_config"])
        img_size = arch.img_size
    else:
        if cfg.train.pretrained:
            from vit.models.pretrained import read_pretrained

            pretrained = read_pretrained(cfg.train.pretrained)
        img_size = _img_size(cfg, pretrained)
    data = prepare_data(cfg)
    num_classes = len(data.classes)
    if resume_state is not None:
        if resume_state["classes"] != data.classes:
            raise VitError(f"the data's classes {data.classes} differ from the resumed run's "
                           f"{resume_state['classes']}")
        model = VisionTransformer(arch)
    else:
        model = build_model(cfg, classes=data.classes, pretrained=pretrained)
    if cfg.train.freeze != "none":
        trainable = freeze_parameters(model, cfg.train.freeze)
        logger.info("freeze=%s: training %d parameter tensors", cfg.train.freeze, len(trainable))
    model.to(device)
    preprocess = _preprocess(cfg, model)

    world = dist_info.world_size
    per_process_batch = cfg.train.batch_size // world
    train_loader, val_loader, data = build_loaders(
        cfg, data, img_size=img_size, device=device, batch_size=per_process_batch,
        rank=dist_info.rank, world_size=world)
    batches_per_epoch = len(train_loader)
    if batches_per_epoch == 0:
        raise ConfigError(
            f"--batch-size {cfg.train.batch_size} is larger than the {len(data.train_samples)} training "
            "images; lower it")
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.train.accum_steps)
    total_steps = steps_per_epoch * cfg.train.epochs
    warmup_steps = round(cfg.train.warmup_epochs * steps_per_epoch)

    optimizer = build_optimizer(model, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                                layer_decay=cfg.train.layer_decay)
    scaler = make_grad_scaler(device, precision)
    ema = _make_ema(model, cfg) if cfg.train.ema else None
    criterion, mixup = build_criterion(cfg, num_classes=num_classes,
                                       train_targets=data.train_targets, device=device)

    start_epoch, skip_batches, step, best_top1 = 0, 0, 0, None
    if resume_state is not None:
        start_epoch, skip_batches, step, best_top1 = _restore(
            resume_state, model=model, optimizer=optimizer, scaler=scaler, ema=ema)
        logger.info("resuming %s at epoch %d (batch %d), step %d", run_dir, start_epoch + 1,
                    skip_batches, step)
        if dist_info.is_main:
            truncate_metrics(run_dir / "metrics.jsonl", start_epoch)
            remove_stale_temp_files(run_dir)  # writes that a crash cut short

    train_model: nn.Module = model
    if cfg.train.compile:
        train_model = torch.compile(model)
    if dist_info.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None)

    if dist_info.is_main:
        atomic_write(run_dir / "config.yaml", to_yaml(cfg))
        write_json(run_dir / "data_report.json", data.report())
        write_json(run_dir / "split.json", data.split)
        n_skipped = len(data.skipped)
        logger.info("%d classes, %d training / %d validation images", num_classes,
                    len(data.train_samples), len(data.val_samples))
        if n_skipped:
            logger.warning("%d unreadable files skipped; they are listed with the reason in %s",
                           n_skipped, run_dir / "data_report.json")
        arch = (f"from {cfg.train.pretrained}" if cfg.train.pretrained else cfg.model.name)
        total, trainable = count_parameters(model)
        logger.info("model %s (%d blocks, width %d): %.2fM parameters (%.2fM trained), device %s, "
                    "precision %s, global batch %d", arch, model.config.depth,
                    model.config.embed_dim, total / 1e6, trainable / 1e6, device, precision,
                    cfg.train.batch_size * cfg.train.accum_steps)

    schedule = {"warmup_steps": warmup_steps, "total_steps": total_steps}

    def lr_at(s: int) -> float:
        return lr_at_step(s, base_lr=cfg.train.lr, min_lr=cfg.train.min_lr, **schedule)

    def checkpoint(epoch: int, batches_done: int, metrics: dict[str, Any]) -> dict[str, Any]:
        eval_model = ema.module if ema is not None else model
        return ckpt_lib.make_checkpoint(
            model=eval_model, classes=data.classes, preprocess=preprocess, config=to_dict(cfg),
            epoch=epoch, step=step, best_top1=best_top1, metrics=metrics, optimizer=optimizer,
            scaler=scaler, ema_model=ema.module if ema is not None else None,
            train_model=model if ema is not None else None,
            extra={"batches_done": batches_done, "rng": ckpt_lib.capture_rng_state()})

    metrics: dict[str, Any] = {}
    elapsed_before = 0.0
    if resume_state is not None:
        elapsed_before = float((resume_state.get("metrics") or {}).get("elapsed_s", 0.0))
    epoch = start_epoch
    saver = _EpochSaver(run_dir, every_s=cfg.train.save_every_s)
    max_epochs, epoch_ends = cfg.train.epochs, []
    with stop_on_sigint() as stop:
        def should_stop() -> bool:
            flag = float(stop.is_set())
            return all_reduce_sum([flag], device)[0] > 0 if dist_info.enabled else bool(flag)

        epoch = start_epoch
        while epoch < cfg.train.epochs:
            loader_lib.set_epoch(train_loader, epoch, start_batch=skip_batches)
            result = train_one_epoch(
                model=train_model, loader=train_loader, optimizer=optimizer, criterion=criterion,
                device=device, precision=precision, lr_at=lr_at, step=step, scaler=scaler,
                accum_steps=cfg.train.accum_steps, clip_grad=cfg.train.clip_grad, ema=ema,
                mixup=mixup, epoch=epoch, num_batches=batches_per_epoch,
                skip_batches=skip_batches, should_stop=should_stop, show_progress=show_progress)
            step = result.step
            if result.interrupted:
                if dist_info.is_main:
                    saver.flush_best()
                    atomic_save(checkpoint(epoch, result.batches_done, metrics),
                                         run_dir / "last.pt")
                barrier()
                raise TrainingInterrupted(
                    f"interrupted in epoch {epoch + 1} after {result.batches_done} of "
                    f"{batches_per_epoch} batches; resumable checkpoint {run_dir / 'last.pt'}; "
                    f"continue with: --resume {run_dir}")
            skip_batches = 0
            eval_model = ema.module if ema is not None else model
            val = evaluate(model=eval_model, loader=val_loader, device=device, precision=precision)
            images = all_reduce_sum([float(result.images)], device)[0]
            metrics = {
                "epoch": epoch + 1, "lr": result.lr, "train_loss": result.train_loss, **val,
                "images_per_s": images / max(result.seconds, 1e-9), "seconds": result.seconds,
                # share of the epoch spent blocked on the input pipeline (this process)
                "data_wait_pct": 100.0 * result.data_wait_s / max(result.seconds, 1e-9),
                # wall time since the run started (set-up and evaluation included), summed over
                # resumed sessions: the x axis of accuracy-vs-time plots
                "elapsed_s": elapsed_before + time.perf_counter() - started,
            }
            if result.skipped_steps:
                metrics["skipped_steps"] = result.skipped_steps
            improved = best_top1 is None or val["val_top1"] > best_top1
            if improved:
                best_top1 = val["val_top1"]
            epoch_ends.append(metrics["elapsed_s"])
            budget = cfg.train.time_budget_min
            if budget is not None and start_epoch == 0 and epoch >= 1:
                epochs = fit_epochs_to_budget(
                    budget_s=60 * budget, elapsed_s=metrics["elapsed_s"],
                    epoch_s=recent_pace(epoch_ends), epochs_done=epoch + 1, max_epochs=max_epochs)
                epochs = int(broadcast_object(epochs))
                if epochs != cfg.train.epochs:
                    cfg = replace(cfg, train=replace(cfg.train, epochs=epochs))
                    schedule["total_steps"] = steps_per_epoch * epochs
                    schedule["warmup_steps"] = min(warmup_steps, schedule["total_steps"])
                    if dist_info.is_main:
                        atomic_write(run_dir / "config.yaml", to_yaml(cfg))
                        logger.info("time budget %.1f min: %d epochs fit (the schedule ends "
                                    "there)", budget, epochs)
            if dist_info.is_main:
                final = epoch + 1 == cfg.train.epochs
                saver.epoch_done(metrics, checkpoint(epoch + 1, 0, metrics), improved,
                                 force=final)
                logger.info("epoch %d/%d  train_loss %.4f  val_loss %.4f  top1 %.2f%%  top5 %.2f%%  "
                            "%.0f img/s  %.1fs  data wait %.1f%%", epoch + 1, cfg.train.epochs,
                            result.train_loss, val["val_loss"], val["val_top1"], val["val_top5"],
                            metrics["images_per_s"], result.seconds, metrics["data_wait_pct"])
            barrier()
            epoch += 1

    overlays = None
    if dist_info.is_main and cfg.train.explain_samples > 0:
        overlays = write_overlays(run_dir, data.val_samples,
                                  num_images=cfg.train.explain_samples, device=device)
    return TrainSummary(run_dir=run_dir, best_top1=best_top1, last_metrics=metrics,
                        epochs_done=cfg.train.epochs, overlays=overlays)


def held_out_examples(samples: list[tuple[str, int]], num_images: int) -> list[str]:
    """Up to ``num_images`` paths from ``samples``, one class after another, so that a grid of
    them shows every class."""
    by_class: dict[int, list[str]] = {}
    for path, target in samples:
        by_class.setdefault(target, []).append(path)
    rounds = itertools.zip_longest(*by_class.values())
    return [path for row in rounds for path in row if path is not None][:num_images]


def write_overlays(run_dir: Path, val_samples: list[tuple[str, int]], *, num_images: int,
                   device: torch.device) -> Path | None:
    """Attention-rollout overlays of held-out images by best.pt, into RUN/overlays (the last
    step of a run: ``train.explain_samples``); None when they could not be drawn."""
    from vit.inference.overlays import explain_files

    out = run_dir / "overlays"
    try:
        explain_files(checkpoint=run_dir / "best.pt", output=out, method="rollout",
                      paths=held_out_examples(val_samples, num_images), device=str(device))
    except Exception as e:  # a drawing problem must never end a finished run
        logger.warning("could not draw the attention overlays: %s", e)
        return None
    return out


def _check_train_config(cfg: Config, dist_info: DistInfo) -> None:
    t = cfg.train
    if t.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {t.batch_size}")
    if t.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {t.epochs}")
    if t.accum_steps < 1:
        raise ConfigError(f"train.accum_steps must be at least 1, got {t.accum_steps}")
    if t.batch_size % dist_info.world_size:
        raise ConfigError(
            f"--batch-size {t.batch_size} is the global batch and must divide evenly over "
            f"{dist_info.world_size} processes")
    if not 0 < cfg.data.val_fraction < 1:
        raise ConfigError(f"--val-fraction must be between 0 and 1, got {cfg.data.val_fraction}")
    if cfg.data.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {cfg.data.workers}")
    if t.time_budget_min is not None and t.time_budget_min <= 0:
        raise ConfigError(f"train.time_budget_min must be positive, got {t.time_budget_min}")
    if t.save_every_s < 0:
        raise ConfigError(f"train.save_every_s must be >= 0, got {t.save_every_s}")


def _img_size(cfg: Config, pretrained: Any) -> int:
    """The training resolution: model.img_size, else the pretrained file's, else the preset's."""
    if cfg.model.img_size is not None:
        return cfg.model.img_size
    if pretrained is not None:
        from vit.models.pretrained import infer_config

        arch = pretrained.model_config or infer_config(pretrained.state_dict)
        return int(arch["img_size"])
    from vit.models.vision_transformer import model_config

    try:
        return model_config(cfg.model.name).img_size
    except ValueError as e:
        raise ConfigError(str(e)) from e


def _make_ema(model: nn.Module, cfg: Config) -> nn.Module:
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=cfg.train.ema_decay, use_warmup=True)


def _restore(state: dict[str, Any], *, model: nn.Module, optimizer: torch.optim.Optimizer,
             scaler: torch.amp.GradScaler | None, ema: nn.Module | None) -> tuple[int, int, int, Any]:
    if "optimizer" not in state or state.get("optimizer") is None:
        raise ckpt_lib.CheckpointError("this checkpoint holds no optimizer state and cannot be "
                                       "resumed; use it with --pretrained to start a new run")
    train_weights = state.get("train_model") or state["model"]
    model.load_state_dict(train_weights)
    try:
        optimizer.load_state_dict(state["optimizer"])
    except ValueError as e:  # torch: "... parameter group that doesn't match the size ..."
        raise ckpt_lib.CheckpointError(
            f"this checkpoint's optimizer state does not fit the parameter groups of this run "
            f"({e}); the groups changed (train.freeze, train.layer_decay or train.weight_decay "
            "differ, or the checkpoint was written by an older vit whose layer decay grouped "
            "the final norm with the head); start a new run from its weights with --pretrained"
        ) from e
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if ema is not None and state.get("ema"):
        ema.module.load_state_dict(state["ema"])
    extra = state.get("extra") or {}
    if extra.get("rng"):
        ckpt_lib.restore_rng_state(extra["rng"])
    return state["epoch"], int(extra.get("batches_done", 0)), state["step"], state.get("best_top1")


def fit_epochs_to_budget(*, budget_s: float, elapsed_s: float, epoch_s: float, epochs_done: int,
                        max_epochs: int, margin: float = 0.05) -> int:
    """How many epochs in all end within ``budget_s``, given that ``epochs_done`` took
    ``elapsed_s`` and the latest took ``epoch_s``; at least ``epochs_done``, at most ``max_epochs``.
    ``margin`` keeps a share of the remaining time free for noise between epochs."""
    if budget_s <= 0:
        raise ConfigError(f"train.time_budget_min must be positive, got {budget_s / 60:g}")
    more = math.floor((budget_s - elapsed_s) * (1.0 - margin) / max(epoch_s, 1e-9))
    return int(min(max_epochs, epochs_done + max(more, 0)))


def recent_pace(epoch_ends: list[float], *, window: int = 5) -> float:
    """Seconds per epoch from the wall-clock times at which epochs ended: the slower of the mean
    since the first epoch (which carries start-up costs, so it is left out) and the mean of the
    last ``window`` epochs, so a machine that slows down mid-run still ends within budget."""
    if len(epoch_ends) < 2:
        raise ValueError("the pace needs at least two epochs")
    overall = (epoch_ends[-1] - epoch_ends[0]) / (len(epoch_ends) - 1)
    recent = epoch_ends[-min(window, len(epoch_ends) - 1) - 1:]
    return max(overall, (recent[-1] - recent[0]) / (len(recent) - 1))


def _snapshot(obj: Any) -> Any:
    """A copy with every tensor cloned to the CPU (what a checkpoint holds at this moment)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _snapshot(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_snapshot(v) for v in obj)
    return obj


PLOT_EVERY_S = 10.0  # curves.png is redrawn at most this often, and after the last epoch


class _EpochSaver:
    """The per-epoch files: metrics.jsonl every epoch; last.pt and best.pt every epoch, or at
    most every ``every_s`` seconds (the best weights wait in memory meanwhile); curves.png at
    most every ``PLOT_EVERY_S`` seconds and at the end."""

    def __init__(self, run_dir: Path, *, every_s: float):
        self.run_dir, self.every_s = run_dir, every_s
        self.last_write = time.perf_counter()
        self.last_plot = -math.inf
        self.pending_best: dict[str, Any] | None = None

    def epoch_done(self, metrics: dict[str, Any], checkpoint: dict[str, Any], improved: bool,
                   *, force: bool = False) -> None:
        # metrics first: a crash before last.pt is written redoes this epoch, and resume drops
        # the line again (truncate_metrics), so metrics.jsonl never holds an epoch twice.
        append_jsonl(self.run_dir / "metrics.jsonl", metrics)
        due = force or self.every_s <= 0 or time.perf_counter() - self.last_write >= self.every_s
        if improved:
            best = {k: v for k, v in checkpoint.items()
                    if k not in ("optimizer", "scaler", "ema", "train_model", "extra")}
            self.pending_best = best if due else _snapshot(best)
        if not due:
            return
        self.flush_best()
        atomic_save(checkpoint, self.run_dir / "last.pt")
        self.last_write = time.perf_counter()
        if not force and self.last_write - self.last_plot < PLOT_EVERY_S:
            return  # drawing takes ~0.5 s: more than a whole epoch on a GPU
        self.last_plot = self.last_write
        try:
            from vit.plots import plot_training_curves

            plot_training_curves(read_jsonl(self.run_dir / "metrics.jsonl"),
                                 self.run_dir / "curves.png")
        except Exception as e:  # a plotting problem must never end a training run
            logger.warning("could not draw curves.png: %s", e)

    def flush_best(self) -> None:
        if self.pending_best is not None:
            atomic_save(self.pending_best, self.run_dir / "best.pt")
            self.pending_best = None


def truncate_metrics(path: Path, epochs_done: int) -> None:
    """Keep only the metrics of epochs a resumed run will not redo."""
    records = [r for r in read_jsonl(path) if r.get("epoch", 0) <= epochs_done]
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in records))


def _inverse_frequency_weights(targets: list[int], num_classes: int) -> list[float]:
    """Per-sample weights 1 / count(class): every class is drawn equally often."""
    counts = class_counts(targets, num_classes)
    return [1.0 / counts[t] for t in targets]
