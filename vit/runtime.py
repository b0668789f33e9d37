"""Where and how the model runs: device, precision, autocast, wrappers. Chosen once, asked here.

Training (``vit.training.trainer``, ``vit.training.epoch``) and inference (``vit.inference.classifier``) both import this
module; nothing else decides a device or a precision.

    device = resolve_device("auto")                   # cuda when there is a GPU, else cpu
    precision = resolve_precision("auto", device)     # bf16 / fp16 on GPUs, fp32 on the CPU
    with autocast(device, precision):
        logits = model(images)
"""

from __future__ import annotations

import contextlib
import ctypes
import sys

import torch
from torch import nn

from vit.errors import ConfigError

__all__ = [
    "PRECISIONS",
    "resolve_device",
    "resolve_precision",
    "inference_precision",
    "autocast",
    "make_grad_scaler",
    "unwrap_model",
    "keep_freed_memory",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


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
    """Training precision: ``auto`` -> bf16 on GPUs that support it, fp16 on older GPUs, fp32
    on the CPU."""
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


def inference_precision(device: torch.device) -> str:
    """Prediction precision: bf16 autocast on GPUs that support it, fp32 elsewhere (fp16 needs
    the loss scaling only training has)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


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


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside DistributedDataParallel (``.module``) and torch.compile
    (``._orig_mod``) wrappers, in any nesting."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def keep_freed_memory() -> bool:
    """Keep freed memory mapped between steps (glibc on Linux); True if it took effect.

    A process-wide allocator setting that makes CPU training faster without changing any
    result. By default glibc unmaps large freed blocks and trims the heap, so the next step
    page-faults the same memory back in: 5,000 to 60,000 minor faults per ViT step on CPU,
    5-10% of its time (benchmarks/RESULTS.md). Fixing the trim and mmap thresholds, as the
    environment variables ``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_MMAP_THRESHOLD_`` would, removes
    the faults after the first step. Elsewhere (macOS, musl) it does nothing.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    trimmed = libc.mallopt(m_trim_threshold, 1 << 30)
    mapped = libc.mallopt(m_mmap_threshold, 32 << 20)  # 32 MiB: glibc's largest allowed value
    return bool(trimmed and mapped)
