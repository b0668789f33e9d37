"""The data-source interface, and what every source shares: the run's data (``RunData``), the
loader options, the class checks, the evaluation set.

A source is one class: ``accepts(spec)`` says whether ``--data SPEC`` names it, ``prepare``
lists, checks and splits the items, ``loaders`` builds the training and validation loaders,
``describe`` and ``report`` say what it holds (the start-up line, data_report.json; the bad
items are ``RunData.skipped``), ``eval_set`` and ``held_out`` give `vit evaluate` and
`vit explain-bench` their images. Register it with ``vit.data.sources.register_source``.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vit.config import Config
from vit.data.augmentation import AugmentRecipe
from vit.data.splits import build_data_report, class_counts
from vit.errors import DataError
from vit.text import plural

__all__ = ["DataSource", "RunData", "LoaderOptions", "ClassMatch", "EvalSet", "check_classes",
           "checked", "match_classes", "sampler_weights", "transforms"]

Samples = list[tuple[str, int]]  # (path, class index)


@dataclass
class RunData:
    """The images of a run: classes, the split, and what was left out and why."""

    root: Path  # the training folder
    classes: list[str]
    train_samples: Samples
    val_samples: Samples
    split: dict[str, Any]  # what split.json records
    skipped: list[dict[str, str]] = field(default_factory=list)  # unreadable: path, reason
    ignored: list[str] = field(default_factory=list)  # files that are not images
    train_shards: Any = None  # vit.data.shards.ShardSpec when training from shards
    val_shards: Any = None  # ... when validating on shards
    source: DataSource | None = field(default=None, repr=False, compare=False)

    @property
    def train_targets(self) -> list[int]:
        if self.train_shards is not None:
            per_class = self.train_shards.per_class  # _info.json's class counts, if any
            return [c for c, n in enumerate(per_class or []) for _ in range(n)]
        return [t for _, t in self.train_samples]

    @property
    def num_train(self) -> int:
        return self.train_shards.num_samples if self.train_shards else len(self.train_samples)

    @property
    def num_val(self) -> int:
        return self.val_shards.num_samples if self.val_shards else len(self.val_samples)

    def report(self) -> dict[str, Any]:
        """What data_report.json holds (the source's ``report``)."""
        return (self.source or _NO_SOURCE).report(self)

    def add_skipped(self, records: list[dict[str, str]]) -> list[dict[str, str]]:
        """Add files found unreadable during training; returns those not known before."""
        known = {s["path"] for s in self.skipped}
        new = []
        for record in records:
            if record["path"] not in known:
                known.add(record["path"])
                new.append({"path": record["path"], "reason": record["reason"]})
        self.skipped.extend(new)
        return new


@dataclass(frozen=True)
class LoaderOptions:
    """How the loaders of one process are built."""

    img_size: int
    device: Any  # torch.device
    batch_size: int  # per process
    rank: int = 0
    world_size: int = 1
    skip_log: Path | None = None  # loader workers append the files they cannot decode here


@dataclass(frozen=True)
class ClassMatch:
    """How folder names map to the model's classes."""

    targets: dict[str, int]  # folder name -> index into the model's classes
    unknown: list[str]  # folders the model has no class for (their images are left out)
    missing: list[str]  # model classes without a folder


@dataclass(frozen=True)
class EvalSet:
    """The images to evaluate, labelled with the model's class indices."""

    root: Path
    samples: Samples
    match: ClassMatch
    num_unknown_images: int
    skipped: tuple[dict[str, str], ...] = ()  # a label file's rows without a file or a label
    description: str = ""  # what the log says it evaluates on


class DataSource(ABC):
    """Where a run's images come from; ``spec`` is what ``--data`` (``data.root``) says."""

    name = "source"  # what error messages call it

    def __init__(self, spec: str | os.PathLike[str]):
        self.spec = spec

    @classmethod
    @abstractmethod
    def accepts(cls, spec: str | os.PathLike[str]) -> bool:
        """Whether ``spec`` names this kind of source (asked in registration order)."""

    @abstractmethod
    def prepare(self, cfg: Config) -> RunData:
        """List the items, pre-flight check them, split them; ``DataError`` when a run could
        only report nonsense."""

    @abstractmethod
    def loaders(self, cfg: Config, data: RunData, options: LoaderOptions
                ) -> tuple[Any, Any, RunData]:
        """The training and validation loaders, and the data they hold (a source may leave out
        items it finds bad while loading)."""

    def describe(self, data: RunData) -> str:
        """The start-up line of the log."""
        return (f"{plural(len(data.classes), 'class')}; {plural(data.num_train, 'training image')}"
                f", {plural(data.num_val, 'validation image')}")

    def report(self, data: RunData) -> dict[str, Any]:
        """What data_report.json holds: the images counted are those not skipped (a file that
        passed the pre-flight check and failed in a loader worker stays in the samples)."""
        bad = {s["path"] for s in data.skipped}
        return build_data_report(data.classes, [s for s in data.train_samples if s[0] not in bad],
                                 [s for s in data.val_samples if s[0] not in bad],
                                 data.skipped, data.ignored)

    def eval_set(self, model_classes: Sequence[str]) -> EvalSet:  # noqa: ARG002
        """The images `vit evaluate` scores, labelled with the model's class indices."""
        raise DataError(f"{self.spec} is a {self.name}: evaluate on an image folder or a label "
                        "file")

    def held_out(self, classes: Sequence[str], *, split: dict[str, Any],  # noqa: ARG002
                 split_file: Path) -> tuple[list[tuple[Path, int]], str]:  # noqa: ARG002
        """(path, label) of images the run (whose ``split.json`` is ``split``) did not train
        on, and where they come from: `vit explain-bench`'s images."""
        raise DataError(f"{self.spec} is a {self.name}: explain-bench reads an image folder")

    def trained_on(self) -> Callable[[Path], bool]:
        """Whether a (resolved) path is one the run trained on; nothing, when unknown."""
        return lambda _path: False


class _NoSource(DataSource):
    """The default ``report`` for a ``RunData`` built by hand."""

    @classmethod
    def accepts(cls, spec: Any) -> bool:  # noqa: ARG003
        return False

    def prepare(self, cfg: Config) -> RunData:
        raise NotImplementedError

    def loaders(self, cfg: Config, data: RunData, options: LoaderOptions) -> Any:
        raise NotImplementedError


_NO_SOURCE = _NoSource("")


def checked(data: RunData, *, source: str) -> RunData:
    """A run that could only report nonsense stops here, before any work: fewer than two
    classes (every prediction is right), a class without a training image, an empty split."""
    check_classes(data.classes, class_counts([t for _, t in data.train_samples],
                                             len(data.classes)), source=source)
    if not data.train_samples or not data.val_samples:
        raise DataError(
            f"the split left {len(data.train_samples)} training and {len(data.val_samples)} "
            "validation images; add images or change --val-fraction")
    return data


def check_classes(classes: list[str], train_counts: list[int] | None, *, source: str) -> None:
    """At least two classes, each with a training image (``train_counts``, per class, when
    known); else one line that says what to do."""
    if len(classes) < 2:
        found = f"only one class, {classes[0]!r}" if classes else "no class"
        raise DataError(
            f"{source} has {found}: a classifier needs at least two (with one, every prediction "
            "is right and the accuracy means nothing); add a folder of images for each other "
            "class, DIR/<class>/<image>")
    empty = [name for name, n in zip(classes, train_counts or [], strict=False) if n == 0]
    if empty:
        raise DataError(
            f"no training image left for {plural(len(empty), 'class')} of {source}: {empty} "
            "(all of their images are held out for validation or unreadable); add images to "
            "them or remove them")


def match_classes(folder_classes: Sequence[str], model_classes: Sequence[str]) -> ClassMatch:
    """Match class folders to the model's classes by name; ``DataError`` if none match."""
    index = {name: i for i, name in enumerate(model_classes)}
    targets = {name: index[name] for name in folder_classes if name in index}
    if not targets:
        raise DataError(
            f"none of the class folders {list(folder_classes)} is a class of this checkpoint "
            f"{list(model_classes)}; folder names must equal the training class names")
    unknown = [name for name in folder_classes if name not in index]
    missing = [name for name in model_classes if name not in set(folder_classes)]
    return ClassMatch(targets=targets, unknown=unknown, missing=missing)


def transforms(cfg: Config, img_size: int) -> tuple[Any, Any]:
    """The albumentations training and evaluation transforms of ``cfg.data``."""
    from vit.data.transforms import build_transform

    d = cfg.data
    aug = dict(img_size=img_size, mean=d.mean, std=d.std)
    train_tf = build_transform(train=True, recipe=AugmentRecipe.of(d), **aug)
    return train_tf, build_transform(train=False, crop_pct=d.crop_pct, **aug)


def sampler_weights(cfg: Config, targets: list[int], num_classes: int) -> list[float] | None:
    """``data.sampler=weighted``: per-sample weights 1 / count(class), every class drawn
    equally often; else None."""
    if cfg.data.sampler != "weighted":
        return None
    counts = class_counts(targets, num_classes)
    return [1.0 / counts[t] for t in targets]


def preflight_workers(cfg: Config) -> int:
    """Processes for the pre-flight check: ``data.workers``, at least 1, at most the cores."""
    return min(max(cfg.data.workers, 1), os.cpu_count() or 1)
