"""The run folder: the names of the files `vit train` writes there, and the one reader of the
records other commands read back (the split, the data root of the config).

    RUN/config.yaml        the run's settings (CONFIG)
    RUN/split.json         which images trained and which validated (SPLIT)
    RUN/data_report.json   the class counts and the skipped images (DATA_REPORT)
    RUN/metrics.jsonl      one line per epoch (METRICS)
    RUN/last.pt, best.pt   the checkpoints (LAST, BEST)
    RUN/curves.png         the training curves (CURVES)
    RUN/explain_method.json  the saliency method explain-bench recommends (EXPLAIN_METHOD)
    RUN/run.lock           held while a run writes the folder (LOCK)

    split = read_split(checkpoint.parent)       # {} when the run recorded none
    root = read_data_root(run_dir)              # config.yaml's data.root
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["CONFIG", "SPLIT", "DATA_REPORT", "METRICS", "LAST", "BEST", "CURVES",
           "EXPLAIN_METHOD", "LOCK", "folder_of", "read_split", "read_data_root"]

CONFIG = "config.yaml"
SPLIT = "split.json"
DATA_REPORT = "data_report.json"
METRICS = "metrics.jsonl"
LAST = "last.pt"
BEST = "best.pt"
CURVES = "curves.png"
EXPLAIN_METHOD = "explain_method.json"
LOCK = "run.lock"

PathLike = str | os.PathLike[str]


def folder_of(checkpoint: PathLike) -> Path:
    """The run folder of a checkpoint (its folder), or the folder itself when given one (a
    folder model such as `vit push --to-folder` writes)."""
    path = Path(checkpoint).expanduser()
    return path if path.is_dir() else path.parent


def read_split(run_dir: PathLike, *, missing_ok: bool = True) -> dict[str, Any]:
    """``RUN/split.json``: ``{"kind": ..., "val_files": [...], "val_dir": ...}``. When the folder
    holds none (an exported model, a moved checkpoint): ``{}``, or with ``missing_ok=False``
    FileNotFoundError. Raises ValueError when it is not JSON."""
    path = Path(run_dir) / SPLIT
    if not missing_ok or path.is_file():
        return json.loads(path.read_text())
    return {}


def read_data_root(run_dir: PathLike) -> str:
    """``data.root`` of ``RUN/config.yaml``: the folder, label file or shard pattern the run
    trained on. Raises OSError when there is no config, KeyError or TypeError when it has no
    data root, ValueError when it is not YAML."""
    import yaml

    try:
        config = yaml.safe_load((Path(run_dir) / CONFIG).read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{Path(run_dir) / CONFIG}: {e}") from e
    return config["data"]["root"]
