"""Tiny training runs: the config, the command line, a run "killed" in an epoch."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vit.config import load_config
from vit.training.trainer import train

ROOT = Path(__file__).resolve().parents[2]  # the repository
TINY_MODEL = ["model.name=vit_nano_patch4_32", "model.img_size=16", "model.embed_dim=32",
              "model.depth=2", "model.num_heads=2", "model.drop_path_rate=0.0"]


def tiny_config(data: Path, out: Path, *extra: str):
    """2 epochs of the tiny 16 px model on ``data`` (a quarter held out), on the CPU."""
    return load_config(None, [
        f"data.root={data}", f"train.output={out}", "train.device=cpu", "data.workers=0",
        "train.batch_size=8", "train.epochs=2", "train.lr=3e-3", "train.warmup_epochs=0.5",
        "data.randaug_n=1", "data.val_fraction=0.25", "train.explain_samples=0", *TINY_MODEL,
        *extra])


def cli_args(data: Path, out: Path, epochs: int) -> list[str]:
    """``train.py``'s arguments for the run of ``tiny_config``."""
    return ["--data", str(data), "--output", str(out), "--device", "cpu", "--workers", "0",
            "--batch-size", "8", "--epochs", str(epochs), "--val-fraction", "0.25",
            "train.explain_samples=0", "data.randaug_n=1", *TINY_MODEL]


class Killed(Exception):
    """Raised inside a training run to stand for a process killed there."""


def train_killed_in_epoch(monkeypatch, config, epoch: int) -> None:
    """Run ``train(config)`` and "kill" it as epoch ``epoch`` (1-based) starts: the epochs
    before it finished and were checkpointed, nothing after survives. Afterwards the real
    ``train_one_epoch`` is back in place, ready for ``--resume``."""
    import vit.training.trainer as trainer_mod

    real = trainer_mod.train_one_epoch

    def dies(**kwargs):
        if kwargs["epoch"] == epoch - 1:  # the trainer counts epochs from 0
            raise Killed
        return real(**kwargs)

    monkeypatch.setattr(trainer_mod, "train_one_epoch", dies)
    try:
        with pytest.raises(Killed):
            train(config, show_progress=False)
    finally:
        monkeypatch.setattr(trainer_mod, "train_one_epoch", real)


def start_train_script(args: list[str], **kwargs) -> subprocess.Popen:
    """``python train.py ARGS`` in a subprocess, its output piped."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until ``path`` exists; fails when ``proc`` ends first or after ``timeout`` seconds."""
    start = time.time()
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process ended early ({proc.returncode}):\n{err}")
        if time.time() - start > timeout:
            proc.kill()
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.05)
