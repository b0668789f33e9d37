"""Files: the one atomic writer, used for every file the package writes, and the one reader of
weight files.

    atomic_write(path, b"...")                    # bytes, str, or a function that writes to a file
    write_json(path, {"a": 1})
    atomic_save(checkpoint, "runs/x/last.pt")     # torch.save
    append_jsonl(path, record); read_jsonl(path)  # metrics.jsonl: one line per epoch
    read_weights("best.pt")                       # any weights file we accept -> WeightsFile

A write goes to a hidden temp file beside the target (``.NAME.<random>.tmp``), is flushed and
fsync'ed, and is renamed onto the target; then the folder is fsync'ed so the rename survives a
power cut. A crash at any moment leaves the old complete file or the new complete one, never a
part of either. Failures raise ``OutputError`` with one line that names the path.

``read_weights`` reads every weights file we accept: our checkpoints (``.pt``), our exports
(``.safetensors`` with a JSON sidecar, or the copy of it kept in the file's metadata), and
foreign state_dicts (timm's ``.pth``/``.bin``/``.safetensors``, training checkpoints holding one
under ``state_dict_ema``/``model_ema``/``state_dict``/``model``). Pickles are only ever read
with ``torch.load(weights_only=True)``: a file that would construct arbitrary objects is refused.
Wrapper prefixes every parameter name shares (``module.``, ``_orig_mod.``, ...) are removed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import safetensors
import torch

from vit import __version__
from vit.errors import CheckpointError, OutputError, first_line

__all__ = [
    "atomic_write",
    "write_json",
    "atomic_save",
    "append_jsonl",
    "read_jsonl",
    "remove_stale_temp_files",
    "make_output_dir",
    "FORMAT",
    "FORMAT_VERSION",
    "WeightsFile",
    "read_weights",
    "sidecar_path",
]

logger = logging.getLogger(__name__)

Payload = bytes | str | Callable[[IO[bytes]], Any]
StateDict = dict[str, torch.Tensor]

FORMAT = "vit-checkpoint"  # the "format" of our checkpoints and of the sidecar of our exports
FORMAT_VERSION = 1  # bump when a reader of the old format could misread the new one
REQUIRED_KEYS = ("model_config", "classes", "preprocess")  # besides the weights
# Where training scripts keep the weights, in timm's order of preference (EMA first).
CONTAINER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
# What torch's weights_only unpickler says when it refuses a global, call or object.
_REFUSED = re.compile(
    r"GLOBAL (\S+)|unrecognized function|Can only create new object|must be imported to load")


# --- writing ----------------------------------------------------------------------------------


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


# --- reading weights --------------------------------------------------------------------------


@dataclass
class WeightsFile:
    """What a weights file holds, whoever wrote it."""

    path: Path
    state_dict: StateDict  # parameter names without wrapper prefixes
    # Ours: everything else the file holds (format, model_config, classes, preprocess, config,
    # epoch, ..., and in last.pt the resume state). None for a foreign state_dict.
    info: dict[str, Any] | None = None


def sidecar_path(path: str | os.PathLike) -> Path:
    """``model.safetensors`` -> ``model.json``: where an export keeps classes and model config."""
    return Path(path).with_suffix(".json")


def read_weights(path: str | os.PathLike, *, map_location: Any = "cpu",
                 noun: str = "a weights file") -> WeightsFile:
    """Read any weights file we accept (see the module docstring).

    Every failure is one ``CheckpointError`` line: "PATH is not NOUN: why", a file refused for
    safety, or what is wrong with a file of ours (version, missing keys).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        state_dict, info = _read_safetensors(path, map_location)
    else:
        state_dict, info = _read_pickle(path, map_location, noun)
    if info is not None:
        _check_ours(path, info, has_weights=isinstance(state_dict, dict))
    return WeightsFile(path=path, state_dict=_strip_wrapper_prefix(state_dict, path), info=info)


def _read_safetensors(path: Path, map_location: Any) -> tuple[StateDict, dict[str, Any] | None]:
    """Weights from the file; classes and model config from the sidecar, or from the copy
    ``export_safetensors`` keeps in the file's metadata when the sidecar is gone."""
    device = str(map_location) if isinstance(map_location, str | torch.device) else "cpu"
    try:
        with safetensors.safe_open(path, framework="pt", device=device) as f:
            weights = {k: f.get_tensor(k) for k in f.keys()}
            metadata = f.metadata() or {}
    except Exception as e:  # safetensors raises its own SafetensorError, OSError, ...
        raise CheckpointError(f"{path} is not a readable .safetensors file ({first_line(e)})") from e
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        text, source = sidecar.read_text(), sidecar
    elif "vit" in metadata:
        text, source = metadata["vit"], path
    else:
        return weights, None
    try:
        info = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{source} is not valid JSON ({e})") from e
    is_ours = isinstance(info, dict) and info.get("format") == FORMAT
    return weights, info if is_ours else None


