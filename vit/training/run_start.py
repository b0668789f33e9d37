"""The start of a run once it is set up (main process): the defaults chosen, in the log;
config.yaml, data_report.json and split.json in the run folder; the trackers opened; what the
data, the model and the processes are, in the log."""

from __future__ import annotations

import logging
from pathlib import Path

from vit import run_folder
from vit.config import Config, to_dict, to_yaml
from vit.io import atomic_write, write_json
from vit.training.defaults import Notes
from vit.training.run_log import log_model, log_processes
from vit.training.setup import Machine, RunParts
from vit.training.skip_log import collect_skipped
from vit.training.trackers import Trackers, open_trackers

__all__ = ["start_run"]

logger = logging.getLogger(__name__)


def start_run(run_dir: Path, *, cfg: Config, parts: RunParts, notes: Notes, skip_log: Path,
              machine: Machine) -> Trackers:
    """The start files and lines, in this order; returns the trackers of ``train.report_to``.
    ``notes``: the defaults chosen and why; ``skip_log``: what the loader workers of a resumed
    run met before, into data_report.json."""
    for level, line in notes:
        logger.log(level, "%s", line)
    atomic_write(run_dir / run_folder.CONFIG, to_yaml(cfg))
    collect_skipped(parts.data, skip_log, parts.loaders)
    write_json(run_dir / run_folder.DATA_REPORT, parts.data.report())
    write_json(run_dir / run_folder.SPLIT, parts.data.split)
    logger.info("%s", parts.source.describe(parts.data))
    trackers = open_trackers(cfg.train.report_to, run_dir=run_dir, config=to_dict(cfg))
    log_model(parts.model, cfg, num_classes=len(parts.data.classes), device=machine.device,
              precision=machine.precision)
    if machine.dist.enabled:
        log_processes(machine.dist.world_size, strategy=cfg.train.strategy,
                      held_per_process=parts.held_per_process)
    return trackers
