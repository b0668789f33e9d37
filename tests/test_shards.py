"""WebDataset shards: `vit shard` writes them (timm's layout), training streams them with the
same pairs as the folder, every sample once per epoch over ranks and workers, exact mid-epoch
resume, bad records skipped and counted, and one clear line for the usual mistakes."""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import error_line, run_cli
from helpers.images import make_folder
from helpers.training import tiny_config
from PIL import Image

from vit.data.folders import scan_folder
from vit.data.images import load_image
from vit.data.shards import ShardDataset, ShardLoader, open_shards, write_shards
from vit.data.splits import stratified_split
from vit.errors import DataError
from vit.training.trainer import train

PER_CLASS = 12


def _digest(image: torch.Tensor) -> str:
    """The identity of a decoded image (transform None: floats k/255)."""
    pixels = (image * 255).round().to(torch.uint8).numpy()
    return hashlib.sha1(pixels.tobytes()).hexdigest()


def _file_digest(path: str) -> str:
    return hashlib.sha1(np.asarray(load_image(path)).transpose(2, 0, 1).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("shards")
    data = make_folder(root / "data", per_class=PER_CLASS)
    info = write_shards(data, root / "out", shard_bytes=3000, val_fraction=0.25, seed=0)
    return data, root / "out", info


def _pattern(out: Path, info: dict, split: str = "train") -> str:
    return f"{out}/{split}-{{000000..{len(info['splits'][split]['filenames']) - 1:06d}}}.tar"


def test_shards_are_written_in_timms_layout(sharded):
    from timm.data.readers.reader_wds import _parse_split_info

    data, out, info = sharded
    on_disk = json.loads((out / "_info.json").read_text())
    assert (out / "classes.txt").read_text().split() == ["blue", "green", "red"]
    for split in ("train", "val"):
        parsed = _parse_split_info(split, on_disk)  # timm's own reader of _info.json
        assert all((out / name).is_file() for name in parsed.filenames)
        assert sum(parsed.shard_lengths) == parsed.num_samples
    assert on_disk["splits"]["train"]["num_samples"] + on_disk["splits"]["val"][
        "num_samples"] == 3 * PER_CLASS
    assert len(on_disk["splits"]["train"]["filenames"]) >= 4


def test_folder_and_shards_give_the_same_pairs(sharded):
    data, out, info = sharded
    samples = scan_folder(data).samples
    train_idx, val_idx = stratified_split([t for _, t in samples], val_fraction=0.25, seed=0)
    for split, idx in (("train", train_idx), ("val", val_idx)):
        spec = open_shards(_pattern(out, info, split))
        stream = ShardDataset(spec.urls, spec.lengths, 3, None, seed=0)
        from_shards = Counter((_digest(x), y) for x, y in stream)
        from_folder = Counter((_file_digest(samples[i][0]), samples[i][1]) for i in idx)
        assert from_shards == from_folder, split


def test_two_ranks_of_two_workers_see_every_sample_once(sharded):
    _, out, info = sharded
    spec = open_shards(_pattern(out, info))
    seen: Counter = Counter()
    for rank in range(2):  # two processes of a torchrun, one after the other
        dataset = ShardDataset(spec.urls, spec.lengths, 3, None, seed=0, shuffle_buffer=4,
                               rank=rank, world_size=2)
        dataset.set_epoch(1)
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2)
        seen.update(_digest(x) for x, _ in loader)
    everything = Counter(_digest(x) for x, _ in ShardDataset(spec.urls, spec.lengths, 3, None,
                                                              seed=0))
    assert seen == everything and max(seen.values()) == 1
    assert sum(seen.values()) == spec.num_samples


def _batches(loader: ShardLoader, epoch: int, start: int = 0) -> list[list[str]]:
    loader.set_epoch(epoch, start)
    return [[_digest(x) for x in xs] for xs, _ in loader]


def test_resume_mid_epoch_continues_where_it_stopped(sharded):
    _, out, info = sharded
    spec = open_shards(_pattern(out, info))

    def loader() -> ShardLoader:
        dataset = ShardDataset(spec.urls, spec.lengths, 3, None, seed=3, shuffle_buffer=5,
                               batch_size=2)
        return ShardLoader(dataset, batch_size=2, workers=2, drop_last=True)

    whole = _batches(loader(), epoch=2)
    assert len(whole) == len(loader()) >= 5
    for start in (1, 2, 3):
        assert _batches(loader(), epoch=2, start=start) == whole[start:], start
    assert _batches(loader(), epoch=3) != whole  # another epoch, another order


def _tar_with(path: Path, records: list[dict]) -> None:
    import webdataset as wds

    with wds.TarWriter(str(path), encoder=False) as tar:
        for record in records:
            tar.write(record)


