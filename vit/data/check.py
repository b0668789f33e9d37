"""What can be known about image files before training, cheaply, and remembered.

    good, skipped = quick_check_samples(samples, root)  # header + end marker, cached
    bad = full_check(paths, workers=2)                   # decode everything (`vit check`)

The quick check opens each file, lets Pillow read its header (format, size; the
decompression-bomb limit is applied there) and reads its last bytes: a JPEG must end with its
EOI marker, a PNG with its IEND chunk, a GIF with its trailer, a WebP must be as long as its
RIFF header says. A file that passes is taken as whole; one that does not (or a format without
such a marker) is decoded once, so a truncated file is caught before training and a valid file
with trailing bytes is kept. What the check learned about a folder is cached (see
``cache_dir``): on a later run only new or changed files (size or mtime) are opened, so a
million files start in seconds. A file that passes and still fails to decode in a loader worker
is skipped there (``ImageFolderDataset``) and recorded in the run folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from vit.data.folders import Sample
from vit.data.images import (
    UnreadableImageError,
    _check_chunk,
    _check_pixel_count,
    _failure_reason,
    load_image,
)

__all__ = ["quick_check", "quick_check_samples", "full_check", "cache_dir", "cache_file"]

logger = logging.getLogger(__name__)

CACHE_FORMAT = "vit-folder-check"
CACHE_VERSION = 1
_TAIL_BYTES = 32
_PARALLEL_FROM = 2048  # fewer unknown files than this: checked in this process
_CHUNK = 512


def _ends_whole(head: bytes, tail: bytes, size: int, fmt: str | None) -> bool:
    """Whether the file's last bytes show that it was written to the end."""
    if fmt == "JPEG":
        return b"\xff\xd9" in tail  # EOI, possibly followed by a little padding
    if fmt == "PNG":
        return tail.endswith(b"IEND\xaeB`\x82")
    if fmt == "GIF":
        return tail.rstrip(b"\x00").endswith(b";")
    if fmt == "WEBP" and head[:4] == b"RIFF":
        return size >= struct.unpack("<I", head[4:8])[0] + 8
    return False  # no cheap proof: decode it


