"""A whole training run: folder -> data -> model -> epochs -> files in the run folder.

    from vit.config import load_config
    from vit.training.trainer import train
    summary = train(load_config("configs/quickstart.yaml", ["data.root=data/shapes"]))

Files written to the run folder (rank 0 only): config.yaml, data_report.json, split.json,
metrics.jsonl, curves.png, last.pt, best.pt, and at the end overlays/ (AttnLRP maps of
``train.explain_samples`` held-out images; 0: none).

``Trainer`` tells the run in order over small pieces: ``setup`` (the machine, the run folder,
the model, the data, what the epochs run on), ``run_start`` (the start files), ``epoch`` (one
epoch, one validation pass), ``checkpointing`` (what last.pt and best.pt hold) and
``run_files`` (the files as epochs end, the overlays at the end).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from vit import run_folder
from vit.config import Config, to_yaml
from vit.data import loader as loader_lib
from vit.io import atomic_save, atomic_write, write_json
from vit.text import plural
from vit.training.budget import TimeBudget
from vit.training.checkpointing import run_checkpoint
from vit.training.defaults import fit_workers, merge_notes
from vit.training.distributed import all_reduce_sum, any_process, barrier, broadcast_object
from vit.training.epoch import EpochOptions, EpochResult, EpochStart, train_one_epoch, validate
from vit.training.faults import StopRequest, TrainingInterrupted, guarded_run
from vit.training.model_build import build_model
from vit.training.resume import ResumeAt, ResumePoint
from vit.training.run_files import EndFiles, EpochSaver, tracked_images, write_end_files
from vit.training.run_log import epoch_metrics, log_epoch
from vit.training.run_start import start_run
from vit.training.setup import (
    build_criterion,
    build_parts,
    check_run_config,
    model_and_data,
    open_machine,
    open_run_folder,
)
from vit.training.skip_log import collect_skipped, open_skip_log
from vit.training.trackers import Trackers

__all__ = ["train", "Trainer", "TrainSummary", "TrainingInterrupted", "ResumePoint",
           "build_model", "build_criterion"]

logger = logging.getLogger(__name__)


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
        self.machine = open_machine(cfg.train)
        self.is_main = self.machine.dist.is_main
        self.show_progress = show_progress and self.is_main
        self.log_every_s = log_every_s if self.is_main else None
        check_run_config(cfg, self.machine)
        self.workers_chosen = cfg.data.workers is None
        cfg, self.choices = fit_workers(cfg)  # the defaults chosen and why, for write_start
        if resume is not None and not isinstance(resume, ResumePoint):
            resume = ResumePoint.load(resume)
        self.resume = resume
        self.run_dir, self.lock = open_run_folder(cfg.train.output, resume=resume,
                                                  dist=self.machine.dist)
        # files the loader workers could not decode, appended as they meet them
        self.skip_log = open_skip_log(self.run_dir, fresh=resume is None and self.is_main)
        self.cfg = replace(cfg, train=replace(cfg.train, output=str(self.run_dir)))
        self.metrics: dict[str, Any] = {}  # of the last finished epoch
        self.trackers = Trackers({})  # train.report_to, opened by write_start (main process)
        self.stop_request = StopRequest()  # the signals' (``run`` handles them)

    def run(self) -> TrainSummary:
        """The whole run; a fault of scale (``vit.training.faults``) ends it with one line."""
        dist = self.machine.dist
        try:
            with guarded_run(self.run_dir, rank=dist.rank,
                             graceful_sigterm=not dist.enabled) as self.stop_request:
                self.build()
                self.write_start()
                self.run_epochs()
                return self.finish()
        finally:
            self.trackers.close({})  # an interrupted or failed run: close what is open
            if self.lock is not None:
                self.lock.release()

    def build(self) -> None:
        """Everything the epochs need, in the order the random generators are drawn from."""
        torch.manual_seed(self.cfg.train.seed)
        inputs = model_and_data(self.cfg, resume=self.resume,
                                world_size=self.machine.dist.world_size,
                                workers_chosen=self.workers_chosen)
        self.cfg, self.choices = inputs.cfg, merge_notes(self.choices, inputs.notes)
        self.parts = build_parts(inputs, machine=self.machine, skip_log=self.skip_log,
                                 resume=self.resume, run_dir=self.run_dir)
        at = self.parts.at  # where the run starts: epoch 0, or where the resumed run was saved
        self.start_epoch, self.skip_batches = at.epoch, at.batches_done
        self.step, self.best_top1 = at.step, at.best_top1

    def write_start(self) -> None:
        """config.yaml, data_report.json and split.json, what the run is in the log, and the
        trackers (main process)."""
        if self.is_main:
            self.trackers = start_run(self.run_dir, cfg=self.cfg, parts=self.parts,
                                      notes=self.choices, skip_log=self.skip_log,
                                      machine=self.machine)

    # --- the epochs ---------------------------------------------------------------------------

    def run_epochs(self) -> None:
        """Until ``train.epochs`` (the time budget may change it) or ``train.patience``."""
        self.saver = EpochSaver(self.run_dir, every_s=self.cfg.train.save_every_s)
        self.budget = TimeBudget(self.cfg.train.time_budget_min, max_epochs=self.cfg.train.epochs,
                                 fresh=self.start_epoch == 0)
        self.epoch_options = EpochOptions(
            show_progress=self.show_progress, log_every_s=self.log_every_s,
            should_stop=self._should_stop,
            on_step=self.trackers.log_step if self.trackers else None)
        self.elapsed_before = self.resume.elapsed_s if self.resume is not None else 0.0
        self.stop_request.graceful = True  # a stop signal now waits for the end of the step
        stopper = self.parts.stopper
        try:
            epoch = self.start_epoch
            # the time budget may change the count; train.patience may end the run before it
            while epoch < self.cfg.train.epochs and not stopper.should_stop:
                self._epoch(epoch)
                epoch += 1
        finally:
            self.stop_request.graceful = False
        self.epochs_done = epoch
        if stopper.should_stop and self.is_main:
            logger.info("%s; stopped after epoch %d of %d", stopper.reason(), epoch,
                        self.cfg.train.epochs)

    def _epoch(self, epoch: int) -> None:
        """Train, validate, fit the time budget, save (last.pt, best.pt, metrics), log."""
        parts, device, stopper = self.parts, self.machine.device, self.parts.stopper
        result = self._train_epoch(epoch)
        val = validate(model=parts.eval_model, loader=parts.val_loader, device=device,
                       precision=self.machine.precision)
        self.metrics = epoch_metrics(
            epoch, result, val, images=all_reduce_sum([float(result.images)], device)[0],
            elapsed_s=self.elapsed_before + time.perf_counter() - self.started)
        if self.best_top1 is None or val["val_top1"] > self.best_top1:
            self.best_top1 = val["val_top1"]
        improved = stopper.update(epoch=epoch + 1, metrics=self.metrics)  # best.pt's epoch
        self._fit_time_budget(epoch)
        checkpoint = self._checkpoint(epoch + 1, batches_done=0)  # every process: FSDP gathers
        if self.is_main:
            if collect_skipped(parts.data, self.skip_log, parts.loaders):
                write_json(self.run_dir / run_folder.DATA_REPORT, parts.data.report())
            final = epoch + 1 == self.cfg.train.epochs or stopper.should_stop
            self.saver.epoch_done(self.metrics, checkpoint, improved, force=final)
            log_epoch(epoch, self.cfg.train.epochs, result, self.metrics)
            self.trackers.log_epoch(epoch + 1, self.metrics)
        barrier()

    def _train_epoch(self, epoch: int) -> EpochResult:
        loader = self.parts.train_loader
        loader_lib.set_epoch(loader, epoch, start_batch=self.skip_batches)
        result = train_one_epoch(
            parts=self.parts.steps, loader=loader, epoch=epoch,
            start=EpochStart(step=self.step, skip_batches=self.skip_batches,
                             num_batches=self.parts.batches_per_epoch),
            options=self.epoch_options)
        self.step = result.step
        if result.interrupted:
            self._stop_interrupted(epoch, result.batches_done)
        self.skip_batches = 0
        return result

    def _stop_interrupted(self, epoch: int, batches_done: int) -> None:
        """Ctrl-C or SIGTERM: a resumable last.pt (and the best weights waiting in memory), then
        stop."""
        checkpoint = self._checkpoint(epoch, batches_done=batches_done)
        if self.is_main:
            self.saver.flush_best()
            atomic_save(checkpoint, self.run_dir / run_folder.LAST)
        barrier()
        raise TrainingInterrupted.in_epoch(
            self.stop_request.signal_name, epoch=epoch, batches_done=batches_done,
            batches_per_epoch=self.parts.batches_per_epoch, run_dir=self.run_dir)

    def _fit_time_budget(self, epoch: int) -> None:
        """With ``train.time_budget_min``: set the number of epochs to what fits, and end the
        learning-rate schedule there."""
        epochs = self.budget.epochs_after(epoch, self.metrics["elapsed_s"])
        if epochs is None or (epochs := int(broadcast_object(epochs))) == self.cfg.train.epochs:
            return
        self.cfg = replace(self.cfg, train=replace(self.cfg.train, epochs=epochs))
        self.parts.schedule.end_with(epochs)
        if self.is_main:
            atomic_write(self.run_dir / run_folder.CONFIG, to_yaml(self.cfg))
            logger.info("time budget %.1f min: %s fit (the schedule ends there)",
                        self.cfg.train.time_budget_min, plural(epochs, "epoch"))

    def _should_stop(self) -> bool:
        """Ctrl-C in any process stops all of them after the same step."""
        return any_process(self.stop_request.event.is_set(), self.machine.device)

    def _checkpoint(self, epoch: int, *, batches_done: int) -> dict[str, Any] | None:
        """last.pt after ``epoch`` epochs and ``batches_done`` batches of the next (every
        process calls it; None but on rank 0: ``checkpointing.run_checkpoint``)."""
        at = ResumeAt(epoch=epoch, batches_done=batches_done, step=self.step,
                      best_top1=self.best_top1, early_stop=self.parts.stopper.state_dict())
        return run_checkpoint(self.parts, config=self.cfg, at=at, metrics=self.metrics,
                              is_main=self.is_main)

    # --- the end ------------------------------------------------------------------------------

    def finish(self) -> TrainSummary:
        """The run's last files (main process), the trackers' last numbers, the summary."""
        end = EndFiles()
        if self.is_main:
            end = write_end_files(self.run_dir, self.parts.data, train=self.cfg.train,
                                  device=self.machine.device)
        if self.trackers:  # curves, confusion matrix and overlays, then the final numbers
            self.trackers.log_images(tracked_images(self.run_dir, self.parts.data.val_samples,
                                                    device=self.machine.device),
                                     step=self.epochs_done)
            self.trackers.close({"best_val_top1": self.best_top1,
                                 "epochs_done": self.epochs_done, **self.metrics})
        stopper = self.parts.stopper
        return TrainSummary(run_dir=self.run_dir, best_top1=self.best_top1,
                            last_metrics=self.metrics, epochs_done=self.epochs_done,
                            overlays=end.overlays, overlays_method=end.method,
                            held_out=end.held_out, explorer=end.explorer,
                            stopped_early=stopper.reason() if stopper.should_stop else None)
