"""WebDataset tar shards: a folder written as shards, and a training stream read from them.

    info = write_shards("data/pets", "shards/", shard_bytes=512 * 2**20)   # `vit shard`
    spec = open_shards("shards/train-{000000..000009}.tar")                # urls, classes, counts
    dataset = ShardDataset(spec.urls, spec.lengths, transform, seed=0, shuffle_buffer=2048)

A sample is the image file's bytes as stored (key ``jpg``, ``png``, ... after its extension)
and its class index (``cls``, as text). Beside the shards: ``classes.txt`` (one class name a
line) and ``_info.json`` in the layout timm's ``wds`` reader reads (``splits.<name>`` with
``num_samples``, ``filenames``, ``shard_lengths``), plus our ``classes`` and per-class counts.

Reading: every (rank, loader worker) slot owns the shards whose index modulo the number of
slots is its own, so no sample is read twice in an epoch. A slot reads its shards in an order
drawn from (seed, epoch), passes the records through a shuffle buffer drawn from the same, and
decodes them; a record that cannot be decoded is recorded and replaced by the next good one,
so the stream keeps its length and a resumed epoch can skip records without decoding them.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from vit.data.folders import IMG_EXTENSIONS, Sample
from vit.data.images import UnreadableImageError, load_image_bytes
from vit.errors import DataError
from vit.io import append_jsonl, atomic_write, write_json

__all__ = ["is_shard_spec", "write_shards", "open_shards", "ShardSpec", "ShardDataset",
           "ShardLoader", "INFO_NAME", "CLASSES_NAME"]

logger = logging.getLogger(__name__)

INFO_NAME = "_info.json"
CLASSES_NAME = "classes.txt"
_IMAGE_KEYS = tuple(e.lstrip(".") for e in IMG_EXTENSIONS)


def is_shard_spec(text: str | os.PathLike[str] | None) -> bool:
    """Whether ``--data`` names tar shards (``DIR/train-{000000..000123}.tar``,
    ``DIR/train-*.tar``, ``x.tar``)."""
    return text is not None and str(text).split("::")[0].endswith(".tar")


# --- writing ----------------------------------------------------------------------------------


def _key(rel: str) -> str:
    """A record key from a relative path: no extension, no dots (webdataset splits on them)."""
    stem, _ = os.path.splitext(rel)
    return stem.replace(".", "_")


def _write_tar(f: Any, samples: Sequence[Sample], cut: int) -> None:
    import webdataset as wds

    with wds.TarWriter(f, encoder=False) as tar:
        for path, target in samples:
            ext = os.path.splitext(path)[1].lstrip(".").lower()
            with open(path, "rb") as img:
                tar.write({"__key__": _key(path[cut:]), ext: img.read(),
                           "cls": str(target).encode()})


def _group_by_size(samples: Sequence[Sample], shard_bytes: int) -> list[list[Sample]]:
    groups: list[list[Sample]] = [[]]
    size = 0
    for sample in samples:
        file_size = os.path.getsize(sample[0]) + 1536  # tar headers and padding of 2 members
        if groups[-1] and size + file_size > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(sample)
        size += file_size
    return groups


def write_split(samples: Sequence[Sample], split: str, output: Path, root: Path, *,
                shard_bytes: int, seed: int, num_classes: int) -> dict[str, Any]:
    """``output/<split>-NNNNNN.tar`` in a seeded random order (classes mixed in every shard);
    the split's entry of ``_info.json``."""
    order = np.random.default_rng([seed, zlib.crc32(split.encode())]).permutation(len(samples))
    groups = _group_by_size([samples[i] for i in order], shard_bytes)
    prefix = str(root).rstrip(os.sep) + os.sep
    cut = len(prefix) if all(p.startswith(prefix) for p, _ in samples) else 0
    names = []
    for k, group in enumerate(tqdm(groups, desc=f"writing {split} shards", unit="shard",
                                   disable=None)):
        names.append(f"{split}-{k:06d}.tar")
        atomic_write(output / names[-1], lambda f, g=group: _write_tar(f, g, cut))
    counts = np.bincount([t for _, t in samples], minlength=num_classes).tolist()
    return {"name": split, "num_samples": len(samples), "filenames": names,
            "shard_lengths": [len(g) for g in groups], "per_class": counts}


