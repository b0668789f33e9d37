"""One epoch of training and one validation pass. Explicit arguments, no hidden state.

The run-level orchestration (data, checkpoints, files) lives in ``vit.training.trainer``; these functions
only move batches through the model.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from vit.errors import VitError
from vit.inference.accuracy import percent, topk_correct
from vit.runtime import autocast, unwrap_model
from vit.training.distributed import all_reduce_sum
from vit.training.optim import set_lr

__all__ = ["EpochResult", "StepParts", "EpochStart", "EpochOptions", "NonFiniteLossError",
           "train_one_epoch", "validate"]

logger = logging.getLogger(__name__)


class NonFiniteLossError(VitError):
    """The loss became NaN or infinite; the run stops before any weights are saved from it."""


# --- training ---------------------------------------------------------------------------------


@dataclass
class EpochResult:
    train_loss: float  # mean over the batches seen
    step: int  # optimizer steps done so far in the run
    lr: float  # learning rate of the last step
    images: int  # images processed by this process
    seconds: float
    skipped_steps: int  # fp16 overflow steps skipped by the GradScaler
    batches_done: int  # batches of this epoch finished (== len(loader) unless interrupted)
    interrupted: bool
    data_wait_s: float = 0.0  # time blocked waiting for the loader's next batch


@dataclass
class StepParts:
    """The step's machinery: the model and what updates it, and where it runs.

    ``lr_at(step)`` is the learning-rate schedule, ``step`` counting optimizer steps over the
    whole run. With ``accum_steps > 1`` gradients of that many batches are summed before a step
    (the global batch is ``batch_size * accum_steps * world_size``)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    lr_at: Callable[[int], float]
    device: torch.device
    precision: str = "fp32"
    scaler: torch.amp.GradScaler | None = None
    ema: nn.Module | None = None
    mixup: Callable | None = None
    accum_steps: int = 1
    clip_grad: float | None = None


@dataclass(frozen=True)
class EpochStart:
    """Where the epoch starts: the run's optimizer steps so far, and for an interrupted epoch
    that is resumed, the batches it already did (``num_batches``: the epoch's length, by
    default ``len(loader)``)."""

    step: int = 0
    skip_batches: int = 0
    num_batches: int | None = None


@dataclass(frozen=True)
class EpochOptions:
    """How the epoch reports and stops.

    The loss and the finiteness of loss and gradients are kept on the device and read every
    ``check_every`` batches (default: every batch on the CPU, where reading is free; every 50
    on a GPU, so the host never waits for the device in between and kernel launches overlap
    the device's work). ``should_stop`` is polled after each optimizer step.
    ``on_step(step, {"loss", "lr", "images_per_s"})`` is called after an optimizer step whose
    loss was read anyway (the trackers' per-step line; no extra wait for the device).
    ``log_every_s`` logs a progress line (batches done, images/s, the time left in the epoch)
    at most that often: the bar's place when the output goes to a log file."""

    show_progress: bool = True
    check_every: int | None = None
    log_every_s: float | None = None
    should_stop: Callable[[], bool] | None = None
    on_step: Callable[[int, dict], None] | None = None


def train_one_epoch(*, parts: StepParts, loader: Iterable, epoch: int = 0,
                    start: EpochStart = EpochStart(), options: EpochOptions = EpochOptions()
                    ) -> EpochResult:
    """Train for one pass over ``loader``; returns running statistics.

    A non-finite step raises ``NonFiniteLossError`` naming the first bad step, before the
    epoch ends, so no checkpoint is ever written from its weights.
    """
    parts.model.train()
    total = start.num_batches if start.num_batches is not None else len(loader)  # type: ignore[arg-type]
    check_every = options.check_every
    if check_every is None:
        check_every = 1 if parts.device.type == "cpu" else 50
    steps = _Steps(parts, epoch=epoch, step=start.step, total=total, check_every=check_every)
    bar = tqdm(total=total, initial=start.skip_batches, desc=f"epoch {epoch + 1}", leave=False,
               disable=not options.show_progress, dynamic_ncols=True)
    began = time.perf_counter()
    lines = _ProgressLines(epoch, total, start.skip_batches, began, options.log_every_s)
    parts.optimizer.zero_grad(set_to_none=True)
    data_wait, interrupted, batches_done = _run_batches(
        loader, steps, bar=bar, lines=lines, options=options, skip_batches=start.skip_batches)
    bar.close()
    steps.health.raise_if_bad(epoch)
    return EpochResult(
        train_loss=steps.health.mean_loss(), step=steps.step, lr=steps.lr, images=steps.images,
        seconds=time.perf_counter() - began, skipped_steps=steps.skipped,
        batches_done=batches_done, interrupted=interrupted, data_wait_s=data_wait)


