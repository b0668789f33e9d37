"""Start-up that scales: the cheap pre-flight check, its per-folder cache, the files loader
workers meet broken (recorded, skipped the same way after --resume), and `vit check`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from helpers.images import make_folder
from helpers.models import assert_same_weights, weights
from helpers.training import tiny_config, train_killed_in_epoch
from PIL import Image

import vit.data.check as check
from vit.cli.main import main
from vit.data.folders import scan_folder
from vit.training.trainer import train


def _photo(path: Path, fmt: str = "JPEG", size=(24, 16)) -> Path:
    noise = np.random.default_rng(len(str(path))).integers(0, 256, (*size[::-1], 3), np.uint8)
    Image.fromarray(noise).save(path, fmt)
    return path


def _truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    return path


def test_quick_check_finds_truncated_files_and_keeps_whole_ones(tmp_path):
    whole = {f"ok.{ext}": _photo(tmp_path / f"ok.{ext}", fmt)
             for ext, fmt in (("jpg", "JPEG"), ("png", "PNG"), ("gif", "GIF"), ("webp", "WEBP"),
                              ("bmp", "BMP"), ("tif", "TIFF"))}
    trailing = _photo(tmp_path / "trailing.jpg")
    trailing.write_bytes(trailing.read_bytes() + b"camera maker notes" * 10)  # PIL reads it
    for path in [*whole.values(), trailing]:
        assert check.quick_check(str(path)) is None, path.name
    assert "truncated" in check.quick_check(str(_truncate(_photo(tmp_path / "t.jpg"))))
    assert check.quick_check(str(_truncate(_photo(tmp_path / "t.png", "PNG")))) is not None
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert check.quick_check(str(tmp_path / "empty.jpg")) == "empty file (zero bytes)"
    (tmp_path / "page.jpg").write_text("<html>")
    assert "not an image" in check.quick_check(str(tmp_path / "page.jpg"))


def test_quick_check_does_not_decode_whole_jpegs(tmp_path, monkeypatch):
    path = _photo(tmp_path / "ok.jpg", size=(200, 150))
    decoded = []
    monkeypatch.setattr(check, "decode_reason", lambda p: decoded.append(p))  # the full decode
    assert check.quick_check(str(path)) is None and decoded == []
    assert check.quick_check(str(_truncate(path))) is None and decoded == [str(path)]


def _age(folder: Path, seconds: float = 60.0) -> None:
    """Date every folder back, as if the cache were written long after the last change."""
    for d in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        old = d.stat().st_mtime - seconds
        os.utime(d, (old, old))


def test_the_cache_remembers_a_folder_and_checks_only_new_files(tmp_path, monkeypatch):
    data = make_folder(tmp_path / "data", per_class=3)
    (data / "red" / "bad.png").write_bytes(b"")
    samples = scan_folder(data).samples
    opened, listed = [], []
    real_check, real_scan = check.quick_check, check.scan_folder
    monkeypatch.setattr(check, "quick_check", lambda p: opened.append(p) or real_check(p))
    monkeypatch.setattr(check, "scan_folder", lambda r: listed.append(r) or real_scan(r))
    cache = tmp_path / "cache"
    _age(data)

    scan, good, skipped = check.checked_scan(data, cache=cache)
    assert len(opened) == len(samples) == 10 and scan.samples == samples
    assert [s["path"] for s in skipped] == [str(data / "red" / "bad.png")]
    assert good == [s for s in samples if not s[0].endswith("bad.png")]
    files = list((cache / "folders").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["root"] == str(data.resolve())

    opened.clear(), listed.clear()
    again = check.checked_scan(data, cache=cache)
    assert (again[0].samples, again[0].classes, again[1:]) == (samples, scan.classes,
                                                               (good, skipped))
    assert opened == [] and listed == []  # neither listed nor opened: all from the cache

    _photo(data / "red" / "new.png", "PNG")  # a new file changes its folder's mtime
    (data / "red" / "bad.png").unlink()
    scan3, good3, skipped3 = check.checked_scan(data, cache=cache)
    assert listed == [data] and opened == [str(data / "red" / "new.png")]
    assert skipped3 == [] and good3 == scan3.samples and len(good3) == 10

    files[0].write_text("{not json")  # a broken cache is a re-check, never an error
    opened.clear()
    assert check.checked_scan(data, cache=cache)[1] == good3 and len(opened) == 10


def test_a_folder_changed_just_before_the_listing_is_listed_again(tmp_path):
    """Folder mtimes have a coarse clock: a change in the same tick as the listing must not
    hide a file (git's "racy" entries)."""
    data = make_folder(tmp_path / "data", per_class=2)
    check.checked_scan(data, cache=tmp_path / "cache")
    stamps = {d: d.stat().st_mtime_ns for d in (data, data / "red")}
    _photo(data / "red" / "late.png", "PNG")
    for d, ns in stamps.items():  # as if the folder's clock had not moved
        os.utime(d, ns=(ns, ns))
    scan, _, _ = check.checked_scan(data, cache=tmp_path / "cache")
    assert str(data / "red" / "late.png") in [p for p, _ in scan.samples]


def test_the_check_runs_in_processes_with_the_same_answer(tmp_path, monkeypatch):
    data = make_folder(tmp_path / "data", per_class=4)
    _truncate(data / "red" / "001.png")
    monkeypatch.setattr(check, "_PARALLEL_FROM", 1)
    monkeypatch.setattr(check, "_CHUNK", 3)
    parallel = check.checked_scan(data, workers=2, cache=False)
    assert parallel[1:] == check.checked_scan(data, workers=1, cache=False)[1:]
    assert [s["path"] for s in parallel[2]] == [str(data / "red" / "001.png")]


# ---------------------------------------------------------------------------------------------
# a file that passes the check and fails in a loader worker
# ---------------------------------------------------------------------------------------------


def _folder_with_a_late_failure(root: Path) -> tuple[Path, str]:
    data = make_folder(root, per_class=8)
    bad = data / "green" / "003.png"
    _truncate(bad)
    return data, str(bad)


def test_a_file_met_broken_by_a_worker_is_reported_and_skipped(tmp_path, monkeypatch, caplog):
    data, bad = _folder_with_a_late_failure(tmp_path / "data")
    monkeypatch.setattr(check, "quick_check", lambda p: None)  # the check misses it
    train(tiny_config(data, tmp_path / "run", "train.epochs=2", "data.workers=2",
                      "data.val_fraction=0.5"), show_progress=False)
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert [s["path"] for s in report["skipped"]] == [bad]
    assert "truncated" in report["skipped"][0]["reason"]
    assert report["train"]["images"] + report["val"]["images"] == 3 * 8 - 1
    assert len([r for r in caplog.records if bad in r.getMessage()]) == 1  # warned once
    assert any("1 unreadable files skipped" in r.getMessage() for r in caplog.records)


def test_resume_skips_a_late_failure_the_same_way(tmp_path, monkeypatch):
    """Bit-identical --resume (one process, folder) with a file that fails only when decoded."""
    data, bad = _folder_with_a_late_failure(tmp_path / "data")
    monkeypatch.setattr(check, "quick_check", lambda p: None)
    straight = train(tiny_config(data, tmp_path / "straight", "train.epochs=3"),
                     show_progress=False)
    train_killed_in_epoch(monkeypatch, tiny_config(data, tmp_path / "resumed", "train.epochs=3"),
                          3)
    torch.manual_seed(999)
    resumed = train(tiny_config(data, tmp_path / "resumed", "train.epochs=3"),
                    resume=tmp_path / "resumed", show_progress=False)
    assert resumed.epochs_done == straight.epochs_done
    assert_same_weights(weights(tmp_path / "straight" / "last.pt"),
                        weights(tmp_path / "resumed" / "last.pt"))
    for run in ("straight", "resumed"):
        report = json.loads((tmp_path / run / "data_report.json").read_text())
        assert [s["path"] for s in report["skipped"]] == [bad], run


# ---------------------------------------------------------------------------------------------
# vit check
# ---------------------------------------------------------------------------------------------


def test_vit_check_decodes_everything_and_names_every_bad_file(tmp_path, capsys):
    data = make_folder(tmp_path / "data" / "train", per_class=3)
    make_folder(tmp_path / "data" / "val", per_class=2)
    _truncate(data / "red" / "001.png")
    (tmp_path / "data" / "val" / "blue" / "x.jpg").write_text("not an image")
    code = main(["check", str(tmp_path / "data"), "--workers", "2",
                 "--output", str(tmp_path / "check.json")])
    out, err = capsys.readouterr()
    assert code == 1
    lines = out.splitlines()
    assert any(line.startswith(str(data / "red" / "001.png")) and "truncated" in line
               for line in lines)
    assert any(line.startswith(str(tmp_path / "data" / "val" / "blue" / "x.jpg"))
               for line in lines)
    assert "16 images, 2 unreadable" in err
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["images"] == 16 and len(report["unreadable"]) == 2

    assert main(["check", str(tmp_path / "data" / "val"), "--workers", "1"]) == 1
    (tmp_path / "data" / "val" / "blue" / "x.jpg").unlink()
    assert main(["check", str(tmp_path / "data" / "val")]) == 0
    assert "6 images, 0 unreadable" in capsys.readouterr().err

