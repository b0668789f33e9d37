"""Experiment trackers: TensorBoard, Weights & Biases and MLflow, as ``train.report_to`` asks.

    trackers = open_trackers(["tensorboard"], run_dir=run_dir, config=to_dict(cfg))
    trackers.log_step(step, {"loss": 0.9, "lr": 1e-3, "images_per_s": 850.0})
    trackers.log_epoch(epoch, metrics)             # a metrics.jsonl line
    trackers.log_images({"curves": run_dir / "curves.png"}, step=epoch)
    trackers.close(summary={"best_val_top1": 87.5})

Each backend is an optional extra, imported only when asked for; ``check_trackers`` says which
one is missing (one line with the install command) before any work. Where they write:

  tensorboard  RUN/tensorboard (``tensorboard --logdir RUN/tensorboard``), through
               ``torch.utils.tensorboard.SummaryWriter``
  wandb        the W&B project ``$WANDB_PROJECT`` (default ``vit``), files under RUN/wandb;
               ``WANDB_MODE=offline`` keeps the run on disk for ``wandb sync``
  mlflow       ``$MLFLOW_TRACKING_URI`` when set, else a ``file:`` store in RUN/mlruns
               (experiment ``$MLFLOW_EXPERIMENT_NAME``, default ``vit``)

Per optimizer step: ``train/loss``, ``train/lr``, ``train/images_per_s`` (x axis: the step);
per epoch: every key of metrics.jsonl under ``epoch/`` (x axis: the epoch); the resolved config
as hyperparameters; at the end the images the trainer hands over (curves, confusion matrix,
overlays). A tracker that fails while logging is warned about once and dropped: tracking must
never end a training run.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vit.errors import ConfigError

__all__ = ["BACKENDS", "Trackers", "check_trackers", "open_trackers", "flatten"]

logger = logging.getLogger(__name__)

# report_to name -> the module it needs (the extra that installs it has the same name)
BACKENDS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def check_trackers(names: Sequence[str]) -> list[str]:
    """The names, checked: known, and their package installed (``ConfigError`` otherwise, one
    line naming the install command)."""
    for name in names:
        if name not in BACKENDS:
            raise ConfigError(f"train.report_to: unknown tracker {name!r}; choose from "
                              f"{', '.join(BACKENDS)}, e.g. train.report_to=[tensorboard]")
        if importlib.util.find_spec(BACKENDS[name]) is None:
            raise ConfigError(f"train.report_to={name} needs the {name} package: "
                              f"pip install -e \".[{name}]\" (or pip install \"vit[{name}]\")")
    return list(dict.fromkeys(names))


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}``; lists and None become strings."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, bool | int | float | str) else str(value)
    return flat


def _numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


# --- the backends -----------------------------------------------------------------------------


class _TensorBoard:
    def __init__(self, run_dir: Path, config: Mapping[str, Any]):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.hparams = flatten(config)
        lines = "\n".join(f"    {k}: {v}" for k, v in self.hparams.items())
        self.writer.add_text("config", lines)

    def log_step(self, step: int, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(f"train/{key}", value, step)

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(f"epoch/{key}", value, epoch)

    def log_image(self, name: str, path: Path, step: int) -> None:
        image = np.asarray(Image.open(path).convert("RGB"))
        self.writer.add_image(name, image, step, dataformats="HWC")

    def close(self, summary: Mapping[str, float]) -> None:
        # the hyperparameters beside the final numbers, in this run's own folder
        self.writer.add_hparams(self.hparams, {f"hparam/{k}": v for k, v in summary.items()},
                                run_name=".")
        self.writer.close()


class _WandB:
    def __init__(self, run_dir: Path, config: Mapping[str, Any]):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "vit"), dir=str(run_dir),
                              name=run_dir.name, config=dict(config))
        self.run.define_metric("train/step")
        self.run.define_metric("train/*", step_metric="train/step")
        self.run.define_metric("epoch")
        self.run.define_metric("epoch/*", step_metric="epoch")

    def log_step(self, step: int, metrics: Mapping[str, float]) -> None:
        self.run.log({"train/step": step, **{f"train/{k}": v for k, v in metrics.items()}})

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self.run.log({"epoch": epoch, **{f"epoch/{k}": v for k, v in metrics.items()}})

    def log_image(self, name: str, path: Path, step: int) -> None:
        self.run.log({"epoch": step, f"images/{name}": self.wandb.Image(str(path))})

    def close(self, summary: Mapping[str, float]) -> None:
        self.run.summary.update(dict(summary))
        self.run.finish()


class _MLflow:
    def __init__(self, run_dir: Path, config: Mapping[str, Any]):
        import mlflow

        self.mlflow = mlflow
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            # MLflow 3 asks for this opt-in to a file: store; the run folder is ours to use
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri((run_dir / "mlruns").resolve().as_uri())
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "vit"))
        self.run = mlflow.start_run(run_name=run_dir.name)
        mlflow.log_params(flatten(config))

    def log_step(self, step: int, metrics: Mapping[str, float]) -> None:
        self.mlflow.log_metrics({f"train/{k}": v for k, v in metrics.items()}, step=step)

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self.mlflow.log_metrics({f"epoch/{k}": v for k, v in metrics.items()}, step=epoch)

    def log_image(self, name: str, path: Path, step: int) -> None:  # noqa: ARG002
        folder = Path("images") / Path(name).parent  # "overlays/grid" -> images/overlays
        self.mlflow.log_artifact(str(path), artifact_path=folder.as_posix())

    def close(self, summary: Mapping[str, float]) -> None:
        self.mlflow.log_metrics({f"final/{k}": v for k, v in summary.items()})
        self.mlflow.end_run()


_CLASSES = {"tensorboard": _TensorBoard, "wandb": _WandB, "mlflow": _MLflow}


# --- all of them ------------------------------------------------------------------------------


class Trackers:
    """The open backends; each call goes to all of them. Empty: every call does nothing."""

    def __init__(self, backends: dict[str, Any]):
        self.backends = backends

    def __bool__(self) -> bool:
        return bool(self.backends)

    def _each(self, method: str, *args: Any) -> None:
        for name, backend in list(self.backends.items()):
            try:
                getattr(backend, method)(*args)
            except Exception as e:  # tracking must never end a training run
                logger.warning("train.report_to=%s failed (%s: %s); no longer logging to it",
                               name, type(e).__name__, e)
                del self.backends[name]

    def log_step(self, step: int, metrics: Mapping[str, Any]) -> None:
        self._each("log_step", step, _numbers(metrics))

    def log_epoch(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        self._each("log_epoch", epoch, _numbers(metrics))

    def log_images(self, images: Mapping[str, Path], step: int) -> None:
        for name, path in images.items():
            if Path(path).is_file():
                self._each("log_image", name, Path(path), step)

    def close(self, summary: Mapping[str, Any]) -> None:
        self._each("close", _numbers(summary))
        self.backends = {}


def open_trackers(names: Sequence[str], *, run_dir: Path, config: Mapping[str, Any]
                  ) -> Trackers:
    """Start a run in each tracker named (``check_trackers`` first)."""
    backends = {}
    for name in check_trackers(names):
        backends[name] = _CLASSES[name](Path(run_dir), config)
        logger.info("train.report_to: logging to %s", name)
    return Trackers(backends)