def quick_check(path: str) -> str | None:
    """Why ``path`` cannot be used, or ``None``; cheap for whole JPEG/PNG/GIF/WebP files."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            f.seek(0)
            with Image.open(f) as img:
                _check_pixel_count(img, path)
                fmt = img.format
            size = f.seek(0, os.SEEK_END)
            f.seek(max(size - _TAIL_BYTES, 0))
            tail = f.read()
        if _ends_whole(head, tail, size, fmt):
            return None
    except UnreadableImageError as exc:
        return exc.reason
    except Exception as exc:  # every failure to open means "unreadable", with its reason
        return _failure_reason(path, exc)
    try:  # truncated, trailing bytes, or a format without an end marker: decode to know
        load_image(path)
    except UnreadableImageError as exc:
        return exc.reason
    return None


def _quick_chunk(paths: list[str]) -> list[str | None]:
    return [quick_check(p) for p in paths]


def _in_processes(fn: Any, paths: list[str], *, workers: int, desc: str,
                  parallel_from: int = _PARALLEL_FROM) -> list[str | None]:
    """``fn`` over chunks of ``paths`` in ``workers`` processes (few paths: in this one)."""
    chunks = [paths[i:i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    reasons: list[str | None] = []
    with tqdm(total=len(paths), desc=desc, unit="img", disable=None) as bar:
        if workers <= 1 or len(paths) < parallel_from:
            for chunk in chunks:
                reasons.extend(fn(chunk))
                bar.update(len(chunk))
            return reasons
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for result in pool.map(fn, chunks):
                reasons.extend(result)
                bar.update(len(result))
    return reasons


def full_check(paths: Sequence[str], *, workers: int | None = None) -> list[dict[str, str]]:
    """Decode every file in ``workers`` processes (default: one per CPU); the unreadable ones
    as ``{"path", "reason"}``, in the order given."""
    workers = workers if workers is not None else (os.cpu_count() or 1)
    reasons = _in_processes(_check_chunk, list(paths), workers=workers, desc="decoding images",
                            parallel_from=64)
    return [{"path": p, "reason": r} for p, r in zip(paths, reasons, strict=True)
            if r is not None]


# --- the cache --------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where folder checks are remembered: ``$VIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/vit``,
    else ``~/.cache/vit``. Deleting it is always safe: the next run checks again."""
    if os.environ.get("VIT_CACHE_DIR"):
        return Path(os.environ["VIT_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vit"


def cache_file(root: str | os.PathLike[str], cache: Path | None = None) -> Path:
    """The cache file of the folder ``root`` (one small JSON file per folder)."""
    key = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:20]
    return (cache if cache is not None else cache_dir()) / "folders" / f"{key}.json"


def _read_cache(path: Path, root: str) -> dict[str, Any]:
    try:
        cached = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.warning("Ignoring the unreadable folder cache %s (%s); checking again", path, exc)
        return {}
    if (cached.get("format"), cached.get("version"), cached.get("root")) != (
            CACHE_FORMAT, CACHE_VERSION, root):
        return {}
    return cached


def _write_cache(path: Path, root: str, files: dict[str, list[int]],
                 bad: dict[str, str]) -> None:
    from vit.io import atomic_write

    text = json.dumps({"format": CACHE_FORMAT, "version": CACHE_VERSION, "root": root,
                       "files": files, "bad": bad}, separators=(",", ":"))
    try:
        atomic_write(path, text, durable=False)  # losing it costs a re-check, nothing more
    except Exception as exc:  # a cache that cannot be written must never stop a run
        logger.warning("Cannot write the folder cache %s (%s); the next run checks again",
                       path, exc)


def _stat_all(paths: Sequence[str], prefix_len: int) -> dict[str, list[int]]:
    """``relative path -> [size, mtime_ns]``; a file that vanished gets size -1."""
    stats = {}
    for p in paths:
        try:
            st = os.stat(p)
            stats[p[prefix_len:]] = [st.st_size, st.st_mtime_ns]
        except OSError:
            stats[p[prefix_len:]] = [-1, 0]
    return stats


def quick_check_samples(samples: Sequence[Sample], root: str | os.PathLike[str], *,
                        workers: int = 1, cache: Path | None | bool = True
                        ) -> tuple[list[Sample], list[dict[str, str]]]:
    """``quick_check`` every sample below ``root``, reusing the folder's cache for files whose
    size and mtime are unchanged. Returns ``(good_samples, skipped)`` like ``preflight``; one
    warning is logged per unreadable file. ``cache``: ``True`` for ``cache_dir()``, a folder,
    or ``False``/``None`` for no cache."""
    root_key = str(Path(root).resolve())
    prefix = str(root).rstrip(os.sep) + os.sep
    paths = [p for p, _ in samples]
    prefix_len = len(prefix) if all(p.startswith(prefix) for p in paths) else 0
    stats = _stat_all(paths, prefix_len)
    path = cache_file(root, None if cache is True else cache) if cache else None
    cached = _read_cache(path, root_key) if path is not None else {}
    known_files, known_bad = cached.get("files", {}), cached.get("bad", {})
    todo = [p for p in paths if known_files.get(p[prefix_len:]) != stats[p[prefix_len:]]]
    reasons = dict(zip(todo, _in_processes(_quick_chunk, todo, workers=workers,
                                           desc="checking image headers"), strict=True))
    bad = {rel: known_bad[rel] for rel in stats if rel in known_bad
           and known_files.get(rel) == stats[rel]}
    bad.update({p[prefix_len:]: r for p, r in reasons.items() if r is not None})
    if path is not None and (todo or len(known_files) != len(stats)):
        _write_cache(path, root_key, stats, bad)
    logger.debug("quick check of %s: %d files, %d from the cache", root, len(paths),
                 len(paths) - len(todo))
    good: list[Sample] = []
    skipped: list[dict[str, str]] = []
    for sample in samples:
        reason = bad.get(sample[0][prefix_len:])
        if reason is None:
            good.append(sample)
        else:
            logger.warning("Skipping %s: %s", sample[0], reason)
            skipped.append({"path": sample[0], "reason": reason})
    return good, skipped