def _run_batches(loader: Iterable, steps: _Steps, *, bar: Any, lines: _ProgressLines,
                 options: EpochOptions, skip_batches: int) -> tuple[float, bool, int]:
    """The batches of the epoch: (seconds waiting for data, interrupted, batches done)."""
    pace = _Pace(options.on_step)
    data_wait, batch_index = 0.0, skip_batches
    fetch_start = time.perf_counter()
    for batch_index, (x, y) in enumerate(loader, start=skip_batches):
        data_wait += time.perf_counter() - fetch_start
        stepped = steps.batch(x, y, batch_index)
        bar.update(1)
        if steps.checked:
            bar.set_postfix(loss=f"{steps.health.last_loss():.4f}", lr=f"{steps.lr:.2e}")
            if stepped:
                pace.report(steps)
        lines.report(batch_index + 1, steps)
        if stepped and options.should_stop is not None and options.should_stop():
            return data_wait, batch_index + 1 < steps.total, batch_index + 1
        fetch_start = time.perf_counter()
    return data_wait, False, batch_index + 1 if steps.batches else skip_batches


class _ProgressLines:
    """One log line at most every ``every_s`` seconds during an epoch (none when ``None``)."""

    def __init__(self, epoch: int, total: int, skip_batches: int, start: float,
                 every_s: float | None):
        self.epoch, self.total, self.skip, self.start = epoch, total, skip_batches, start
        self.every_s, self.last = every_s, start

    def report(self, batches_done: int, steps: _Steps) -> None:
        now = time.perf_counter()
        if self.every_s is None or now - self.last < self.every_s or batches_done >= self.total:
            return
        self.last, elapsed = now, now - self.start
        left = elapsed / max(batches_done - self.skip, 1) * (self.total - batches_done)
        loss = f", loss {steps.health.last_loss():.4f}" if steps.checked else ""
        logger.info("epoch %d: batch %d/%d%s, %.0f img/s, about %s left in this epoch",
                    self.epoch + 1, batches_done, self.total, loss,
                    steps.images / max(elapsed, 1e-9), _minutes(left))


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


class _Pace:
    """Calls ``on_step`` with the loss, learning rate and images/s since its last call."""

    def __init__(self, on_step: Callable[[int, dict], None] | None):
        self.on_step, self.images, self.time = on_step, 0, time.perf_counter()

    def report(self, steps: _Steps) -> None:
        if self.on_step is None:
            return
        now = time.perf_counter()
        images_per_s = (steps.images - self.images) / max(now - self.time, 1e-9)
        self.on_step(steps.step, {"loss": steps.health.last_loss(), "lr": steps.lr,
                                  "images_per_s": images_per_s})
        self.images, self.time = steps.images, now


def _mark_cudagraph_step() -> None:
    """Tell CUDA-graph trees (``train.compile_mode=reduce-overhead``) that a new training step
    begins, so the previous step's graph outputs may be overwritten. Nothing to do (and no
    import of inductor) unless a compiled model already uses them."""
    trees = sys.modules.get("torch._inductor.cudagraph_trees")
    if trees is not None:
        trees.mark_step_begin()


class _Steps:
    """Batches through the model, and an optimizer step every ``accum_steps`` of them."""

    def __init__(self, parts: StepParts, *, epoch: int, step: int, total: int,
                 check_every: int):
        self.parts, self.model, self.device = parts, parts.model, parts.device
        self.epoch, self.total, self.check_every = epoch, total, check_every
        self.accum_steps = parts.accum_steps
        self.health = _StepHealth(parts.device)
        self.step, self.lr = step, parts.lr_at(step)
        self.batches = self.images = self.skipped = 0
        self.checked = False  # whether the last batch read the health flags

    def batch(self, x: torch.Tensor, y: torch.Tensor, index: int) -> bool:
        """One batch: forward, backward, and the optimizer step that ends an accumulation
        window; returns whether it stepped."""
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if self.parts.mixup is not None:
            x, y = self.parts.mixup(x, y)
        is_update = (index + 1) % self.accum_steps == 0 or index + 1 == self.total
        self._backward(x, y, is_update=is_update)
        if is_update:
            self._update()
        self.batches += 1
        self.images += x.shape[0]
        self.checked = self.batches % self.check_every == 0 or index + 1 == self.total
        if self.checked:
            self.health.raise_if_bad(self.epoch)
        return is_update

    def _backward(self, x: torch.Tensor, y: torch.Tensor, *, is_update: bool) -> None:
        model = self.model
        # DDP: only all-reduce gradients on the micro-batch that ends an accumulation window.
        no_sync = not is_update and hasattr(model, "no_sync")
        with model.no_sync() if no_sync else contextlib.nullcontext():
            _mark_cudagraph_step()
            with autocast(self.device, self.parts.precision):
                logits = model(x)
            loss = self.parts.criterion(logits.float(), y)
            self.health.add_loss(loss, step=self.step + 1, guarded=self.parts.scaler is None)
            if self.check_every == 1:
                self.health.raise_if_bad(self.epoch)  # before backward: the weights stay untouched
            backward_loss = loss / self.accum_steps
            if self.parts.scaler is not None:
                self.parts.scaler.scale(backward_loss).backward()
            else:
                backward_loss.backward()

    def _update(self) -> None:
        parts = self.parts
        self.lr = parts.lr_at(self.step)
        set_lr(parts.optimizer, self.lr)
        self.skipped += _optimizer_step(
            self.model, parts.optimizer, scaler=parts.scaler, clip_grad=parts.clip_grad,
            health=self.health, check_now=self.check_every == 1, epoch=self.epoch)
        self.step += 1
        if parts.ema is not None:
            parts.ema.update(unwrap_model(self.model), step=self.step)


