"""One epoch of training and one pass of evaluation. Explicit arguments, no hidden state.

The run-level orchestration (data, checkpoints, files) lives in ``vit.training.trainer``; these functions
only move batches through the model.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from vit.errors import VitError
from vit.inference.metrics import percent, topk_correct
from vit.runtime import autocast, unwrap_model
from vit.training.distributed import all_reduce_sum
from vit.training.optim import set_lr

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



def train_one_epoch(
    *,
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    device: torch.device,
    precision: str,
    lr_at: Callable[[int], float],
    step: int,
    scaler: torch.amp.GradScaler | None = None,
    accum_steps: int = 1,
    clip_grad: float | None = None,
    ema: nn.Module | None = None,
    mixup: Callable | None = None,
    epoch: int = 0,
    num_batches: int | None = None,
    skip_batches: int = 0,
    should_stop: Callable[[], bool] | None = None,
    show_progress: bool = True,
    check_every: int | None = None,
) -> EpochResult:
    """Train for one pass over ``loader``; returns running statistics.

    ``step`` counts optimizer steps over the whole run and sets the learning rate through
    ``lr_at(step)``. With ``accum_steps > 1`` gradients of that many batches are summed before a
    step (the global batch is ``batch_size * accum_steps * world_size``). ``skip_batches`` resumes
    an interrupted epoch; ``should_stop`` is polled after each optimizer step.

    The loss and the finiteness of loss and gradients are kept on the device and read every
    ``check_every`` batches (default: every batch on the CPU, where reading is free; every 50
    on a GPU, so the host never waits for the device in between and kernel launches overlap
    the device's work). A non-finite step raises ``NonFiniteLossError`` naming the first bad
    step, before the epoch ends, so no checkpoint is ever written from its weights.
    """
    model.train()
    if check_every is None:
        check_every = 1 if device.type == "cpu" else 50
    total = num_batches if num_batches is not None else len(loader)  # type: ignore[arg-type]
    bar = tqdm(total=total, initial=skip_batches, desc=f"epoch {epoch + 1}", leave=False,
               disable=not show_progress, dynamic_ncols=True)
    health = _StepHealth(device)
    batches, images, skipped = 0, 0, 0
    lr = lr_at(step)
    start = time.perf_counter()
    interrupted = False
    batch_index = skip_batches
    optimizer.zero_grad(set_to_none=True)
    data_wait = 0.0
    fetch_start = time.perf_counter()
    for batch_index, (x, y) in enumerate(loader, start=skip_batches):
        data_wait += time.perf_counter() - fetch_start
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if mixup is not None:
            x, y = mixup(x, y)
        is_update = (batch_index + 1) % accum_steps == 0 or batch_index + 1 == total
        # DDP: only all-reduce gradients on the micro-batch that ends an accumulation window.
        sync = contextlib.nullcontext() if is_update or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast(device, precision):
                logits = model(x)
            loss = criterion(logits.float(), y)
            health.add_loss(loss, step=step + 1, guarded=scaler is None)
            if check_every == 1:
                health.raise_if_bad(epoch)  # before backward: the weights stay untouched
            backward_loss = loss / accum_steps
            if scaler is not None:
                scaler.scale(backward_loss).backward()
            else:
                backward_loss.backward()

        if is_update:
            lr = lr_at(step)
            set_lr(optimizer, lr)
            skipped += _optimizer_step(model, optimizer, scaler=scaler, clip_grad=clip_grad,
                                       health=health, check_now=check_every == 1, epoch=epoch)
            step += 1
            if ema is not None:
                ema.update(unwrap_model(model), step=step)

        batches += 1
        images += x.shape[0]
        bar.update(1)
        last = batch_index + 1 == total
        if batches % check_every == 0 or last:
            health.raise_if_bad(epoch)
            bar.set_postfix(loss=f"{health.last_loss():.4f}", lr=f"{lr:.2e}")
        if is_update and should_stop is not None and should_stop():
            interrupted = batch_index + 1 < total
            break
        fetch_start = time.perf_counter()
    bar.close()
    health.raise_if_bad(epoch)
    return EpochResult(
        train_loss=health.mean_loss(),
        step=step,
        lr=lr,
        images=images,
        seconds=time.perf_counter() - start,
        skipped_steps=skipped,
        batches_done=batch_index + 1 if batches else skip_batches,
        interrupted=interrupted,
        data_wait_s=data_wait,
    )


def _optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, *,
                    scaler: torch.amp.GradScaler | None, clip_grad: float | None,
                    health: _StepHealth, check_now: bool, epoch: int) -> int:
    """Unscale, clip, step, zero the gradients; returns 1 if the GradScaler skipped the step."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), clip_grad or math.inf)
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


# --- evaluation -------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    *,
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    precision: str,
    show_progress: bool = False,
    desc: str = "eval",
) -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy (percent) over ``loader``, summed over all processes.

    The sums stay on the device until the end: one wait for the GPU per evaluation, not per batch.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, device=device, dtype=torch.float64)  # loss, top-1, top-5, count
    for x, y in tqdm(loader, desc=desc, leave=False, disable=not show_progress, dynamic_ncols=True):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, precision):
            logits = model(x)
        logits = logits.float()
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
        "val_top5": percent(correct5, count),
    }
