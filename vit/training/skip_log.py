"""The files loader workers could not decode during training: appended by the workers to
``RUN/skipped.jsonl`` as they meet them, collected by the main process into the run's data
(``data_report.json``) and handed back to the datasets so later workers skip them."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vit.data.sources import RunData

__all__ = ["open_skip_log", "read_skip_log", "collect_skipped"]

logger = logging.getLogger(__name__)


def open_skip_log(run_dir: Path, *, fresh: bool) -> Path:
    """``RUN/skipped.jsonl``, emptied when ``fresh`` (a new run, in the main process)."""
    path = run_dir / "skipped.jsonl"
    if fresh:
        path.unlink(missing_ok=True)
    return path


def read_skip_log(path: Path) -> list[dict[str, str]]:
    """The records loader workers appended; a line a crash cut short is ignored."""
    records = []
    with contextlib.suppress(FileNotFoundError), path.open() as f:
        for line in f:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and {"path", "reason"} <= record.keys():
                    records.append(record)
    return records


def collect_skipped(data: RunData, skip_log: Path, loaders: Iterable[Any]) -> bool:
    """Add the files in ``skip_log`` that ``data`` did not know to it (one warning each) and
    mark them in the loaders' datasets; whether there were any."""
    new = data.add_skipped(read_skip_log(skip_log))
    for record in new:
        logger.warning("Skipping %s: %s (met while training)", record["path"], record["reason"])
    if new:
        paths = {r["path"] for r in new}
        for loader in loaders:
            dataset = getattr(loader, "dataset", None)
            if hasattr(dataset, "mark_bad"):
                dataset.mark_bad(paths)
    return bool(new)
