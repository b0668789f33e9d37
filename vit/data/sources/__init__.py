"""Where a run's images come from: one interface, and the one place a source is chosen.

    source = open_source(cfg.data.root)          # the first registered source that accepts it
    data = source.prepare(cfg)                   # list, check, split: a RunData
    train_loader, val_loader, data = source.loaders(cfg, data, LoaderOptions(...))
    eval_set = source.eval_set(model_classes)    # `vit evaluate`
    images, where = source.held_out(classes, split=..., split_file=...)   # `vit explain-bench`

A new source is one module with a ``DataSource`` subclass and one registration: a line in
``BUILT_IN`` below, or ``register_source(MySource)`` from anywhere (asked before the built-in
ones).

    base        the DataSource interface, RunData, LoaderOptions, EvalSet, the shared checks
    folder      DIR/<class>/<image> or DIR/train + DIR/val (asked last: it takes any path)
    label_file  LABELS.csv with path,label[,split] columns
    shards      WebDataset tar shards written by `vit shard`
    synthetic   synthetic:DIR, the built-in shapes written to DIR and read as a folder
"""

from __future__ import annotations

import importlib
import os

from vit.data.sources.base import DataSource, EvalSet, LoaderOptions, RunData
from vit.errors import ConfigError

__all__ = ["DataSource", "RunData", "LoaderOptions", "EvalSet", "BUILT_IN", "open_source",
           "register_source", "unregister_source", "registered_sources"]

# module:class, asked in this order
BUILT_IN = (
    "shards:ShardSource",
    "label_file:LabelFileSource",
    "synthetic:SyntheticSource",
    "folder:FolderSource",
)

_registered: list[type[DataSource]] = []  # register_source's, asked first, the latest first


def register_source(source: type[DataSource]) -> type[DataSource]:
    """Ask ``source`` before the sources registered earlier and the built-in ones (usable as a
    class decorator)."""
    if source not in _registered:
        _registered.insert(0, source)
    return source


def unregister_source(source: type[DataSource]) -> None:
    """Undo ``register_source`` (tests)."""
    if source in _registered:
        _registered.remove(source)


def registered_sources() -> list[type[DataSource]]:
    """Every source, in the order ``open_source`` asks them."""
    built_in = []
    for entry in BUILT_IN:
        module, name = entry.split(":")
        built_in.append(getattr(importlib.import_module(f"{__name__}.{module}"), name))
    return [*_registered, *built_in]


def open_source(spec: str | os.PathLike[str] | None) -> DataSource:
    """The source ``--data SPEC`` (``data.root``) names."""
    if spec is None:
        raise ConfigError("no data folder given: pass --data DIR (DIR/<class>/<image> or "
                          "DIR/train/...)")
    source = next(s for s in registered_sources() if s.accepts(spec))
    return source(spec)
