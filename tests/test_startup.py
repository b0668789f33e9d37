"""Start-up that scales: the cheap pre-flight check, its per-folder cache, the files loader
workers meet broken (recorded, skipped the same way after --resume), and `vit check`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_train import assert_same_weights, make_folder, tiny_config, weights

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
    monkeypatch.setattr(check, "load_image", lambda p: decoded.append(p))
    assert check.quick_check(str(path)) is None and decoded == []
    assert check.quick_check(str(_truncate(path))) is None and decoded == [str(path)]


def test_the_cache_remembers_a_folder_and_rechecks_only_changed_files(tmp_path, monkeypatch):
    data = make_folder(tmp_path / "data", per_class=3)
    (data / "red" / "bad.png").write_bytes(b"")
    samples = scan_folder(data).samples
    opened = []
    real = check.quick_check
    monkeypatch.setattr(check, "quick_check", lambda p: opened.append(p) or real(p))
    cache = tmp_path / "cache"

    good, skipped = check.quick_check_samples(samples, data, cache=cache)
    assert len(opened) == len(samples) == 10
    assert [s["path"] for s in skipped] == [str(data / "red" / "bad.png")]
    assert good == [s for s in samples if not s[0].endswith("bad.png")]
    files = list((cache / "folders").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["root"] == str(data.resolve())

    opened.clear()
    assert check.quick_check_samples(samples, data, cache=cache) == (good, skipped)
    assert opened == []  # nothing opened: every answer came from the cache

    _photo(data / "red" / "bad.png", "PNG")  # repaired: new size and mtime
    good2, skipped2 = check.quick_check_samples(samples, data, cache=cache)
    assert opened == [str(data / "red" / "bad.png")] and skipped2 == [] and good2 == samples

    files[0].write_text("{not json")  # a broken cache is a re-check, never an error
    opened.clear()
    assert check.quick_check_samples(samples, data, cache=cache) == (samples, [])
    assert len(opened) == len(samples)


def test_the_check_runs_in_processes_with_the_same_answer(tmp_path, monkeypatch):
    data = make_folder(tmp_path / "data", per_class=4)
    _truncate(data / "red" / "001.png")
    samples = scan_folder(data).samples
    monkeypatch.setattr(check, "_PARALLEL_FROM", 1)
    monkeypatch.setattr(check, "_CHUNK", 3)
    parallel = check.quick_check_samples(samples, data, workers=2, cache=False)
    assert parallel == check.quick_check_samples(samples, data, workers=1, cache=False)
    assert [s["path"] for s in parallel[1]] == [str(data / "red" / "001.png")]


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
    import vit.training.trainer as trainer_mod

    data, bad = _folder_with_a_late_failure(tmp_path / "data")
    monkeypatch.setattr(check, "quick_check", lambda p: None)
    straight = train(tiny_config(data, tmp_path / "straight", "train.epochs=3"),
                     show_progress=False)
    real = trainer_mod.train_one_epoch

    class Killed(Exception):
        pass

    def dies_in_epoch_3(**kwargs):
        if kwargs["epoch"] == 2:
            raise Killed
        return real(**kwargs)

    monkeypatch.setattr(trainer_mod, "train_one_epoch", dies_in_epoch_3)
    with pytest.raises(Killed):
        train(tiny_config(data, tmp_path / "resumed", "train.epochs=3"), show_progress=False)
    monkeypatch.setattr(trainer_mod, "train_one_epoch", real)
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