def write_shards(data_dir: str | os.PathLike[str], output: str | os.PathLike[str], *,
                 shard_bytes: int = 512 * 2**20, val_fraction: float = 0.1, seed: int = 0,
                 workers: int = 1) -> dict[str, Any]:
    """Write the folder ``data_dir`` (``<class>/<image>`` or ``train/`` + ``val/``) as shards.

    Without a ``val/`` folder the validation images are held out exactly as ``vit train``
    would (stratified, ``val_fraction``, ``seed``). Unreadable files (the cheap check of
    ``vit.data.check``) are left out and listed under ``skipped`` in ``_info.json``.
    """
    from vit.data.check import checked_scan
    from vit.data.folders import resolve_data_dirs
    from vit.data.splits import stratified_split

    output = Path(output)
    train_dir, val_dir = resolve_data_dirs(data_dir)
    scan, good, skipped = checked_scan(train_dir, workers=workers)
    splits: dict[str, tuple[list[Sample], Path]] = {}
    if val_dir is not None:
        val_scan, val_good, val_skipped = checked_scan(val_dir, workers=workers)
        if val_scan.classes != scan.classes:
            raise DataError(f"{val_dir} has classes {val_scan.classes} but {train_dir} has "
                            f"{scan.classes}; they must match")
        splits = {"train": (good, train_dir), "val": (val_good, val_dir)}
        skipped = skipped + val_skipped
    else:
        train_idx, val_idx = stratified_split([t for _, t in good], val_fraction=val_fraction,
                                              seed=seed)
        splits = {"train": ([good[i] for i in train_idx], train_dir),
                  "val": ([good[i] for i in val_idx], train_dir)}
    info: dict[str, Any] = {"name": Path(data_dir).name, "classes": scan.classes, "splits": {},
                            "source": str(Path(data_dir).resolve()), "skipped": skipped}
    for split, (samples, root) in splits.items():
        info["splits"][split] = write_split(samples, split, output, root, shard_bytes=shard_bytes,
                                            seed=seed, num_classes=len(scan.classes))
    atomic_write(output / CLASSES_NAME, "".join(f"{c}\n" for c in scan.classes))
    write_json(output / INFO_NAME, info)
    return info


# --- opening ----------------------------------------------------------------------------------


@dataclass
class ShardSpec:
    """Shards named by a brace pattern, with what ``_info.json``/``classes.txt`` say of them."""

    pattern: str
    urls: list[str]
    lengths: list[int]  # samples per shard
    classes: list[str]
    per_class: list[int] | None  # samples per class over these shards, when known
    info: dict[str, Any]

    @property
    def num_samples(self) -> int:
        return sum(self.lengths)


def _expand(pattern: str) -> list[str]:
    from webdataset.shardlists import expand_urls

    urls = [os.path.expanduser(u) for u in expand_urls(pattern)]
    if any(c in pattern for c in "*?["):  # a glob ('shards/train-*.tar'): the files it matches
        import glob

        urls = sorted(f for u in urls for f in glob.glob(u))
        if not urls:
            raise DataError(f"the shard pattern {pattern!r} matches no file; check the folder")
    missing = [u for u in urls if not os.path.isfile(u)]
    if len(missing) == len(urls):
        raise DataError(f"the shard pattern {pattern!r} matches no file (it names {len(urls)}, "
                        f"e.g. {urls[0]}); check the folder and the {{first..last}} range")
    if missing:
        raise DataError(f"{len(missing)} of the {len(urls)} shards named by {pattern!r} do not "
                        f"exist, e.g. {missing[0]}; check the {{first..last}} range")
    return urls


def _read_info(folder: Path) -> dict[str, Any]:
    import json

    path = folder / INFO_NAME
    if not path.exists():
        path = folder / "info.json"
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except ValueError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); write the shards again with "
                        "`vit shard`") from exc


