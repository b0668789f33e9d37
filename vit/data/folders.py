"""Image folders: the layout, the scan that lists images by class, and the paths a user names.

The expected layout is ``root/<class>/<image>`` (images may sit in sub-folders of a class
folder), optionally split as ``root/train/<class>/...`` and ``root/val/<class>/...``.
``expand_paths`` turns the files, folders and globs given on a command line into image paths.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vit.errors import DataError

__all__ = [
    "IMG_EXTENSIONS",
    "Sample",
    "FolderScan",
    "is_image_file",
    "resolve_data_dirs",
    "scan_folder",
    "expand_paths",
]

logger = logging.getLogger(__name__)

IMG_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
)

_VAL_DIR_NAMES = ("val", "valid", "validation")
_JUNK_DIR_NAMES = {"__MACOSX"}  # metadata folders that zip tools add; never a class

Sample = tuple[str, int]  # (path, class index)


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """Whether the file name has one of ``IMG_EXTENSIONS`` (case-insensitive)."""
    return os.path.splitext(str(path))[1].lower() in IMG_EXTENSIONS


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name in _JUNK_DIR_NAMES


def _visible_subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not _is_hidden(p.name))


def _check_is_dir(path: Path, what: str) -> None:
    if not path.exists():
        raise DataError(f"{what} {path} does not exist; check the path")
    if not path.is_dir():
        raise DataError(f"{what} {path} is a file, not a folder of class sub-folders")


def resolve_data_dirs(data_dir: str | os.PathLike[str]) -> tuple[Path, Path | None]:
    """Find the training folder and the optional validation folder inside ``data_dir``.

    ``data_dir/train/<class>/...`` (with optional ``data_dir/val/<class>/...``; ``valid`` and
    ``validation`` are accepted too) returns ``(data_dir/train, data_dir/val or None)``.
    Otherwise ``data_dir/<class>/...`` returns ``(data_dir, None)``.
    """
    root = Path(data_dir).expanduser()
    _check_is_dir(root, "data folder")
    train_dir = root / "train"
    val_dir = next((root / n for n in _VAL_DIR_NAMES if (root / n).is_dir()), None)
    if not train_dir.is_dir():
        if val_dir is not None:
            raise DataError(
                f"{root} has a {val_dir.name}/ folder but no train/ folder; put the training "
                f"images in {train_dir}/<class>/ or use the layout {root}/<class>/<image>"
            )
        return root, None
    expected = {"train", "test", *_VAL_DIR_NAMES}
    others = [p.name for p in _visible_subdirs(root) if p.name not in expected]
    if others:
        logger.warning("Ignoring folders %s in %s (using train/ and val/ only)", others, root)
    return train_dir, val_dir


@dataclass
class FolderScan:
    """What ``scan_folder`` found: ``(path, target)`` samples, class names and unused files."""

    samples: list[Sample]
    classes: list[str]
    ignored: list[str] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)  # the folders listed: root, classes, below


def _list_class_files(class_dir: Path, dirs: list[str]) -> tuple[list[str], list[str]]:
    """(image files, other files) under ``class_dir``, recursively, skipping hidden entries;
    the folders listed are appended to ``dirs``."""
    images, others = [], []
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirs.append(dirpath)
        dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
        for name in filenames:
            if _is_hidden(name):
                continue
            path = os.path.join(dirpath, name)
            (images if is_image_file(name) else others).append(path)
    return sorted(images), sorted(others)


def _check_class_dirs(root: Path, found: list[str], classes: Sequence[str] | None) -> list[str]:
    """The class list to use: the sub-folders found, or ``classes`` checked against them."""
    if classes is None:
        if not found:
            top_images = [p.name for p in root.iterdir() if p.is_file() and is_image_file(p)]
            hint = (f" ({len(top_images)} images sit directly in it)" if top_images else "")
            raise DataError(
                f"no class sub-folders in {root}{hint}; expected {root}/<class_name>/<image>"
            )
        return found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(
            f"{root} has class folders {unknown} that the training classes {list(classes)} "
            "lack; use the same class folders for training and validation"
        )
    missing = [c for c in classes if c not in found]
    if missing:
        logger.warning("%s has no folder for classes %s", root, missing)
    return list(classes)


def scan_folder(
    root: str | os.PathLike[str], *, classes: Sequence[str] | None = None
) -> FolderScan:
    """Index ``root/<class>/**/<image>``: samples sorted by class then path.

    Class names are the sorted sub-folder names, unless ``classes`` is given (e.g. the training
    classes when scanning a validation folder), which fixes names and target order.
    Non-image files are skipped and listed in ``FolderScan.ignored``; hidden files and folders
    are skipped silently. Raises ``DataError`` for a missing folder, no class folders, no
    images at all, or a class folder without images.
    """
    root = Path(root).expanduser()
    _check_is_dir(root, "image folder")
    found = [p.name for p in _visible_subdirs(root)]
    class_list = _check_class_dirs(root, found, classes)

    samples: list[Sample] = []
    ignored = sorted(str(p) for p in root.iterdir() if p.is_file() and is_image_file(p))
    empty: list[str] = []
    dirs = [str(root)]
    for target, name in enumerate(class_list):
        if name not in found:
            continue
        images, others = _list_class_files(root / name, dirs)
        ignored.extend(others)
        if not images:
            empty.append(name)
        samples.extend((path, target) for path in images)

    if not samples:
        raise DataError(
            f"no images in {root}; supported extensions: {', '.join(IMG_EXTENSIONS)} "
            f"({len(ignored)} other files ignored)"
        )
    if empty:
        raise DataError(
            f"class folders without images in {root}: {empty}; add images "
            f"({', '.join(IMG_EXTENSIONS)}) or remove the folders"
        )
    if ignored:
        logger.info("Ignored %d files in %s that are not images in a class folder, e.g. %s",
                    len(ignored), root, ignored[0])
    return FolderScan(samples, class_list, ignored, dirs)


# ---------------------------------------------------------------------------------------------
# Paths on the command line
# ---------------------------------------------------------------------------------------------


def _images_under(folder: Path) -> list[Path]:
    """Image files below ``folder`` (recursively, sorted), skipping hidden files and folders."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        found.extend(Path(dirpath, name) for name in sorted(filenames)
                     if not _is_hidden(name) and is_image_file(name))
    return found