def _jpeg(seed: int, truncate: bool = False) -> bytes:
    buf = io.BytesIO()
    noise = np.random.default_rng(seed).integers(0, 256, (40, 40, 3), np.uint8)
    Image.fromarray(noise).save(buf, "JPEG")
    return buf.getvalue()[: buf.tell() // 2] if truncate else buf.getvalue()


def test_bad_records_are_skipped_and_counted(tmp_path):
    records = [{"__key__": f"k{i}", "jpg": _jpeg(i, truncate=i == 2), "cls": b"0"}
               for i in range(5)]
    records.append({"__key__": "nolabel", "jpg": _jpeg(9), "cls": b"x"})
    _tar_with(tmp_path / "s-0.tar", records)
    (tmp_path / "classes.txt").write_text("a\nb\n")
    spec = open_shards(str(tmp_path / "s-{0..0}.tar"))
    assert spec.lengths == [6]
    dataset = ShardDataset(spec.urls, spec.lengths, 2, None, seed=0)
    out = [_digest(x) for x, _ in dataset]
    assert len(out) == 5  # the truncated one replaced by the next; the last has no successor
    assert out[2] == out[3]
    reasons = {r["path"].split(":")[-1]: r["reason"] for r in dataset.skipped}
    assert sorted(reasons) == ["k2", "nolabel"] and "truncated" in reasons["k2"]


def test_training_from_shards_reports_bad_records(sharded, tmp_path):
    data, out, info = sharded
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("classes.txt",):
        (bad / name).write_text((out / name).read_text())
    records = [{"__key__": f"k{i}", "png": Path(p).read_bytes(), "cls": str(t).encode()}
               for i, (p, t) in enumerate(scan_folder(data).samples[:16])]
    records[5]["png"] = records[5]["png"][:40]
    for k in range(2):
        _tar_with(bad / f"train-{k}.tar", records[k * 8:(k + 1) * 8])
    summary = train(tiny_config(f"{bad}/train-{{0..1}}.tar", tmp_path / "run", "train.epochs=1",
                                f"data.val_root={data}"), show_progress=False)
    report = json.loads((summary.run_dir / "data_report.json").read_text())
    assert report["train"]["images"] == 16 and report["val"]["images"] == 3 * PER_CLASS
    assert [s["path"] for s in report["skipped"]] == [f"{bad}/train-0.tar:k5"]


def test_vit_shard_and_train_from_the_shards(tmp_path, capsys):
    data = make_folder(tmp_path / "data", per_class=8)
    code, out, err = run_cli(capsys, "shard", "--data", data, "--output", tmp_path / "s",
                             "--shard-size", "2KB")
    assert code == 0, err
    pattern = out.splitlines()[0].split(": ", 1)[1].split("shards: ")[1].strip("'")
    assert pattern.startswith(str(tmp_path / "s" / "train-{000000.."))
    code, _, err = run_cli(capsys, "train", "--data", pattern, "--output", tmp_path / "run",
                           "--epochs", "1", "--batch-size", "4", "--device", "cpu",
                           "--workers", "2", "--model", "vit_nano_patch4_32", "--img-size", "16",
                           "train.explain_samples=0")
    assert code == 0, err
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["kind"] == "shards" and "val-000000.tar" in split["val"]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert len(metrics) == 1


def test_a_pattern_that_matches_no_file_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--data", f"{tmp_path}/train-{{000000..000009}}.tar",
                           "--output", tmp_path / "run", "--device", "cpu")
    assert code == 2
    assert error_line(err).startswith("error: the shard pattern") and "matches no file" in err


def test_a_shard_without_class_indices_is_one_line(tmp_path, capsys):
    _tar_with(tmp_path / "x-0.tar", [{"__key__": "a", "jpg": _jpeg(0)}])
    (tmp_path / "classes.txt").write_text("a\n")
    with pytest.raises(DataError, match=r"has no class index \(\.cls\)"):
        open_shards(str(tmp_path / "x-0.tar"))
    code, _, err = run_cli(capsys, "train", "--data", tmp_path / "x-0.tar",
                           "--output", tmp_path / "run", "--device", "cpu")
    assert code == 2 and "has no class index (.cls)" in error_line(err)


def test_a_glob_names_the_shards_in_order(tmp_path, capsys):
    data = make_folder(tmp_path / "data", per_class=8)
    code, out, err = run_cli(capsys, "shard", "--data", data, "--output", tmp_path / "s",
                             "--shard-size", "2KB")
    assert code == 0, err
    pattern = out.splitlines()[0].split(": ", 1)[1].split("shards: ")[1].strip("'")
    braces = open_shards(pattern)
    assert len(braces.urls) > 1
    assert open_shards(str(tmp_path / "s" / "train-*.tar")).urls == braces.urls
    code, _, err = run_cli(capsys, "train", "--data", f"{tmp_path}/none-*.tar",
                           "--output", tmp_path / "run", "--device", "cpu")
    assert code == 2 and "matches no file" in error_line(err)
