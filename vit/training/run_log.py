"""What a run says in its log: the model and processes lines at start-up, the metrics of an
epoch and its line. Explicit inputs, no state."""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from vit.config import Config
from vit.models.architecture import describe_model
from vit.models.presets import head_parameters
from vit.models.timm_models import DISTILLED_HEADS
from vit.text import plural
from vit.training.epoch import EpochResult
from vit.training.optim import count_parameters

__all__ = ["log_model", "log_processes", "epoch_metrics", "log_epoch"]

logger = logging.getLogger(__name__)


def log_model(model: nn.Module, cfg: Config, *, num_classes: int, device: Any,
              precision: str) -> None:
    """The start-up line of the model: architecture, parameters, device, precision, batch."""
    info = describe_model(model)
    arch = cfg.model.name if info.name == "vit" else f"{info.name} ({info.family})"
    if cfg.train.pretrained:
        arch = f"{'' if info.name == 'vit' else arch + ' '}from {cfg.train.pretrained}"
    total, trainable = count_parameters(model)
    head = head_parameters(model)  # counted apart, as `vit models` leaves it out
    logger.info("model %s (%d blocks, width %d, %d px): %.2fM parameters + a head of %s for "
                "%s (%.2fM trained), device %s, precision %s, global batch %d", arch,
                info.depth, info.embed_dim, info.img_size, (total - head) / 1e6, f"{head:,}",
                plural(num_classes, "class"), trainable / 1e6, device, precision,
                cfg.train.batch_size * cfg.train.accum_steps)
    if info.family == "VisionTransformerDistilled":
        logger.info("%s", DISTILLED_HEADS)


def log_processes(world_size: int, *, strategy: str, held_per_process: int) -> None:
    """The start-up line under torchrun: the processes, ``train.strategy``, and the parameter
    elements the fullest process holds."""
    logger.info("%d processes, strategy %s: at most %d parameter elements (%.2fM) held by one "
                "process", world_size, strategy, held_per_process, held_per_process / 1e6)


def epoch_metrics(epoch: int, result: EpochResult, val: dict[str, float], *, images: float,
                  elapsed_s: float) -> dict[str, Any]:
    """One line of metrics.jsonl; ``images``: those of every process, ``elapsed_s``: wall time
    since the run started (set-up and evaluation included), summed over resumed sessions."""
    metrics = {
        "epoch": epoch + 1, "lr": result.lr, "train_loss": result.train_loss, **val,
        "images_per_s": images / max(result.seconds, 1e-9), "seconds": result.seconds,
        # share of the epoch spent blocked on the input pipeline (this process)
        "data_wait_pct": 100.0 * result.data_wait_s / max(result.seconds, 1e-9),
        # the x axis of accuracy-vs-time plots
        "elapsed_s": elapsed_s,
    }
    if result.skipped_steps:
        metrics["skipped_steps"] = result.skipped_steps
    return metrics


def log_epoch(epoch: int, epochs: int, result: EpochResult, metrics: dict[str, Any]) -> None:
    """The line after each epoch."""
    m = metrics
    top5 = f"  top5 {m['val_top5']:.2f}%" if m.get("val_top5") is not None else ""
    logger.info("epoch %d/%d  train_loss %.4f  val_loss %.4f  top1 %.2f%%%s  "
                "%.0f img/s  %.1fs  data wait %.1f%%", epoch + 1, epochs,
                result.train_loss, m["val_loss"], m["val_top1"], top5,
                m["images_per_s"], result.seconds, m["data_wait_pct"])