def _optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, *,
                    scaler: torch.amp.GradScaler | None, clip_grad: float | None,
                    health: _StepHealth, check_now: bool, epoch: int) -> int:
    """Unscale, clip, step, zero the gradients; returns 1 if the GradScaler skipped the step."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), clip_grad or math.inf)
    if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor, the same on every process
        grad_norm = grad_norm.full_tensor()
    if scaler is not None:
        scale_before = scaler.get_scale()  # fp16 reads the scale back: one wait per step
        scaler.step(optimizer)  # skipped when the gradients hold inf/NaN
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return int(scaler.get_scale() < scale_before)
    health.add_grad_norm(grad_norm)
    if check_now:
        health.raise_if_bad(epoch)  # before the step: the weights stay untouched
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return 0


class _StepHealth:
    """Running loss sum and the first non-finite step, kept on the device until read."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), device=device)
        self.count = 0
        self.last = torch.zeros((), device=device)
        self.first_bad = torch.full((), -1, device=device, dtype=torch.long)
        self.bad_value = torch.zeros((), device=device)
        self.bad_what = torch.zeros((), device=device, dtype=torch.long)  # 1 loss, 2 gradients
        self.step = 0

    def add_loss(self, loss: torch.Tensor, *, step: int, guarded: bool) -> None:
        value = loss.detach().float()
        finite = torch.isfinite(value)
        self.loss_sum += torch.where(finite, value, 0.0)
        self.count += 1
        self.last = value
        self.step = step
        if guarded:  # with a GradScaler a non-finite fp16 step is skipped, not an error
            self._flag(~finite, value, what=1)

    def add_grad_norm(self, grad_norm: torch.Tensor) -> None:
        norm = grad_norm.detach().float()
        self._flag(~torch.isfinite(norm), norm, what=2)

    def _flag(self, bad: torch.Tensor, value: torch.Tensor, *, what: int) -> None:
        new = bad & (self.first_bad < 0)
        self.first_bad = torch.where(new, self.step, self.first_bad)
        self.bad_value = torch.where(new, value, self.bad_value)
        self.bad_what = torch.where(new, what, self.bad_what)

    def raise_if_bad(self, epoch: int) -> None:
        first = int(self.first_bad.item())
        if first < 0:
            return
        what = "loss" if int(self.bad_what.item()) == 1 else "gradients"
        raise NonFiniteLossError(
            f"the {what} became {self.bad_value.item()} at step {first} (epoch {epoch + 1}); the "
            "last good checkpoint is kept. Lower the learning rate (--lr) or set "
            "train.clip_grad, then resume with --resume.")

    def last_loss(self) -> float:
        return float(self.last.item())

    def mean_loss(self) -> float:
        return float(self.loss_sum.item()) / max(self.count, 1)


# --- validation -------------------------------------------------------------------------------


@torch.no_grad()
def validate(
    *,
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    precision: str,
    show_progress: bool = False,
    desc: str = "eval",
) -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy (percent) over ``loader``, summed over all processes.
    Top-5 is None with 5 classes or fewer, where it is 100% whatever the model.

    The sums stay on the device until the end: one wait for the GPU per evaluation, not per batch.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, device=device, dtype=torch.float64)  # loss, top-1, top-5, count
    num_classes = 0
    for x, y in tqdm(loader, desc=desc, leave=False, disable=not show_progress, dynamic_ncols=True):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, precision):
            logits = model(x)
        logits = logits.float()
        num_classes = logits.shape[1]
        loss = F.cross_entropy(logits, y, reduction="sum").double()
        count = torch.tensor(float(y.numel()), device=device, dtype=torch.float64)
        sums += torch.cat([loss[None], topk_correct(logits, y, ks=(1, 5)), count[None]])
    model.train(was_training)
    loss_sum, correct1, correct5, count = all_reduce_sum(sums.tolist(), device)
    if count == 0:
        raise VitError("evaluation saw no images")
    return {
        "val_loss": loss_sum / count,
        "val_top1": percent(correct1, count),
        "val_top5": percent(correct5, count) if num_classes > 5 else None,
    }
