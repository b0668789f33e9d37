"""Exact resume: the random generators, the run's last.pt read once, and its state put back.

A resumed run ends with weights bit-identical to one that was never stopped (on the CPU, with a
fixed seed): last.pt holds the weights, optimizer, GradScaler and EMA state and every random
generator, and the batch order and augmentations are functions of (seed, epoch, index).
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vit import run_folder
from vit.errors import CheckpointError
from vit.io import atomic_write, read_jsonl
from vit.models.checkpoint import load_checkpoint
from vit.training.parallel import load_model_state, load_optimizer_state

__all__ = [
    "capture_rng_state",
    "restore_rng_state",
    "find_resume_checkpoint",
    "ResumePoint",
    "ResumeAt",
    "truncate_metrics",
]

logger = logging.getLogger(__name__)


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU and (when present) every CUDA generator, as plain data."""
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "numpy": {"bit_generator": name, "keys": keys.tolist(), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Put the generators back exactly as ``capture_rng_state`` found them."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state((npy["bit_generator"], np.asarray(npy["keys"], dtype=np.uint32),
                         npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda") or []
    if cuda_states and not torch.cuda.is_available():
        logger.warning("the checkpoint holds CUDA random state but no GPU is available; "
                       "GPU randomness will not continue exactly")
    elif cuda_states:
        n = torch.cuda.device_count()
        if len(cuda_states) != n:
            logger.warning("the checkpoint holds random state for %d GPUs, this machine has %d",
                           len(cuda_states), n)
        for i, cuda_state in enumerate(cuda_states[:n]):
            torch.cuda.set_rng_state(cuda_state.cpu(), i)


def find_resume_checkpoint(path: str | os.PathLike) -> Path:
    """``RUN_DIR`` -> ``RUN_DIR/last.pt``; a ``.pt`` file is returned as is."""
    path = Path(path)
    if path.is_dir():
        last = path / run_folder.LAST
        if not last.is_file():
            raise CheckpointError(
                f"{path} holds no last.pt to resume from; pass a run folder written by "
                "`vit train` or a .pt file")
        return last
    if not path.exists():
        raise CheckpointError(f"cannot resume: {path} does not exist")
    return path


@dataclass(frozen=True)
class ResumeAt:
    """Where a resumed run picks up: what last.pt records of the run's progress
    (``vit.training.checkpointing.run_checkpoint`` writes it, ``ResumePoint.restore`` reads it)."""

    epoch: int  # epochs finished
    batches_done: int  # batches of the next epoch already trained (an interrupted epoch)
    step: int  # optimizer steps so far
    best_top1: float | None
    early_stop: dict[str, Any] | None = None  # EarlyStopping.state_dict() of the saved run


@dataclass(frozen=True)
class ResumePoint:
    """A run's last.pt, read once: by the CLI for the run's config, then by ``train``."""

    path: Path
    state: dict[str, Any]

    @classmethod
    def load(cls, run_dir_or_checkpoint: str | os.PathLike) -> ResumePoint:
        """``RUN_DIR`` (its last.pt) or a ``.pt`` file."""
        path = find_resume_checkpoint(run_dir_or_checkpoint)
        return cls(path=path, state=load_checkpoint(path, map_location="cpu"))

    def restore(self, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler | None, ema: nn.Module | None) -> ResumeAt:
        """Put the training weights, optimizer, scaler, EMA and random generators back."""
        state = self.state
        if "optimizer" not in state or state.get("optimizer") is None:
            raise CheckpointError("this checkpoint holds no optimizer state and cannot be "
                                  "resumed; use it with --pretrained to start a new run")
        load_model_state(model, state.get("train_model") or state["model"])
        try:
            load_optimizer_state(model, optimizer, state["optimizer"])
        except (ValueError, KeyError) as e:  # torch: "... parameter group that doesn't match the size ..."
            raise CheckpointError(
                f"this checkpoint's optimizer state does not fit the parameter groups of this run "
                f"({e}); the groups changed (train.freeze, train.layer_decay or "
                "train.weight_decay differ, or the checkpoint was written by an older vit whose "
                "layer decay grouped the final norm with the head); start a new run from its "
                "weights with --pretrained") from e
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema"):
            ema.module.load_state_dict(state["ema"])
        extra = state.get("extra") or {}
        if extra.get("rng"):
            restore_rng_state(extra["rng"])
        return ResumeAt(epoch=state["epoch"], batches_done=int(extra.get("batches_done", 0)),
                        step=state["step"], best_top1=state.get("best_top1"),
                        early_stop=extra.get("early_stop"))

    @property
    def elapsed_s(self) -> float:
        """Wall time of the sessions before (what metrics.jsonl's elapsed_s continues from)."""
        return float((self.state.get("metrics") or {}).get("elapsed_s", 0.0))


def truncate_metrics(path: Path, epochs_done: int) -> None:
    """Keep only the metrics of epochs a resumed run will not redo."""
    records = [r for r in read_jsonl(path) if r.get("epoch", 0) <= epochs_done]
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in records))
