"""The one atomic writer: whole files or none, temp files beside the target, clear errors."""

import json
import os
import pickle

import pytest
import safetensors.torch
import torch

from vit.errors import CheckpointError, OutputError
from vit.io import (
    FORMAT,
    FORMAT_VERSION,
    append_jsonl,
    atomic_save,
    atomic_write,
    make_output_dir,
    read_jsonl,
    read_weights,
    remove_stale_temp_files,
    write_json,
)
from vit.models.checkpoint import load_checkpoint
from vit.models.pretrained import read_pretrained

WEIGHTS = {"cls_token": torch.zeros(1, 1, 4), "blocks.0.attn.qkv.weight": torch.ones(12, 4)}
INFO = {"format": FORMAT, "format_version": FORMAT_VERSION, "model_config": {"depth": 1},
        "classes": ["cat", "dog"], "preprocess": {"img_size": 8}}


def files_in(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_bytes_text_and_functions(tmp_path):
    assert atomic_write(tmp_path / "a" / "b.bin", b"\x00\x01") == tmp_path / "a" / "b.bin"
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"
    atomic_write(tmp_path / "t.txt", "caf\u00e9\n")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "caf\u00e9\n"
    atomic_write(tmp_path / "f.txt", lambda f: f.write(b"written by a function"))
    assert (tmp_path / "f.txt").read_bytes() == b"written by a function"
    atomic_write(tmp_path / "fast.txt", "no fsync", durable=False)
    assert (tmp_path / "fast.txt").read_text() == "no fsync"
    assert files_in(tmp_path) == ["a", "f.txt", "fast.txt", "t.txt"]


def test_durable_writes_fsync_the_file_and_the_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    atomic_write(tmp_path / "x", b"1")
    assert len(synced) == (2 if os.name == "posix" else 1)
    synced.clear()
    atomic_write(tmp_path / "y", b"1", durable=False)
    assert synced == []


def test_json_and_jsonl(tmp_path):
    write_json(tmp_path / "r.json", {"b": 1, "a": [1, 2]})
    assert json.loads((tmp_path / "r.json").read_text()) == {"b": 1, "a": [1, 2]}
    write_json(tmp_path / "s.json", {"b": 1, "a": 2}, indent=0, sort_keys=True)
    assert (tmp_path / "s.json").read_text() == '{\n"a": 2,\n"b": 1\n}\n'
    assert read_jsonl(tmp_path / "m.jsonl") == []
    append_jsonl(tmp_path / "m.jsonl", {"epoch": 1})
    append_jsonl(tmp_path / "m.jsonl", {"epoch": 2})
    assert read_jsonl(tmp_path / "m.jsonl") == [{"epoch": 1}, {"epoch": 2}]


def test_stale_temp_files_are_removed_and_nothing_else(tmp_path):
    for name in (".last.pt.0a1b2c3d.tmp", ".metrics.jsonl.ffffffff.tmp", "notes.tmp",
                 ".hidden", "last.pt"):
        (tmp_path / name).write_text("x")
    remove_stale_temp_files(tmp_path)
    assert files_in(tmp_path) == [".hidden", "last.pt", "notes.tmp"]


def test_make_output_dir(tmp_path):
    assert make_output_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert files_in(tmp_path / "a" / "b") == []  # the probe is gone
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="output folder .* is not writable"):
        make_output_dir(tmp_path / "file" / "run")


def test_atomic_save_round_trip(tmp_path):
    obj = {"w": torch.randn(3, 4), "n": 7, "names": ["a", "b"]}
    atomic_save(obj, tmp_path / "sub" / "x.pt")  # creates the folder
    back = torch.load(tmp_path / "sub" / "x.pt", weights_only=True)
    assert torch.equal(back["w"], obj["w"]) and back["n"] == 7 and back["names"] == ["a", "b"]
    assert files_in(tmp_path / "sub") == ["x.pt"]


