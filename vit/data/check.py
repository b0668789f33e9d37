"""What can be known about image files before training, cheaply, and remembered.

    scan, good, skipped = checked_scan(root)           # scan_folder + header/end check, cached
    bad = full_check(paths, workers=2)                   # decode everything (`vit check`)

The quick check opens each file, lets Pillow read its header (format, size; the
decompression-bomb limit is applied there) and reads its last bytes: a JPEG must end with its
EOI marker, a PNG with its IEND chunk, a GIF with its trailer, a WebP must be as long as its
RIFF header says. A file that passes is taken as whole; one that does not (or a format without
such a marker) is decoded once, so a truncated file is caught before training and a valid file
with trailing bytes is kept. The listing and what the check learned are cached per folder (see
``cache_dir``): a later run whose folders are unchanged (mtimes) reads both from there and
opens no image, so a million files start in seconds. A file that passes and still fails to decode in a loader worker
is skipped there (``ImageFolderDataset``) and recorded in the run folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from vit.data.folders import FolderScan, Sample, scan_folder
from vit.data.images import (
    UnreadableImageError,
    _check_chunk,
    _check_pixel_count,
    _failure_reason,
    decode_reason,
)

__all__ = ["quick_check", "quick_check_paths", "checked_scan", "full_check", "cache_dir",
           "cache_file"]

logger = logging.getLogger(__name__)

CACHE_FORMAT = "vit-folder-check"
CACHE_VERSION = 1
_TAIL_BYTES = 32
_PARALLEL_FROM = 2048  # fewer unknown files than this: checked in this process
_CHUNK = 512
_RACY_NS = 2_000_000_000  # folders changed this close to the listing are listed again


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
    # truncated, trailing bytes, or a format without an end marker: decode to know
    return decode_reason(path)


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


def quick_check_paths(paths: Sequence[str], *, workers: int = 1) -> list[dict[str, str]]:
    """``quick_check`` of listed files (a label file's; not cached): the unreadable ones as
    ``{"path", "reason"}``, in the order given, one warning each."""
    reasons = _in_processes(_quick_chunk, list(paths), workers=workers,
                            desc="checking image headers")
    bad = [{"path": p, "reason": r} for p, r in zip(paths, reasons, strict=True)
           if r is not None]
    for record in bad:
        logger.warning("Skipping %s: %s", record["path"], record["reason"])
    return bad


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
    if not isinstance(cached, dict) or (cached.get("format"), cached.get("version"),
                                        cached.get("root")) != (CACHE_FORMAT, CACHE_VERSION, root):
        return {}
    return cached


def _write_cache(path: Path, content: dict[str, Any]) -> None:
    from vit.io import atomic_write

    text = json.dumps({"format": CACHE_FORMAT, "version": CACHE_VERSION, **content},
                      separators=(",", ":"))
    try:
        atomic_write(path, text, durable=False)  # losing it costs a re-check, nothing more
    except Exception as exc:  # a cache that cannot be written must never stop a run
        logger.warning("Cannot write the folder cache %s (%s); the next run checks again",
                       path, exc)


def _dir_mtimes(dirs: Sequence[str], prefix_len: int) -> dict[str, int] | None:
    try:
        return {d[prefix_len:]: os.stat(d).st_mtime_ns for d in dirs}
    except OSError:
        return None


def _unchanged(root: str, cached: dict[str, Any]) -> bool:
    """Whether no folder of the cached listing changed since (a file added, removed or renamed
    changes its folder's mtime). A folder changed shortly before the cache was written may
    have changed again within the clock's resolution: such a listing is not trusted."""
    dirs, written = cached.get("dirs"), cached.get("written_ns", 0)
    if not dirs:
        return False
    now = _dir_mtimes([os.path.join(root, d) if d else root for d in dirs], 0)
    racy = written - _RACY_NS
    return now is not None and all(now[os.path.join(root, d) if d else root] == m and m < racy
                                   for d, m in dirs.items())


def _scan_from_cache(prefix: str, cached: dict[str, Any]) -> FolderScan:
    return FolderScan(samples=[(prefix + rel, t) for rel, t in cached["samples"]],
                      classes=cached["classes"], ignored=[prefix + p for p in cached["ignored"]])


def _relative(paths: Sequence[str], prefix: str) -> int:
    """How many leading characters of every path to drop to make it relative to the root."""
    return len(prefix) if all(p.startswith(prefix) for p in paths) else 0


def checked_scan(root: str | os.PathLike[str], *, workers: int = 1,
                 cache: Path | None | bool = True
                 ) -> tuple[FolderScan, list[Sample], list[dict[str, str]]]:
    """``scan_folder(root)`` and ``quick_check`` of its images: ``(scan, good_samples,
    skipped)``; one warning is logged per unreadable file.

    With ``cache`` (``True``: ``cache_dir()``; or a folder) the listing and what the check
    found are kept per folder. When no folder changed since (their mtimes), a later run reads
    both from the cache and opens no image; otherwise it lists again and checks only the files
    it has not seen before. A file replaced in place under the same name is not checked again
    (its folder's mtime does not change): loader workers still skip it if it fails, and
    ``vit check`` or deleting the cache finds it.
    """
    root_text = str(root).rstrip(os.sep) or os.sep
    root_key, prefix = str(Path(root).resolve()), root_text + os.sep
    path = cache_file(root, None if cache is True else cache) if cache else None
    cached = _read_cache(path, root_key) if path is not None else {}
    if cached and _unchanged(root_text, cached):
        scan = _scan_from_cache(prefix, cached)
        return scan, *_split_bad(scan.samples, len(prefix), cached["bad"])
    written_ns = time.time_ns()
    scan = scan_folder(root)
    cut = _relative([p for p, _ in scan.samples] + scan.ignored + scan.dirs[1:], prefix)
    known = {rel for rel, _ in cached.get("samples", [])}
    todo = [p for p, _ in scan.samples if p[cut:] not in known]
    reasons = _in_processes(_quick_chunk, todo, workers=workers, desc="checking image headers")
    bad = {rel: r for rel, r in cached.get("bad", {}).items()}
    bad.update({p[cut:]: r for p, r in zip(todo, reasons, strict=True) if r is not None})
    present = {p[cut:] for p, _ in scan.samples}
    bad = {rel: r for rel, r in bad.items() if rel in present}
    dirs = _dir_mtimes(scan.dirs, cut) if cut else None
    if path is not None and dirs is not None:
        _write_cache(path, {
            "root": root_key, "written_ns": written_ns, "dirs": dirs, "classes": scan.classes,
            "samples": [[p[cut:], t] for p, t in scan.samples],
            "ignored": [p[cut:] for p in scan.ignored], "bad": bad})
    logger.debug("quick check of %s: %d images, %d new", root, len(scan.samples), len(todo))
    return scan, *_split_bad(scan.samples, cut, bad)


def _split_bad(samples: Sequence[Sample], cut: int, bad: dict[str, str]
               ) -> tuple[list[Sample], list[dict[str, str]]]:
    good: list[Sample] = []
    skipped: list[dict[str, str]] = []
    for sample in samples:
        reason = bad.get(sample[0][cut:])
        if reason is None:
            good.append(sample)
        else:
            logger.warning("Skipping %s: %s", sample[0], reason)
            skipped.append({"path": sample[0], "reason": reason})
    return good, skipped