def _has_glob_magic(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _expand_glob(pattern: str) -> list[Path]:
    matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
    found: list[Path] = []
    for match in map(Path, matches):
        if match.is_dir():
            found.extend(_images_under(match))
        elif is_image_file(match):
            found.append(match)
    if not found:
        what = f"{len(matches)} files, none of them images" if matches else "nothing"
        raise DataError(f"the pattern {pattern!r} matches {what}; check the path")
    return found


def _expand_one(pattern: str) -> list[Path]:
    path = Path(pattern).expanduser()
    if path.is_dir():
        images = _images_under(path)
        if not images:
            raise DataError(f"no images in folder {pattern} (looked for "
                            f"{', '.join(IMG_EXTENSIONS)}, recursively)")
        return images
    if path.exists():
        return [path]  # named explicitly: kept even without an image extension
    if _has_glob_magic(pattern):
        return _expand_glob(pattern)
    raise DataError(f"{pattern}: no such file or folder")


def expand_paths(patterns: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files, folders (searched recursively for images) and globs -> image paths, in order.

    Globs are expanded here (``**`` included), so quoted patterns work on any shell. A path that
    does not exist, a glob without matches or a folder without images raises ``DataError``:
    a mistyped path should stop the command before any work. Duplicates are dropped.
    """
    seen: set[Path] = set()
    paths: list[Path] = []
    for pattern in patterns:
        for path in _expand_one(os.fspath(pattern)):
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                paths.append(path)
    return paths