def _read_pickle(path: Path, map_location: Any, noun: str
                 ) -> tuple[StateDict | None, dict[str, Any] | None]:
    obj = _torch_load_plain(path, map_location=map_location, noun=noun)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} is not {noun}: it holds a {type(obj).__name__}, not a dict "
                              "of tensors")
    if obj.get("format") == FORMAT:  # checked in _check_ours, a missing "model" too
        return obj.get("model"), {k: v for k, v in obj.items() if k != "model"}
    inside: list[str] = []
    while not _is_state_dict(obj):
        key = next((k for k in CONTAINER_KEYS if isinstance(obj.get(k), dict)), None)
        if key is None:
            found = ", ".join(repr(k) for k in list(obj)[:8]) or "none"
            raise CheckpointError(
                f"{path} is not {noun}: a dict without weights (its keys: {found}); expected a "
                f"vit checkpoint, a dict of tensors, or one under "
                f"{', '.join(repr(k) for k in CONTAINER_KEYS)}")
        obj = obj[key]
        inside.append(key)
    if inside:
        logger.info("%s: using the weights under %s", path, " -> ".join(repr(k) for k in inside))
    return obj, None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(v, torch.Tensor) for v in obj.values())


def _check_ours(path: Path, info: Mapping[str, Any], *, has_weights: bool) -> None:
    """A file of ours: a version this code reads, and the keys every reader relies on."""
    version = info.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {version} (written by vit {info.get('vit_version')}), "
            f"an incompatible version: this vit {__version__} reads format_version up to "
            f"{FORMAT_VERSION}; upgrade vit")
    missing = ([] if has_weights else ["model"]) + [k for k in REQUIRED_KEYS if k not in info]
    if missing:
        raise CheckpointError(f"{path} is an incomplete vit checkpoint: missing {missing}")
    classes = info["classes"]
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise CheckpointError(f"{path}: 'classes' must be a list of names, got {classes!r}")


def _strip_wrapper_prefix(state_dict: StateDict, path: Path) -> StateDict:
    """Remove prefixes that every key shares: "module." (DistributedDataParallel), "_orig_mod."
    (torch.compile), "model.", ... A ViT's own keys never share one (cls_token, blocks., ...)."""
    removed = ""
    while state_dict and all("." in key for key in state_dict):
        heads = {key.partition(".")[0] for key in state_dict}
        if len(heads) != 1:
            break
        prefix = heads.pop() + "."
        state_dict = {key[len(prefix):]: value for key, value in state_dict.items()}
        removed += prefix
    if removed:
        logger.info("%s: removed the prefix %r from every parameter name", path, removed)
    return dict(state_dict)


def _torch_load_plain(path: str | os.PathLike, *, map_location: Any = "cpu",
                     noun: str = "a weights file") -> Any:
    """``torch.load(weights_only=True)``: tensors and plain data only, never code.

    ``argparse.Namespace`` is allowed too: timm's train.py stores its arguments beside the
    weights, and building one runs no code. Any failure becomes one ``CheckpointError`` line
    that says "PATH is not NOUN: why", or that the file was refused for safety.
    """
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types here: UnpicklingError, RuntimeError, ...
        raise _load_error(Path(path), e, noun) from e


def _load_error(path: Path, error: Exception, noun: str) -> CheckpointError:
    """Turn what ``torch.load`` raised into one line a user can act on."""
    with open(path, "rb") as f:
        head = f.read(512)
    is_pickle = head.startswith((b"PK", b"\x80"))  # zip (torch.save) or pickle protocol >= 2
    refused = _REFUSED.search(str(error)) if is_pickle else None
    if refused:
        what = f" ({refused.group(1)})" if refused.group(1) else ""
        return CheckpointError(
            f"{path} contains arbitrary Python objects{what} and is refused for safety; only "
            "plain tensors and data are loaded (if you trust the file, re-save its state_dict "
            "and pass that to --pretrained)")
    return CheckpointError(f"{path} is not {noun}: {_what_file(head)}")


def _what_file(head: bytes) -> str:
    """What a file that torch.load could not read seems to be, from its first bytes."""
    if head.startswith(b"PK"):  # torch.save's zip container
        return "it looks like a PyTorch file but is truncated or corrupted"
    if not head:
        return "it is empty"
    if head.startswith(b"\x80"):
        return "it is a Python pickle, not a file written by torch.save"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "it is not a file written by torch.save"
    return "it is a text file"
