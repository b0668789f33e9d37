"""A run's set-up, in the order it happens: the machine, the checks, the run folder, the model
and the data, then everything the epochs run on. Explicit inputs; each step returns its parts.

    machine = open_machine(cfg.train)             # device, precision, processes
    check_run_config(cfg, machine)                # a mistake: one line, before any work
    run_dir, lock = open_run_folder(...)          # created, and locked against a second run
    torch.manual_seed(cfg.train.seed)
    inputs = model_and_data(cfg, ...)             # the config fitted to the data
    parts = build_parts(inputs, machine=machine, ...)  # loaders, optimizer, EMA, loss, resume

The random generators are drawn in this order on every run (a resumed run then puts them back
as they were saved), so the order of the steps in ``model_and_data`` and ``build_parts`` is
part of the behaviour: bit-identical resume depends on it.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vit import run_folder
from vit.config import Config, TrainConfig
from vit.data.sources import DataSource, LoaderOptions, RunData, open_source
from vit.data.splits import balanced_class_weights
from vit.data.transforms import resolve_crop_pct
from vit.errors import ConfigError, VitError
from vit.io import make_output_dir, remove_stale_temp_files
from vit.models.architecture import describe_model, describe_spec, model_from_spec
from vit.runtime import make_grad_scaler, resolve_device, resolve_precision
from vit.training.defaults import Notes, fit_to_data, merge_notes
from vit.training.distributed import DistInfo, broadcast_object, init_distributed
from vit.training.early_stop import EarlyStopping
from vit.training.epoch import StepParts
from vit.training.model_build import (
    build_model,
    fit_timm_normalisation,
    read_run_pretrained,
    run_img_size,
)
from vit.training.optim import Schedule, build_optimizer, freeze_parameters
from vit.training.parallel import check_strategy, is_sharded, most_held, prepare_model
from vit.training.resume import ResumeAt, ResumePoint, truncate_metrics
from vit.training.run_lock import RunLock, RunLockedError, acquire_run_lock
from vit.training.trackers import check_trackers

__all__ = ["Machine", "open_machine", "check_run_config", "open_run_folder", "RunInputs",
           "model_and_data", "RunParts", "build_parts", "build_criterion"]

logger = logging.getLogger(__name__)


# --- before any work --------------------------------------------------------------------------


@dataclass(frozen=True)
class Machine:
    """Where the run computes: the device (this process's GPU under torchrun), the precision,
    the processes."""

    device: torch.device
    precision: str
    dist: DistInfo


def open_machine(train: TrainConfig) -> Machine:
    """The device and precision ``train`` asks for, and the process group torchrun started."""
    device = resolve_device(train.device)
    precision = resolve_precision(train.precision, device)
    dist = init_distributed(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    return Machine(device=device, precision=precision, dist=dist)


def check_run_config(cfg: Config, machine: Machine) -> None:
    """Settings no run can honour, refused before anything is built."""
    t = cfg.train
    if t.batch_size is not None and t.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {t.batch_size}")
    if t.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {t.epochs}")
    if t.accum_steps < 1:
        raise ConfigError(f"train.accum_steps must be at least 1, got {t.accum_steps}")
    world_size = machine.dist.world_size
    if t.batch_size is not None and t.batch_size % world_size:
        raise ConfigError(
            f"--batch-size {t.batch_size} is the global batch and must divide evenly over "
            f"{world_size} processes")
    if not 0 < cfg.data.val_fraction < 1:
        raise ConfigError(f"--val-fraction must be between 0 and 1, got {cfg.data.val_fraction}")
    if cfg.data.workers is not None and cfg.data.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {cfg.data.workers}")
    if t.time_budget_min is not None and t.time_budget_min <= 0:
        raise ConfigError(f"train.time_budget_min must be positive, got {t.time_budget_min}")
    if t.save_every_s < 0:
        raise ConfigError(f"train.save_every_s must be >= 0, got {t.save_every_s}")
    check_trackers(t.report_to)  # a missing extra: one line, before any work
    check_strategy(t.strategy, precision=machine.precision, ema=t.ema)


def open_run_folder(output: str | None, *, resume: ResumePoint | None,
                    dist: DistInfo) -> tuple[Path, RunLock | None]:
    """The run folder (``output``, the resumed run's, or a new one under runs/), created and
    locked by the main process (``RunLockedError`` in every process while a live run writes
    there); the lock is None elsewhere."""
    if output:
        run_dir = Path(output)
    elif resume is not None:
        run_dir = resume.path.parent
    else:
        run_dir = Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(broadcast_object(str(run_dir)))
    lock, refused = None, None
    if dist.is_main:
        make_output_dir(run_dir)
        try:
            lock = acquire_run_lock(run_dir)  # refused while a live run writes here
        except RunLockedError as e:
            refused = str(e)
    refused = broadcast_object(refused)  # every process stops, not rank 0 alone
    if refused is not None:
        raise RunLockedError(refused)
    return run_dir, lock


# --- the model and the data -------------------------------------------------------------------


@dataclass
class RunInputs:
    """A run's model and data, and its config with the defaults fitted to them."""

    cfg: Config
    notes: Notes  # the defaults chosen and why, for the log (``vit/training/defaults.py``)
    source: DataSource
    data: RunData
    model: nn.Module  # on the CPU, not yet trained or sharded
    img_size: int


def model_and_data(cfg: Config, *, resume: ResumePoint | None, world_size: int,
                   workers_chosen: bool) -> RunInputs:
    """The model (the resumed run's architecture, pretrained weights, a preset or a timm
    model), its image size, and the data. ``workers_chosen``: ``data.workers`` was chosen by
    ``fit_workers``, not the user."""
    pretrained, notes = None, []
    if resume is not None:  # the architecture the run was saved with
        spec = resume.state["model_config"]
        img_size = describe_spec(spec).img_size
    else:
        pretrained = read_run_pretrained(cfg)
        img_size = run_img_size(cfg, pretrained)
        cfg, notes = fit_timm_normalisation(cfg, pretrained)
    source = open_source(cfg.data.root)
    data = source.prepare(cfg)
    cfg, fitted = fit_to_data(cfg, num_train=data.num_train, img_size=img_size,
                              world_size=world_size, workers_chosen=workers_chosen)
    notes = merge_notes(notes, fitted)
    if resume is not None:
        if resume.state["classes"] != data.classes:
            raise VitError(f"the data's classes {data.classes} differ from the resumed "
                           f"run's {resume.state['classes']}")
        model = model_from_spec(spec)
    else:
        model = build_model(cfg, classes=data.classes, pretrained=pretrained)
    if cfg.train.freeze != "none":
        trainable = freeze_parameters(model, cfg.train.freeze)
        logger.info("freeze=%s: training %d parameter tensors", cfg.train.freeze, len(trainable))
    return RunInputs(cfg=cfg, notes=notes, source=source, data=data, model=model,
                     img_size=img_size)


# --- what the epochs run on -------------------------------------------------------------------


@dataclass
class RunParts:
    """What the epochs run on (``build_parts``)."""

    source: DataSource
    data: RunData
    model: nn.Module  # the plain model on the device (sharded under FSDP): what is saved
    preprocess: dict[str, Any]  # the checkpoints' preprocessing
    train_loader: Any
    val_loader: Any
    batches_per_epoch: int
    schedule: Schedule
    steps: StepParts  # the model the steps run (compiled, DDP), optimizer, scaler, EMA, loss
    at: ResumeAt  # where the run starts: epoch 0, or where the resumed run was saved
    stopper: EarlyStopping  # train.patience, its count put back on resume
    held_per_process: int  # parameter elements, the largest shard

    @property
    def loaders(self) -> tuple[Any, Any]:
        return self.train_loader, self.val_loader

    @property
    def eval_model(self) -> nn.Module:
        """The model validated and saved for prediction: the EMA's when there is one."""
        return self.steps.ema.module if self.steps.ema is not None else self.model


def build_parts(inputs: RunInputs, *, machine: Machine, skip_log: Path,
                resume: ResumePoint | None, run_dir: Path) -> RunParts:
    """Loaders, schedule, optimizer, GradScaler, EMA, loss and early stopping for ``inputs``,
    the resumed run's state put back; ``skip_log``: where loader workers append the files they
    cannot decode."""
    cfg, t, model, world = inputs.cfg, inputs.cfg.train, inputs.model, machine.dist.world_size
    model.to(machine.device)
    preprocess = _preprocess(cfg, model)
    train_loader, val_loader, data = inputs.source.loaders(
        cfg, inputs.data, LoaderOptions(img_size=inputs.img_size, device=machine.device,
                                        batch_size=t.batch_size // world, rank=machine.dist.rank,
                                        world_size=world, skip_log=skip_log))
    batches = len(train_loader)
    if batches == 0:
        raise ConfigError(f"--batch-size {t.batch_size} is larger than the {data.num_train} "
                          "training images; lower it")
    schedule = Schedule(base_lr=t.lr, min_lr=t.min_lr,
                        steps_per_epoch=math.ceil(batches / t.accum_steps),
                        warmup_epochs=t.warmup_epochs, epochs=t.epochs)
    prepare_model(model, strategy=t.strategy, precision=machine.precision,
                  activation_checkpointing=t.activation_checkpointing, world_size=world)
    held = most_held(model)
    optimizer = build_optimizer(model, lr=t.lr, weight_decay=t.weight_decay,
                                layer_decay=t.layer_decay)
    scaler = make_grad_scaler(machine.device, machine.precision)
    ema = _make_ema(model, t.ema_decay) if t.ema else None
    criterion, mixup = build_criterion(cfg, num_classes=len(data.classes),
                                       train_targets=data.train_targets, device=machine.device)
    at = _restore(resume, model=model, optimizer=optimizer, scaler=scaler, ema=ema,
                  run_dir=run_dir, is_main=machine.dist.is_main)
    stopper = EarlyStopping(monitor=t.monitor, patience=t.patience)
    stopper.load_state_dict(at.early_stop, best_top1=at.best_top1, epoch=at.epoch)
    steps = StepParts(model=_wrap(model, t, machine), optimizer=optimizer, criterion=criterion,
                      lr_at=schedule.lr_at, device=machine.device, precision=machine.precision,
                      scaler=scaler, ema=ema, mixup=mixup, accum_steps=t.accum_steps,
                      clip_grad=t.clip_grad)
    return RunParts(source=inputs.source, data=data, model=model, preprocess=preprocess,
                    train_loader=train_loader, val_loader=val_loader, batches_per_epoch=batches,
                    schedule=schedule, steps=steps, at=at, stopper=stopper,
                    held_per_process=held)


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


def _preprocess(cfg: Config, model: nn.Module) -> dict[str, Any]:
    img_size = describe_model(model).img_size
    crop_pct = resolve_crop_pct(img_size, cfg.data.crop_pct)
    return {"img_size": img_size, "mean": list(cfg.data.mean), "std": list(cfg.data.std),
            "crop_pct": crop_pct}


def _make_ema(model: nn.Module, decay: float) -> nn.Module:
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay, use_warmup=True)


def _restore(resume: ResumePoint | None, *, model: nn.Module, optimizer: torch.optim.Optimizer,
             scaler: torch.amp.GradScaler | None, ema: nn.Module | None, run_dir: Path,
             is_main: bool) -> ResumeAt:
    """Where the run starts; a resumed run's state put back, and its folder tidied (the
    metrics of the epochs it redoes, the writes a crash cut short)."""
    if resume is None:
        return ResumeAt(epoch=0, batches_done=0, step=0, best_top1=None)
    at = resume.restore(model=model, optimizer=optimizer, scaler=scaler, ema=ema)
    logger.info("resuming %s at epoch %d (batch %d), step %d", run_dir, at.epoch + 1,
                at.batches_done, at.step)
    if is_main:
        truncate_metrics(run_dir / run_folder.METRICS, at.epoch)
        remove_stale_temp_files(run_dir)  # writes that a crash cut short
    return at


def _wrap(model: nn.Module, train: TrainConfig, machine: Machine) -> nn.Module:
    """The model the steps run: compiled and/or wrapped for DDP when asked (an FSDP model
    is sharded already, by ``prepare_model``)."""
    sharded = is_sharded(model)
    if train.compile:
        model = torch.compile(model, mode=train.compile_mode)
    if machine.dist.enabled and not sharded:
        device_ids = [machine.device.index] if machine.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return model
