"""Files: the one atomic writer, used for every file the package writes.

    atomic_write(path, b"...")                    # bytes, str, or a function that writes to a file
    write_json(path, {"a": 1})
    atomic_save(checkpoint, "runs/x/last.pt")     # torch.save
    append_jsonl(path, record); read_jsonl(path)  # metrics.jsonl: one line per epoch

A write goes to a hidden temp file beside the target (``.NAME.<random>.tmp``), is flushed and
fsync'ed, and is renamed onto the target; then the folder is fsync'ed so the rename survives a
power cut. A crash at any moment leaves the old complete file or the new complete one, never a
part of either. Failures raise ``OutputError`` with one line that names the path.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from vit.errors import OutputError

__all__ = [
    "atomic_write",
    "write_json",
    "atomic_save",
    "append_jsonl",
    "read_jsonl",
    "remove_stale_temp_files",
    "make_output_dir",
]

logger = logging.getLogger(__name__)

Payload = bytes | str | Callable[[IO[bytes]], Any]


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; directories cannot be opened on Windows)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:  # some network file systems cannot fsync a directory
        logger.debug("could not fsync %s: %s", folder, e)


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def _check_parents(path: Path) -> None:
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise OutputError(f"cannot write {path}: {blocker} is a file, not a folder")


def atomic_write(path: str | os.PathLike, data: Payload, *, durable: bool = True) -> Path:
    """Write ``data`` to ``path`` through a temp file and a rename; returns ``path``.

    ``data`` is bytes, text (written as UTF-8) or a function that writes to a binary file.
    The folder is created. ``durable=False`` skips the two fsyncs (5 ms each on a disk): the
    file still appears whole or not at all to other processes, but a power cut may lose it;
    for many small files whose set is committed by a durable file written last (the synthetic
    dataset's images). The temp file is removed when writing fails.
    """
    path = Path(path)
    _check_parents(path)
    tmp = _temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask decides
    except OSError as e:
        raise OutputError(
            f"cannot write {path}: {e.strerror or e}; choose a folder you can write to") from e
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise OutputError(f"could not write {path}: {e.strerror or e}") from e
        raise
    if durable:
        _fsync_dir(path.parent)
    return path


def write_json(path: str | os.PathLike, obj: Any, **dumps: Any) -> Path:
    """``obj`` as indented JSON (``json.dumps`` options may be changed), atomically."""
    return atomic_write(path, json.dumps(obj, **{"indent": 2, **dumps}) + "\n")


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)``, atomically."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one JSON line and fsync it (an append never rewrites what is already there)."""
    with Path(path).open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; [] when it does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def remove_stale_temp_files(folder: str | os.PathLike) -> None:
    """Delete the temp files of writes that a crash cut short (``.NAME.<8 hex>.tmp``)."""
    for stale in Path(folder).glob(".*.????????.tmp"):
        if stale.is_file():
            stale.unlink(missing_ok=True)


def make_output_dir(path: str | os.PathLike) -> Path:
    """Create the output folder and prove it is writable, before any long work starts."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"output folder {str(path)!r} is not writable: {e.strerror or e}") from e
    return path
