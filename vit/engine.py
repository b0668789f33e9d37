"""One epoch of training and one pass of evaluation. Explicit arguments, no hidden state.

The run-level orchestration (data, checkpoints, files) lives in ``vit.trainer``; these functions
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

from vit.checkpoint import unwrap_model
from vit.distributed import all_reduce_sum
from vit.errors import ConfigError, VitError

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class NonFiniteLossError(VitError):
    """The loss became NaN or infinite; the run stops before any weights are saved from it."""


# --- device and precision, chosen once --------------------------------------------------------


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU. Asking for CUDA without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: no CUDA GPU is visible; use --device cpu or auto")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` -> bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU."""
    if name not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {PRECISIONS}, got {name!r}")
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs a CUDA GPU; on CPU use fp32 (or bf16)")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("--precision bf16 is not supported by this GPU; use fp16")
    return name


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed-precision context for the forward pass (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """fp16 needs loss scaling; a step whose gradients overflow is skipped, not applied."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


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
) -> EpochResult:
    """Train for one pass over ``loader``; returns running statistics.

    ``step`` counts optimizer steps over the whole run and sets the learning rate through
    ``lr_at(step)``. With ``accum_steps > 1`` gradients of that many batches are summed before a
    step (the global batch is ``batch_size * accum_steps * world_size``). ``skip_batches`` resumes
    an interrupted epoch; ``should_stop`` is polled after each optimizer step.
    """
    model.train()
    total = num_batches if num_batches is not None else len(loader)  # type: ignore[arg-type]
    bar = tqdm(total=total, initial=skip_batches, desc=f"epoch {epoch + 1}", leave=False,
               disable=not show_progress, dynamic_ncols=True)
    loss_sum, batches, images, skipped = 0.0, 0, 0, 0
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
            if not torch.isfinite(loss) and scaler is None:
                raise NonFiniteLossError(
                    f"the loss became {loss.item()} at step {step + 1} (epoch {epoch + 1}); the last "
                    "good checkpoint is kept. Lower the learning rate (--lr) or set "
                    "train.clip_grad, then resume with --resume."
                )
            backward_loss = loss / accum_steps
            if scaler is not None:
                scaler.scale(backward_loss).backward()
            else:
                backward_loss.backward()

        if is_update:
            lr = lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            if scaler is not None:
                scaler.unscale_(optimizer)
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), clip_grad or math.inf)
            if scaler is None and not torch.isfinite(grad_norm):
                raise NonFiniteLossError(
                    f"the gradients became {grad_norm.item()} at step {step + 1} (epoch "
                    f"{epoch + 1}); the last good checkpoint is kept. Lower the learning rate "
                    "(--lr) or set train.clip_grad, then resume with --resume.")
            if scaler is not None:
                scale_before = scaler.get_scale()
                scaler.step(optimizer)  # skipped when the gradients hold inf/NaN
                scaler.update()
                if scaler.get_scale() < scale_before:
                    skipped += 1
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if ema is not None:
                ema.update(unwrap_model(model), step=step)

        loss_value = loss.item()
        loss_sum += loss_value if math.isfinite(loss_value) else 0.0
        batches += 1
        images += x.shape[0]
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
        if is_update and should_stop is not None and should_stop():
            interrupted = batch_index + 1 < total
            break
        fetch_start = time.perf_counter()
    bar.close()
    return EpochResult(
        train_loss=loss_sum / max(batches, 1),
        step=step,
        lr=lr,
        images=images,
        seconds=time.perf_counter() - start,
        skipped_steps=skipped,
        batches_done=batch_index + 1 if batches else skip_batches,
        interrupted=interrupted,
        data_wait_s=data_wait,
    )


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
    """Loss, top-1 and top-5 accuracy (percent) over ``loader``, summed over all processes."""
    was_training = model.training
    model.eval()
    loss_sum, correct1, correct5, count = 0.0, 0.0, 0.0, 0.0
    for x, y in tqdm(loader, desc=desc, leave=False, disable=not show_progress, dynamic_ncols=True):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, precision):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices  # (B, k)
        hits = topk == y[:, None]
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=1).sum().item()
        count += y.numel()
    model.train(was_training)
    loss_sum, correct1, correct5, count = all_reduce_sum([loss_sum, correct1, correct5, count], device)
    if count == 0:
        raise VitError("evaluation saw no images")
    return {
        "val_loss": loss_sum / count,
        "val_top1": 100.0 * correct1 / count,
        "val_top5": 100.0 * correct5 / count,
    }