def test_atomic_save_keeps_old_file_when_the_write_fails_midway(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"version": "old", "w": torch.ones(1000)}, path)

    def write_half_then_crash(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(torch, "save", write_half_then_crash)
    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_save({"version": "new"}, path)
    monkeypatch.undo()

    assert torch.load(path, weights_only=True)["version"] == "old"
    assert files_in(tmp_path) == ["last.pt"]  # no temp file left


def test_atomic_save_keeps_old_file_when_pickling_fails(tmp_path):
    path = tmp_path / "last.pt"
    atomic_save({"version": "old"}, path)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        atomic_save({"version": "new", "fn": lambda: None}, path)  # lambdas cannot be pickled
    assert torch.load(path, weights_only=True) == {"version": "old"}
    assert files_in(tmp_path) == ["last.pt"]


def test_atomic_save_renames_within_the_target_folder(tmp_path, monkeypatch):
    """os.replace is only atomic within one file system: the temp file must sit beside."""
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renames.append((a, b)), real_replace(a, b)))
    atomic_save({"a": 1}, tmp_path / "x.pt")
    ((src, dst),) = renames
    assert os.path.dirname(src) == os.path.dirname(dst) == str(tmp_path)


def test_atomic_save_unwritable_folder(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(OutputError, match="cannot write"):
        atomic_save({"a": 1}, blocker / "x.pt")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write anywhere")
def test_atomic_save_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="cannot write"):
            atomic_save({"a": 1}, folder / "x.pt")
    finally:
        folder.chmod(0o700)




# --- the one reader of weight files -----------------------------------------------------------


def _same(state_dict, reference=WEIGHTS) -> bool:
    return state_dict.keys() == reference.keys() and all(
        torch.equal(state_dict[k], v) for k, v in reference.items())


@pytest.mark.parametrize("kind", ["ours", "ours_sidecar", "ours_metadata"])
def test_read_weights_of_ours(kind, tmp_path):
    if kind == "ours":
        path = tmp_path / "best.pt"
        torch.save({**INFO, "model": WEIGHTS, "epoch": 3}, path)
    else:
        path = tmp_path / "model.safetensors"
        meta = {"vit": json.dumps(INFO)} if kind == "ours_metadata" else None
        safetensors.torch.save_file(WEIGHTS, path, metadata=meta)
        if kind == "ours_sidecar":
            (tmp_path / "model.json").write_text(json.dumps(INFO))
    weights = read_weights(path)
    assert _same(weights.state_dict)
    assert weights.info["classes"] == ["cat", "dog"] and "model" not in weights.info
    # both users of the reader see the same file the same way
    assert load_checkpoint(path)["classes"] == read_pretrained(path).classes == ["cat", "dog"]


@pytest.mark.parametrize("kind", ["plain", "ddp", "compiled_in_ddp", "container", "safetensors"])
def test_read_weights_of_others(kind, tmp_path):
    path = tmp_path / "w.pth"
    if kind == "plain":
        torch.save(WEIGHTS, path)
    elif kind == "ddp":
        torch.save({f"module.{k}": v for k, v in WEIGHTS.items()}, path)
    elif kind == "compiled_in_ddp":
        torch.save({f"module._orig_mod.{k}": v for k, v in WEIGHTS.items()}, path)
    elif kind == "container":
        torch.save({"epoch": 1, "state_dict": WEIGHTS, "state_dict_ema": WEIGHTS}, path)
    else:
        path = tmp_path / "w.safetensors"
        safetensors.torch.save_file(WEIGHTS, path)
    weights = read_weights(path)
    assert weights.info is None and _same(weights.state_dict)


def test_a_future_format_is_refused_by_every_reader(tmp_path):
    path = tmp_path / "future.pt"
    torch.save({**INFO, "format_version": FORMAT_VERSION + 1, "model": WEIGHTS}, path)
    for read in (read_weights, load_checkpoint, read_pretrained):
        with pytest.raises(CheckpointError, match="incompatible version.*upgrade vit"):
            read(path)