def _classes(folder: Path, info: dict[str, Any]) -> list[str]:
    if info.get("classes"):
        return list(info["classes"])
    if (folder / CLASSES_NAME).exists():
        return [c for c in (folder / CLASSES_NAME).read_text().splitlines() if c.strip()]
    raise DataError(f"no class list beside the shards in {folder} ({INFO_NAME} with 'classes', "
                    f"or {CLASSES_NAME}); shards written by `vit shard` have both")


def _first_record(url: str) -> dict[str, Any]:
    import webdataset as wds

    for record in wds.tariterators.tarfile_samples([{"url": url}]):
        return record
    return {}


def _check_has_classes(url: str) -> None:
    """One clear line for shards without class indices, before any training."""
    try:
        record = _first_record(url)
    except Exception as exc:  # not a tar at all
        raise DataError(f"{url} cannot be read as a tar shard ({exc})") from exc
    if "cls" not in record:
        fields = sorted(k for k in record if not k.startswith("__"))
        raise DataError(f"{url} has no class index (.cls) in its samples (the first, "
                        f"{record.get('__key__')!r}, has {fields}); write shards with "
                        "`vit shard`, which stores one per sample")


def _count(url: str) -> int:
    """Samples in a shard that _info.json does not list: its distinct keys."""
    import tarfile

    from webdataset.tariterators import base_plus_ext

    with tarfile.open(url) as tar:
        return len({base_plus_ext(m.name)[0] for m in tar.getmembers() if m.isfile()})


def open_shards(pattern: str) -> ShardSpec:
    """Expand ``pattern`` (braces), check the files, read classes and sample counts."""
    urls = _expand(pattern)
    folder = Path(urls[0]).parent
    info = _read_info(folder)
    classes = _classes(folder, info)
    known = {name: n for split in info.get("splits", {}).values()
             for name, n in zip(split.get("filenames", []), split.get("shard_lengths", []),
                                strict=False)}
    for url in urls:
        _check_has_classes(url)
    lengths = [known[os.path.basename(u)] if os.path.basename(u) in known else _count(u)
               for u in urls]
    per_class = None
    for split in info.get("splits", {}).values():
        if sorted(split.get("filenames", [])) == sorted(os.path.basename(u) for u in urls):
            per_class = split.get("per_class")
    return ShardSpec(pattern, urls, lengths, classes, per_class, info)


# --- reading ----------------------------------------------------------------------------------


def slot_shards(num_shards: int, slot: int, num_slots: int) -> list[int]:
    """The shards one (rank, worker) slot reads: every ``num_slots``-th from ``slot``."""
    return list(range(slot, num_shards, num_slots))


def _shuffled(records: Iterator[dict], size: int, rng: np.random.Generator) -> Iterator[dict]:
    """A shuffle buffer of ``size`` records (0 or 1: the order as read)."""
    if size <= 1:
        yield from records
        return
    buffer: list[dict] = []
    for record in records:
        if len(buffer) < size:
            buffer.append(record)
            continue
        i = int(rng.integers(len(buffer)))
        yield buffer[i]
        buffer[i] = record
    rng.shuffle(buffer)  # type: ignore[arg-type]
    yield from buffer


