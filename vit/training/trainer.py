"""A whole training run: folder -> data -> model -> epochs -> files in the run folder.

    from vit.config import load_config
    from vit.training.trainer import train
    summary = train(load_config("configs/quickstart.yaml", ["data.root=data/shapes"]))

Files written to the run folder (rank 0 only): config.yaml, data_report.json, split.json,
metrics.jsonl, curves.png, last.pt, best.pt, and at the end overlays/ (AttnLRP maps of
``train.explain_samples`` held-out images; 0: none).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vit import run_folder
from vit.config import Config, to_dict, to_yaml
from vit.data import loader as loader_lib
from vit.data.sources import LoaderOptions, RunData, open_source
from vit.data.splits import balanced_class_weights
from vit.data.transforms import resolve_crop_pct
from vit.errors import ConfigError, OutputError, VitError
from vit.io import atomic_save, atomic_write, make_output_dir, remove_stale_temp_files, write_json
from vit.models.architecture import describe_model, describe_spec, model_from_spec
from vit.models.checkpoint import TrainingState, make_checkpoint
from vit.runtime import make_grad_scaler, resolve_device, resolve_precision
from vit.text import plural
from vit.training.budget import TimeBudget
from vit.training.defaults import fit_to_data, fit_workers, merge_notes
from vit.training.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    broadcast_object,
    init_distributed,
)
from vit.training.early_stop import EarlyStopping
from vit.training.epoch import (
    EpochOptions,
    EpochResult,
    EpochStart,
    StepParts,
    train_one_epoch,
    validate,
)
from vit.training.faults import StopRequest, explain_fault, stop_on_signals
from vit.training.model_build import (
    build_model,
    fit_timm_normalisation,
    read_run_pretrained,
    run_img_size,
)
from vit.training.optim import Schedule, build_optimizer, freeze_parameters
from vit.training.parallel import (
    check_strategy,
    full_model_state,
    full_optimizer_state,
    is_sharded,
    most_held,
    prepare_model,
)
from vit.training.quickstart import write_explorer
from vit.training.resume import ResumeAt, ResumePoint, capture_rng_state, truncate_metrics
from vit.training.run_files import (
    EpochSaver,
    default_run_dir,
    held_out_examples,
    tracked_images,
    write_overlays,
)
from vit.training.run_lock import RunLockedError, acquire_run_lock
from vit.training.run_log import epoch_metrics, log_epoch, log_model
from vit.training.skip_log import collect_skipped
from vit.training.trackers import Trackers, check_trackers, open_trackers

__all__ = ["train", "Trainer", "TrainSummary", "TrainingInterrupted", "ResumePoint",
           "build_model", "build_criterion"]

logger = logging.getLogger(__name__)


class TrainingInterrupted(VitError):
    """Ctrl-C or SIGTERM: a resumable last.pt was written; the message says how to resume."""

    def __init__(self, message: str, signal_name: str = "SIGINT"):
        super().__init__(message)
        self.signal_name = signal_name


@dataclass
class TrainSummary:
    run_dir: Path
    best_top1: float | None
    last_metrics: dict[str, Any]
    epochs_done: int
    overlays: Path | None = None  # RUN/overlays, when train.explain_samples > 0
    overlays_method: str | None = None  # the saliency method of the overlays
    held_out: list[str] = field(default_factory=list)  # the images of the overlays
    explorer: Path | None = None  # RUN/explorer.html, when train.explorer_page
    stopped_early: str | None = None  # why train.patience ended the run before train.epochs


def train(cfg: Config, *, resume: str | os.PathLike | ResumePoint | None = None,
          show_progress: bool = True, log_every_s: float | None = None) -> TrainSummary:
    """Run (or resume) a training run described by ``cfg``; returns where the files are.

    ``resume`` is a run folder, its last.pt, or a ``ResumePoint`` already read.
    ``log_every_s``: a progress line in the log at most that often during an epoch (for output
    that goes to a file, where the bar is off); ``None``: only the line after each epoch.
    """
    return Trainer(cfg, resume=resume, show_progress=show_progress,
                   log_every_s=log_every_s).run()


# --- the run ----------------------------------------------------------------------------------


class Trainer:
    """One run, in the order it happens:

        __init__       device, precision, processes, the run folder
        build()        data, model, loaders, optimizer, EMA, loss; the resume state put back
        write_start()  config.yaml, data_report.json, split.json, the first log lines
        run_epochs()   per epoch: train, validate, fit the time budget, save, log
        finish()       overlays of held-out images, the summary
    """

    def __init__(self, cfg: Config, *, resume: str | os.PathLike | ResumePoint | None = None,
                 show_progress: bool = True, log_every_s: float | None = None):
        self.started = time.perf_counter()
        self.device = resolve_device(cfg.train.device)
        self.precision = resolve_precision(cfg.train.precision, self.device)
        self.dist = init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.show_progress = show_progress and self.dist.is_main
        self.log_every_s = log_every_s if self.dist.is_main else None
        _check_train_config(cfg, self.dist)
        check_strategy(cfg.train.strategy, precision=self.precision, ema=cfg.train.ema)
        self.workers_chosen = cfg.data.workers is None
        cfg = self._log_choices(*fit_workers(cfg))
        if resume is not None and not isinstance(resume, ResumePoint):
            resume = ResumePoint.load(resume)
        self.resume = resume
        self.run_dir = self._make_run_dir(cfg.train.output)
        # files the loader workers could not decode, appended as they meet them
        self.skip_log = self.run_dir / "skipped.jsonl"
        if resume is None and self.dist.is_main:
            self.skip_log.unlink(missing_ok=True)
        self.cfg = replace(cfg, train=replace(cfg.train, output=str(self.run_dir)))
        self.metrics: dict[str, Any] = {}  # of the last finished epoch
        self.trackers = Trackers({})  # train.report_to, opened by write_start (main process)

    def run(self) -> TrainSummary:
        """The whole run; a fault of scale (``vit.training.faults``) ends it with one line."""
        self.stop_request = StopRequest()
        try:
            with stop_on_signals(self.run_dir, graceful_sigterm=not self.dist.enabled) as stop:
                self.stop_request = stop
                self.build()
                self.write_start()
                self.run_epochs()
                return self.finish()
        except (RuntimeError, OutputError) as e:
            fault = explain_fault(e, run_dir=self.run_dir, rank=self.dist.rank,
                                  stopped_by=self.stop_request.signal_name)
            if fault is None:
                raise
            raise fault from e
        finally:
            self.trackers.close({})  # an interrupted or failed run: close what is open
            if self.lock is not None:
                self.lock.release()

    def _make_run_dir(self, output: str | None) -> Path:
        if output:
            run_dir = Path(output)
        elif self.resume is not None:
            run_dir = self.resume.path.parent
        else:
            run_dir = default_run_dir()
        run_dir = Path(broadcast_object(str(run_dir)))
        self.lock, refused = None, None
        if self.dist.is_main:
            make_output_dir(run_dir)
            try:
                self.lock = acquire_run_lock(run_dir)  # refused while a live run writes here
            except RunLockedError as e:
                refused = str(e)
        refused = broadcast_object(refused)  # every process stops, not rank 0 alone
        if refused is not None:
            raise RunLockedError(refused)
        return run_dir

    # --- set-up -------------------------------------------------------------------------------

    def build(self) -> None:
        """Everything the epochs need, in the order the random generators are drawn from."""
        cfg = self.cfg
        torch.manual_seed(cfg.train.seed)
        model, img_size, data = self._model_and_data()
        cfg = self.cfg  # with the defaults fitted to the data
        self.model = model.to(self.device)
        self.preprocess = _preprocess(cfg, model)
        world = self.dist.world_size
        self.train_loader, self.val_loader, self.data = self.source.loaders(
            cfg, data, LoaderOptions(img_size=img_size, device=self.device,
                                     batch_size=cfg.train.batch_size // world,
                                     rank=self.dist.rank, world_size=world,
                                     skip_log=self.skip_log))
        self.batches_per_epoch = len(self.train_loader)
        if self.batches_per_epoch == 0:
            raise ConfigError(
                f"--batch-size {cfg.train.batch_size} is larger than the "
                f"{self.data.num_train} training images; lower it")
        self.schedule = Schedule(
            base_lr=cfg.train.lr, min_lr=cfg.train.min_lr,
            steps_per_epoch=math.ceil(self.batches_per_epoch / cfg.train.accum_steps),
            warmup_epochs=cfg.train.warmup_epochs, epochs=cfg.train.epochs)
        prepare_model(model, strategy=cfg.train.strategy, precision=self.precision,
                      activation_checkpointing=cfg.train.activation_checkpointing,
                      world_size=world)
        self.held_per_process = most_held(model)  # parameter elements, the largest shard
        self.optimizer = build_optimizer(model, lr=cfg.train.lr,
                                         weight_decay=cfg.train.weight_decay,
                                         layer_decay=cfg.train.layer_decay)
        self.scaler = make_grad_scaler(self.device, self.precision)
        self.ema = _make_ema(model, cfg) if cfg.train.ema else None
        criterion, mixup = build_criterion(
            cfg, num_classes=len(self.data.classes), train_targets=self.data.train_targets,
            device=self.device)
        at = self._restore()
        self.start_epoch, self.skip_batches = at.epoch, at.batches_done
        self.step, self.best_top1 = at.step, at.best_top1
        self.stopper = EarlyStopping(monitor=cfg.train.monitor, patience=cfg.train.patience)
        self.stopper.load_state_dict(at.early_stop, best_top1=at.best_top1, epoch=at.epoch)
        self.parts = StepParts(
            model=self._wrap(model), optimizer=self.optimizer, criterion=criterion,
            lr_at=self.schedule.lr_at, device=self.device, precision=self.precision,
            scaler=self.scaler, ema=self.ema, mixup=mixup, accum_steps=cfg.train.accum_steps,
            clip_grad=cfg.train.clip_grad)

    def _model_and_data(self) -> tuple[nn.Module, int, RunData]:
        """The model (the resumed run's architecture, pretrained weights, a preset or a timm
        model), its image size, and the data."""
        cfg, pretrained = self.cfg, None
        if self.resume is not None:  # the architecture the run was saved with
            spec = self.resume.state["model_config"]
            img_size = describe_spec(spec).img_size
        else:
            pretrained = read_run_pretrained(cfg)
            img_size = run_img_size(cfg, pretrained)
            cfg = self.cfg = self._log_choices(*fit_timm_normalisation(cfg, pretrained))
        self.source = open_source(cfg.data.root)
        data = self.source.prepare(cfg)
        cfg = self.cfg = self._log_choices(*fit_to_data(
            cfg, num_train=data.num_train, img_size=img_size,
            world_size=self.dist.world_size, workers_chosen=self.workers_chosen))
        if self.resume is not None:
            if self.resume.state["classes"] != data.classes:
                raise VitError(f"the data's classes {data.classes} differ from the resumed "
                               f"run's {self.resume.state['classes']}")
            model = model_from_spec(spec)
        else:
            model = build_model(cfg, classes=data.classes, pretrained=pretrained)
        if cfg.train.freeze != "none":
            trainable = freeze_parameters(model, cfg.train.freeze)
            logger.info("freeze=%s: training %d parameter tensors", cfg.train.freeze,
                        len(trainable))
        return model, img_size, data

    def _log_choices(self, cfg: Config, notes: list[tuple[int, str]]) -> Config:
        """Keep the defaults chosen for this run (``vit/training/defaults.py``) and why, for
        ``write_start`` to log once the run is set up (a mistake found on the way stays the
        only line)."""
        self.choices = merge_notes(getattr(self, "choices", []), notes)
        return cfg

    def _restore(self) -> ResumeAt:
        if self.resume is None:
            return ResumeAt(epoch=0, batches_done=0, step=0, best_top1=None)
        at = self.resume.restore(model=self.model, optimizer=self.optimizer, scaler=self.scaler,
                                 ema=self.ema)
        logger.info("resuming %s at epoch %d (batch %d), step %d", self.run_dir, at.epoch + 1,
                    at.batches_done, at.step)
        if self.dist.is_main:
            truncate_metrics(self.run_dir / run_folder.METRICS, at.epoch)
            remove_stale_temp_files(self.run_dir)  # writes that a crash cut short
        return at

    def _wrap(self, model: nn.Module) -> nn.Module:
        """The model the steps run: compiled and/or wrapped for DDP when asked (an FSDP model
        is sharded already, by ``prepare_model``)."""
        sharded = is_sharded(model)
        if self.cfg.train.compile:
            model = torch.compile(model, mode=self.cfg.train.compile_mode)
        if self.dist.enabled and not sharded:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        return model

    def write_start(self) -> None:
        """config.yaml, data_report.json and split.json, and what the run is, in the log."""
        if not self.dist.is_main:
            return
        cfg, data, run_dir = self.cfg, self.data, self.run_dir
        for level, line in self.choices:
            logger.log(level, "%s", line)
        atomic_write(run_dir / run_folder.CONFIG, to_yaml(cfg))
        self._collect_skipped()  # a resumed run: what its workers met before
        write_json(run_dir / run_folder.DATA_REPORT, data.report())
        write_json(run_dir / run_folder.SPLIT, data.split)
        logger.info("%s", self.source.describe(data))
        self.trackers = open_trackers(cfg.train.report_to, run_dir=run_dir, config=to_dict(cfg))
        log_model(self.model, cfg, num_classes=len(data.classes), device=self.device,
                  precision=self.precision)
        if self.dist.enabled:
            logger.info("%d processes, strategy %s: at most %d parameter elements (%.2fM) held "
                        "by one process", self.dist.world_size, cfg.train.strategy,
                        self.held_per_process, self.held_per_process / 1e6)

    # --- the epochs ---------------------------------------------------------------------------

    def run_epochs(self) -> None:
        self.saver = EpochSaver(self.run_dir, every_s=self.cfg.train.save_every_s)
        self.budget = TimeBudget(self.cfg.train.time_budget_min, max_epochs=self.cfg.train.epochs,
                                 fresh=self.start_epoch == 0)
        self.epoch_options = EpochOptions(
            show_progress=self.show_progress, log_every_s=self.log_every_s,
            should_stop=self._should_stop,
            on_step=self.trackers.log_step if self.trackers else None)
        self.elapsed_before = self.resume.elapsed_s if self.resume is not None else 0.0
        self.stop_request.graceful = True  # a stop signal now waits for the end of the step
        try:
            epoch = self.start_epoch
            # the time budget may change the count; train.patience may end the run before it
            while epoch < self.cfg.train.epochs and not self.stopper.should_stop:
                self._epoch(epoch)
                epoch += 1
        finally:
            self.stop_request.graceful = False
        self.epochs_done = epoch
        if self.stopper.should_stop and self.dist.is_main:
            logger.info("%s; stopped after epoch %d of %d", self.stopper.reason(), epoch,
                        self.cfg.train.epochs)

    def _epoch(self, epoch: int) -> None:
        result = self._train_epoch(epoch)
        val = validate(model=self._eval_model(), loader=self.val_loader, device=self.device,
                       precision=self.precision)
        self.metrics = epoch_metrics(
            epoch, result, val, images=all_reduce_sum([float(result.images)], self.device)[0],
            elapsed_s=self.elapsed_before + time.perf_counter() - self.started)
        if self.best_top1 is None or val["val_top1"] > self.best_top1:
            self.best_top1 = val["val_top1"]
        improved = self.stopper.update(epoch=epoch + 1, metrics=self.metrics)  # best.pt's epoch
        self._fit_time_budget(epoch)
        checkpoint = self._checkpoint(epoch + 1, batches_done=0)  # every process: FSDP gathers
        if self.dist.is_main:
            if self._collect_skipped():
                write_json(self.run_dir / run_folder.DATA_REPORT, self.data.report())
            final = epoch + 1 == self.cfg.train.epochs or self.stopper.should_stop
            self.saver.epoch_done(self.metrics, checkpoint, improved, force=final)
            log_epoch(epoch, self.cfg.train.epochs, result, self.metrics)
            self.trackers.log_epoch(epoch + 1, self.metrics)
        barrier()

    def _train_epoch(self, epoch: int) -> EpochResult:
        loader_lib.set_epoch(self.train_loader, epoch, start_batch=self.skip_batches)
        result = train_one_epoch(
            parts=self.parts, loader=self.train_loader, epoch=epoch,
            start=EpochStart(step=self.step, skip_batches=self.skip_batches,
                             num_batches=self.batches_per_epoch),
            options=self.epoch_options)
        self.step = result.step
        if result.interrupted:
            self._stop_interrupted(epoch, result.batches_done)
        self.skip_batches = 0
        return result

    def _collect_skipped(self) -> bool:
        """Main process: what loader workers met, into data_report.json (``skip_log``)."""
        return collect_skipped(self.data, self.skip_log, (self.train_loader, self.val_loader))

    def _stop_interrupted(self, epoch: int, batches_done: int) -> None:
        """Ctrl-C or SIGTERM: a resumable last.pt (and the best weights waiting in memory), then
        stop."""
        last = self.run_dir / run_folder.LAST
        checkpoint = self._checkpoint(epoch, batches_done=batches_done)
        if self.dist.is_main:
            self.saver.flush_best()
            atomic_save(checkpoint, last)
        barrier()
        name = self.stop_request.signal_name or "SIGINT"
        how = "interrupted by SIGINT (Ctrl-C)" if name == "SIGINT" else f"stopped by {name}"
        raise TrainingInterrupted(
            f"{how} in epoch {epoch + 1} after {batches_done} of {self.batches_per_epoch} "
            f"batches; resumable checkpoint {last}; continue with: --resume {self.run_dir}",
            signal_name=name)

    def _fit_time_budget(self, epoch: int) -> None:
        """With ``train.time_budget_min``: set the number of epochs to what fits, and end the
        learning-rate schedule there."""
        epochs = self.budget.epochs_after(epoch, self.metrics["elapsed_s"])
        if epochs is None:
            return
        epochs = int(broadcast_object(epochs))
        if epochs == self.cfg.train.epochs:
            return
        self.cfg = replace(self.cfg, train=replace(self.cfg.train, epochs=epochs))
        self.schedule.end_with(epochs)
        if self.dist.is_main:
            atomic_write(self.run_dir / run_folder.CONFIG, to_yaml(self.cfg))
            logger.info("time budget %.1f min: %s fit (the schedule ends there)",
                        self.cfg.train.time_budget_min, plural(epochs, "epoch"))

    def _should_stop(self) -> bool:
        """Ctrl-C in any process stops all of them after the same step."""
        flag = float(self.stop_request.event.is_set())
        if not self.dist.enabled:
            return bool(flag)
        return all_reduce_sum([flag], self.device)[0] > 0

    def _eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def _checkpoint(self, epoch: int, *, batches_done: int) -> dict[str, Any] | None:
        """What last.pt holds after ``epoch`` epochs and ``batches_done`` batches of the next.

        Every process calls it: the full model (FSDP) and optimizer state are gathered from all
        of them onto rank 0, the only one that gets a checkpoint (None elsewhere)."""
        ema = self.ema
        gathered = full_model_state(self.model) if is_sharded(self.model) else None
        optimizer_state = full_optimizer_state(self.model, self.optimizer)
        if not self.dist.is_main:
            return None
        training = TrainingState(
            optimizer=self.optimizer, scaler=self.scaler,
            ema_model=ema.module if ema is not None else None,
            train_model=self.model if ema is not None else None,
            extra={"batches_done": batches_done, "rng": capture_rng_state(),
                   "early_stop": self.stopper.state_dict()},
            optimizer_state=optimizer_state)
        return make_checkpoint(
            model=self._eval_model(), classes=self.data.classes, preprocess=self.preprocess,
            config=to_dict(self.cfg), epoch=epoch, step=self.step, best_top1=self.best_top1,
            metrics=self.metrics, training=training, model_state=gathered)

    # --- the end ------------------------------------------------------------------------------

    def finish(self) -> TrainSummary:
        if self.dist.is_main and self.data.skipped:
            logger.warning("%d unreadable files skipped; they are listed with the reason in %s",
                           len(self.data.skipped), self.run_dir / run_folder.DATA_REPORT)
        drawn, held_out = None, []
        if self.dist.is_main and self.cfg.train.explain_samples > 0 and self.data.val_samples:
            held_out = held_out_examples(self.data.val_samples, self.cfg.train.explain_samples)
            drawn = write_overlays(self.run_dir, held_out, device=self.device)
        page = None
        if self.dist.is_main and self.cfg.train.explorer_page and held_out:
            page = write_explorer(self.run_dir, held_out, device=self.cfg.train.device)
        if self.trackers:  # curves, confusion matrix and overlays, then the final numbers
            self.trackers.log_images(tracked_images(self.run_dir, self.data.val_samples,
                                                    device=self.device), step=self.epochs_done)
            self.trackers.close({"best_val_top1": self.best_top1,
                                 "epochs_done": self.epochs_done, **self.metrics})
        return TrainSummary(run_dir=self.run_dir, best_top1=self.best_top1,
                            last_metrics=self.metrics, epochs_done=self.epochs_done,
                            overlays=drawn[0] if drawn else None,
                            overlays_method=drawn[1] if drawn else None, held_out=held_out,
                            explorer=page,
                            stopped_early=self.stopper.reason() if self.stopper.should_stop
                            else None)


# --- model, loss ------------------------------------------------------------------------------


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


def _check_train_config(cfg: Config, dist_info: DistInfo) -> None:
    t = cfg.train
    if t.batch_size is not None and t.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {t.batch_size}")
    if t.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {t.epochs}")
    if t.accum_steps < 1:
        raise ConfigError(f"train.accum_steps must be at least 1, got {t.accum_steps}")
    if t.batch_size is not None and t.batch_size % dist_info.world_size:
        raise ConfigError(
            f"--batch-size {t.batch_size} is the global batch and must divide evenly over "
            f"{dist_info.world_size} processes")
    if not 0 < cfg.data.val_fraction < 1:
        raise ConfigError(f"--val-fraction must be between 0 and 1, got {cfg.data.val_fraction}")
    if cfg.data.workers is not None and cfg.data.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {cfg.data.workers}")
    if t.time_budget_min is not None and t.time_budget_min <= 0:
        raise ConfigError(f"train.time_budget_min must be positive, got {t.time_budget_min}")
    if t.save_every_s < 0:
        raise ConfigError(f"train.save_every_s must be >= 0, got {t.save_every_s}")
    check_trackers(t.report_to)  # a missing extra: one line, before any work


def _make_ema(model: nn.Module, cfg: Config) -> nn.Module:
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=cfg.train.ema_decay, use_warmup=True)