class ShardDataset(IterableDataset):
    """Decoded, augmented ``(tensor, target)`` pairs streamed from tar shards.

    ``set_epoch(epoch, start_batch)`` picks the epoch's shard order and shuffle buffer and,
    for a resumed epoch, how many batches of this rank are already done: each loader worker
    skips its share of records without decoding them and plays the role it had in the
    uninterrupted run, so the remaining batches come out as they would have.
    """

    def __init__(self, urls: Sequence[str], lengths: Sequence[int], num_classes: int,
                 transform: Callable | None, *, seed: int, shuffle_buffer: int = 0,
                 rank: int = 0, world_size: int = 1, batch_size: int = 1,
                 skip_log: str | None = None):
        self.urls, self.lengths = list(urls), list(lengths)
        self.num_classes, self.transform, self.seed = num_classes, transform, seed
        self.shuffle_buffer, self.rank, self.world_size = shuffle_buffer, rank, world_size
        self.batch_size, self.skip_log = batch_size, skip_log
        self.epoch = self.start_batch = 0
        self.skipped: list[dict[str, str]] = []

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def slot_samples(self, num_workers: int) -> list[list[int]]:
        """Samples per worker, for every rank: ``[rank][worker]``."""
        slots = self.world_size * max(num_workers, 1)
        return [[sum(self.lengths[i] for i in slot_shards(len(self.urls), r * max(
            num_workers, 1) + w, slots)) for w in range(max(num_workers, 1))]
            for r in range(self.world_size)]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        role = (worker + self.start_batch) % workers  # the worker this one stands in for
        mine = slot_shards(len(self.urls), self.rank * workers + role, self.world_size * workers)
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, role])
        if self.shuffle_buffer > 1:
            mine = [mine[i] for i in rng.permutation(len(mine))]
        records = _shuffled(self._records(mine), self.shuffle_buffer, rng)
        done = len(range(role, self.start_batch, workers)) * self.batch_size
        yield from self._decoded(islice(records, done, None))

    def _records(self, shards: Sequence[int]) -> Iterator[dict]:
        import webdataset as wds

        def handler(exc: Exception) -> bool:
            self._skip(f"{exc.args[-1] if exc.args else '?'}", f"broken tar data ({exc})")
            return True  # go on with the next record or shard

        yield from wds.tariterators.tarfile_samples(
            [{"url": self.urls[i]} for i in shards], handler=handler)

    def _skip(self, name: str, reason: str) -> None:
        record = {"path": name, "reason": reason}
        self.skipped.append(record)
        if self.skip_log is not None:
            append_jsonl(self.skip_log, record)
        else:
            logger.warning("Skipping %s: %s", name, reason)

    def _decode(self, record: dict) -> tuple[torch.Tensor, int] | None:
        name = f"{record.get('__url__')}:{record.get('__key__')}"
        key = next((k for k in _IMAGE_KEYS if k in record), None)
        try:
            target = int(record["cls"])
        except (KeyError, ValueError):
            self._skip(name, "no class index (.cls) in the record")
            return None
        if key is None or not 0 <= target < self.num_classes:
            self._skip(name, "no image in the record" if key is None else
                       f"class index {target} outside 0..{self.num_classes - 1}")
            return None
        try:
            image = load_image_bytes(record[key], name)
        except UnreadableImageError as exc:
            self._skip(name, exc.reason)
            return None
        if hasattr(self.transform, "set_sample_seed"):
            self.transform.set_sample_seed(self.seed, self.epoch, zlib.crc32(name.encode()))
        if self.transform is None:
            array = np.asarray(image, dtype=np.float32) / 255.0
            return torch.from_numpy(array).permute(2, 0, 1).contiguous(), target
        return self.transform(image), target

    def _decoded(self, records: Iterator[dict]) -> Iterator[tuple[torch.Tensor, int]]:
        """Decoded samples; a bad record is replaced by the next good one (the count stays)."""
        pending = 0
        for record in records:
            sample = self._decode(record)
            if sample is None:
                pending += 1
                continue
            for _ in range(1 + pending):
                yield sample
            pending = 0


class ShardLoader:
    """A DataLoader over a ``ShardDataset`` with a fixed number of batches per epoch: the
    fewest any rank can fill, so every process takes the same number of steps."""

    def __init__(self, dataset: ShardDataset, *, batch_size: int, workers: int,
                 drop_last: bool, pin_memory: bool = False):
        self.dataset = dataset
        self.loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                 drop_last=drop_last, pin_memory=pin_memory,
                                 persistent_workers=False)
        per_slot = dataset.slot_samples(workers)
        rounding = (lambda n: n // batch_size) if drop_last else (lambda n: -(-n // batch_size))
        self.batches = min(sum(rounding(n) for n in rank) for rank in per_slot)
        self.limit = self.batches if drop_last else None  # evaluation reads everything

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.dataset.set_epoch(epoch, start_batch)
        self.start_batch = start_batch

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[Any]:
        if self.limit is None:
            return iter(self.loader)
        return islice(iter(self.loader), self.limit - self.dataset.start_batch)
