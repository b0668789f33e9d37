"""Training runs end to end: files written, exact resume, torchrun with 2 processes, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.images import make_folder
from helpers.models import assert_same_weights, weights
from helpers.training import (
    ROOT,
    cli_args,
    start_train_script,
    tiny_config,
    train_killed_in_epoch,
    wait_for,
)

from vit.cli import main
from vit.config import load_config
from vit.models.checkpoint import load_checkpoint
from vit.training.trainer import train


def test_train_writes_every_file(tmp_path):
    data = make_folder(tmp_path / "data")
    summary = train(tiny_config(data, tmp_path / "run", "train.epochs=3"), show_progress=False)
    run = summary.run_dir
    for name in ("config.yaml", "metrics.jsonl", "curves.png", "last.pt", "best.pt",
                 "data_report.json", "split.json"):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for key in ("epoch", "lr", "train_loss", "val_loss", "val_top1", "val_top5", "images_per_s",
                "seconds", "data_wait_pct", "elapsed_s"):
        assert key in records[0]
    assert records[-1]["val_top1"] >= 75.0  # colours are easy: the run really learned
    report = json.loads((run / "data_report.json").read_text())
    assert report["classes"] == ["blue", "green", "red"]
    split = json.loads((run / "split.json").read_text())
    assert len(split["val_files"]) == 9  # 25% of 12 per class
    best = load_checkpoint(run / "best.pt")
    assert best["classes"] == ["blue", "green", "red"]
    assert "optimizer" not in best  # best.pt is for prediction; last.pt for resume
    assert "optimizer" in load_checkpoint(run / "last.pt")
    # the resolved config reproduces the run
    again = load_config(run / "config.yaml")
    assert again.train.epochs == 3 and again.model.depth == 2


@pytest.mark.parametrize("pipeline", ["albumentations", "memory"])
def test_every_run_ends_with_overlays_of_held_out_images(tmp_path, pipeline):
    data = make_folder(tmp_path / "data")
    summary = train(tiny_config(data, tmp_path / "run", "train.epochs=1", "train.explain_samples=4",
                                f"data.pipeline={pipeline}"), show_progress=False)
    assert summary.overlays == tmp_path / "run" / "overlays"
    held_out = [Path(p) for p in json.loads((tmp_path / "run" / "split.json").read_text())["val_files"]]
    drawn = sorted(p.name for p in summary.overlays.iterdir())
    # one class after another: blue, green, red, then blue again
    by_class = {c: [p for p in held_out if p.parent.name == c] for c in ("blue", "green", "red")}
    expected = [by_class["blue"][0], by_class["green"][0], by_class["red"][0], by_class["blue"][1]]
    stems = [p.stem for p in expected]  # two held-out files of one name get their folder's too
    names = [f"{p.parent.name}_{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in expected]
    assert drawn == sorted(["grid.png", "index.html", *(f"{name}_attnlrp.png" for name in names)])


def test_resume_reads_last_pt_once(tmp_path, monkeypatch):
    data = make_folder(tmp_path / "data", per_class=4)
    train(tiny_config(data, tmp_path / "run", "train.epochs=1"), show_progress=False)
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: loads.append(Path(f).name) or
                        real_load(f, *a, **k))
    assert main(["train", "--resume", str(tmp_path / "run"), "--epochs", "2"]) == 0
    assert loads.count("last.pt") == 1


def test_memory_pipeline_decodes_each_image_once_and_reports_unreadable_ones(tmp_path,
                                                                            monkeypatch):
    import vit.data.images
    import vit.data.memory

    data = make_folder(tmp_path / "data")
    (data / "red" / "broken.png").write_bytes(b"not a png")
    decoded = []
    for module in (vit.data.images, vit.data.memory):  # the pre-flight check and the memory pipeline
        real = module.load_image
        monkeypatch.setattr(module, "load_image",
                            lambda path, real=real: decoded.append(str(path)) or real(path))
    train(tiny_config(data, tmp_path / "run", "train.epochs=1", "data.pipeline=memory"),
          show_progress=False)
    assert len(decoded) == len(set(decoded)) == 3 * 12 + 1
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert [s["path"] for s in report["skipped"]] == [str(data / "red" / "broken.png")]
    assert report["num_skipped"] == 1
    assert report["train"]["images"] + report["val"]["images"] == 3 * 12


def test_held_out_examples_take_one_class_after_another():
    from vit.training.run_files import held_out_examples

    samples = [("a0", 0), ("a1", 0), ("a2", 0), ("b0", 1), ("c0", 2), ("c1", 2)]
    assert held_out_examples(samples, 5) == ["a0", "b0", "c0", "a1", "c1"]
    assert held_out_examples(samples, 2) == ["a0", "b0"]
    assert held_out_examples(samples, 10) == ["a0", "b0", "c0", "a1", "c1", "a2"]


@pytest.mark.parametrize("pipeline", ["albumentations", "memory"])
def test_resume_is_bit_identical(tmp_path, monkeypatch, pipeline):
    data = make_folder(tmp_path / "data")
    extra = ("train.ema=true", f"data.pipeline={pipeline}")
    straight = train(tiny_config(data, tmp_path / "straight", *extra), show_progress=False)

    # "kill" the second run right after its first epoch's checkpoint: nothing after it survives
    train_killed_in_epoch(monkeypatch, tiny_config(data, tmp_path / "resumed", *extra), 2)

    # scramble the global RNGs: resume must restore them, not depend on luck
    torch.manual_seed(999)
    np.random.seed(999)
    resumed = train(tiny_config(data, tmp_path / "resumed", *extra),
                    resume=tmp_path / "resumed", show_progress=False)
    assert resumed.epochs_done == straight.epochs_done
    assert_same_weights(weights(tmp_path / "straight" / "last.pt"),
                        weights(tmp_path / "resumed" / "last.pt"))
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert_same_weights(a["ema"], b["ema"])
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_killed_run_resumes_to_identical_weights(tmp_path, sig):
    data = make_folder(tmp_path / "data", per_class=40)
    epochs = 4
    ref = start_train_script(cli_args(data, tmp_path / "ref", epochs))
    assert ref.wait(timeout=300) == 0, ref.communicate()[1]

    proc = start_train_script(cli_args(data, tmp_path / "run", epochs))
    wait_for(tmp_path / "run" / "last.pt", proc)
    time.sleep(0.3)  # somewhere in epoch 2 (or writing a checkpoint): any point must be safe
    if proc.poll() is None:
        proc.send_signal(sig)
    code = proc.wait(timeout=120)
    _, err = proc.communicate()
    if sig == signal.SIGINT and code != 0:
        assert code == 130, err
        assert "Traceback" not in err
        assert "--resume" in err
    load_checkpoint(tmp_path / "run" / "last.pt")  # always loadable

    resumed = start_train_script(["--resume", str(tmp_path / "run")])
    assert resumed.wait(timeout=300) == 0, resumed.communicate()[1]
    assert_same_weights(weights(tmp_path / "ref" / "last.pt"), weights(tmp_path / "run" / "last.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", ["albumentations", "memory"])
def test_torchrun_two_processes_match_one(tmp_path, pipeline):
    """2 gloo processes with half the batch each take the same steps as 1 process."""
    data = make_folder(tmp_path / "data", per_class=16)
    single = start_train_script([*cli_args(data, tmp_path / "single", 2), f"data.pipeline={pipeline}"])
    assert single.wait(timeout=300) == 0, single.communicate()[1]

    # one machine: gloo over loopback, whatever the host name resolves to
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           "GLOO_SOCKET_IFNAME": "lo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_port=0", str(ROOT / "train.py"),
           *cli_args(data, tmp_path / "ddp", 2), f"data.pipeline={pipeline}"]
    # rdzv on a free port; --master_port=0 is not accepted by every torch version
    cmd = [c for c in cmd if c != "--master_port=0"]
    cmd.insert(4, "--rdzv-endpoint=127.0.0.1:0")
    cmd.insert(4, "--rdzv-backend=c10d")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stdout.count("done: best val top-1") == 1  # only rank 0 talks
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # rank 0 alone writes files
    assert_same_weights(weights(tmp_path / "single" / "last.pt"),
                        weights(tmp_path / "ddp" / "last.pt"), exact=False)
    one = [json.loads(x) for x in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in lines]
    assert one[-1]["val_top1"] == pytest.approx(two[-1]["val_top1"])


KILL_DURING_WRITE = r"""
import sys, time
from pathlib import Path
import vit.io as io_lib

marker = Path(sys.argv[1])
real = io_lib.atomic_write
calls = {"last.pt": 0}

def hanging_write(path, write, **options):
    path = Path(path)
    if path.name == "last.pt":
        calls["last.pt"] += 1
        if calls["last.pt"] == 2:  # epoch 2's checkpoint: write part of it, then hang
            def partial(f):
                f.write(b"PK\x03\x04 half of a checkpoint")
                f.flush()
                marker.write_text("writing")
                time.sleep(600)
            return real(path, partial, **options)
    return real(path, write, **options)

io_lib.atomic_write = hanging_write
from vit.cli import main
sys.exit(main(["train", *sys.argv[2:]]))
"""


@pytest.mark.slow
def test_sigkill_during_checkpoint_write_keeps_last_pt(tmp_path):
    data = make_folder(tmp_path / "data")
    ref = start_train_script(cli_args(data, tmp_path / "ref", 3))
    assert ref.wait(timeout=300) == 0, ref.communicate()[1]

    marker = tmp_path / "writing"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_DURING_WRITE, str(marker), *cli_args(data, tmp_path / "run", 3)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(marker, proc)
    proc.send_signal(signal.SIGKILL)  # in the middle of writing epoch 2's last.pt
    proc.wait(timeout=60)
    proc.communicate()

    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")  # the complete file of epoch 1
    assert ckpt["epoch"] == 1
    resumed = start_train_script(["--resume", str(tmp_path / "run")])
    assert resumed.wait(timeout=300) == 0, resumed.communicate()[1]
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 3
    assert not list((tmp_path / "run").glob(".*.tmp"))  # the cut-short write was cleaned up
    assert_same_weights(weights(tmp_path / "ref" / "last.pt"), weights(tmp_path / "run" / "last.pt"))


def test_memory_pipeline_trains_as_well_as_the_worker_pipeline(tmp_path):
    data = make_folder(tmp_path / "data")
    summary = train(tiny_config(data, tmp_path / "run", "data.pipeline=memory", "train.epochs=3",
                                "data.randaug_n=2"), show_progress=False)
    records = [json.loads(x) for x in (summary.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["val_top1"] >= 75.0
    assert load_config(summary.run_dir / "config.yaml").data.pipeline == "memory"
    # the checkpoint predicts with the ordinary (albumentations) evaluation transform
    from vit.inference.classifier import Classifier

    clf = Classifier.from_checkpoint(summary.run_dir / "best.pt", device="cpu")
    val_files = json.loads((summary.run_dir / "split.json").read_text())["val_files"]
    labels = [Path(f).parent.name for f in val_files]
    predicted = [top[0][0] for top in clf.predict(val_files)]
    agree = np.mean([a == b for a, b in zip(labels, predicted, strict=True)]) * 100
    assert abs(agree - summary.best_top1) < 1e-6


def test_grouped_augmentation_trains_the_same_weights(tmp_path):
    """data.aug_batches only changes how many batches one augmentation call makes."""
    data = make_folder(tmp_path / "data")
    runs = [train(tiny_config(data, tmp_path / f"run{k}", "data.pipeline=memory",
                              f"data.aug_batches={k}"), show_progress=False) for k in (1, 3)]
    assert_same_weights(*(weights(r.run_dir / "last.pt") for r in runs))


def test_bf16_autocast_trains_on_cpu(tmp_path):
    """The mixed-precision path end to end where this machine allows it (CPU bf16 autocast)."""
    data = make_folder(tmp_path / "data")
    summary = train(tiny_config(data, tmp_path / "run", "train.precision=bf16", "train.epochs=3"),
                    show_progress=False)
    records = [json.loads(x) for x in (summary.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["train_loss"]) for r in records)
    assert records[-1]["val_top1"] >= 75.0
    assert load_checkpoint(summary.run_dir / "best.pt")["model"]["head.weight"].dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_gpu(tmp_path, precision):
    data = make_folder(tmp_path / "data")
    summary = train(tiny_config(data, tmp_path / "run", f"train.precision={precision}",
                                "train.device=cuda", "train.epochs=3"), show_progress=False)
    assert summary.best_top1 is not None and summary.best_top1 >= 75.0


# ---------------------------------------------------------------------------------------------
# time budget and throttled saving
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("elapsed, epoch_s, expected", [
    (40.0, 10.0, 2 + 24),  # 260 s left x 0.95 / 10 s per epoch -> 24 more
    (40.0, 0.0, 100),  # no measurable epoch time: capped at max_epochs
    (400.0, 10.0, 2),  # already over the budget: stop after the two done
])
def test_fit_epochs_to_budget(elapsed, epoch_s, expected):
    from vit.training.budget import fit_epochs_to_budget

    assert fit_epochs_to_budget(budget_s=300.0, elapsed_s=elapsed, epoch_s=epoch_s,
                                epochs_done=2, max_epochs=100) == expected


def test_recent_pace_is_the_slower_of_the_overall_and_the_recent_mean():
    from vit.training.budget import recent_pace

    assert recent_pace([60.0, 63.0]) == pytest.approx(3.0)  # epoch 1 (compile) left out
    steady = [60.0 + 2 * i for i in range(11)]
    assert recent_pace(steady) == pytest.approx(2.0)
    slowing = steady + [steady[-1] + 4 * i for i in range(1, 6)]
    assert recent_pace(slowing) == pytest.approx(4.0)  # the last 5 epochs took 4 s each
    assert recent_pace(slowing[:-5] + [slowing[-5] - 1.0]) > 1.9  # a fast blip changes little


def test_a_time_budget_sets_the_epochs_and_ends_the_schedule_there(tmp_path, monkeypatch):
    """After epoch 2 the epoch count is fitted to the budget (here forced to 4 of at most 50),
    written to config.yaml and the checkpoint, and the learning rate reaches min_lr at the end."""
    import vit.training.budget as budget

    monkeypatch.setattr(budget, "fit_epochs_to_budget", lambda **kw: 4)
    data = make_folder(tmp_path / "data")
    summary = train(tiny_config(data, tmp_path / "run", "train.epochs=50",
                                "train.time_budget_min=1", "train.min_lr=1e-5"),
                    show_progress=False)
    records = [json.loads(x) for x in (summary.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert records[-1]["lr"] < 1e-4 < 2e-3 < records[1]["lr"]  # 50 epochs would still be at ~3e-3
    assert "epochs: 4" in (summary.run_dir / "config.yaml").read_text()
    assert load_checkpoint(summary.run_dir / "last.pt")["config"]["train"]["epochs"] == 4


def test_throttled_saving_writes_the_last_epoch_and_the_best_weights(tmp_path):
    """save_every_s longer than the run: only the final epoch writes last.pt, best.pt holds the
    best epoch's weights (kept in memory until then), metrics.jsonl has every epoch."""
    data = make_folder(tmp_path / "data")
    summary = train(tiny_config(data, tmp_path / "run", "train.epochs=3",
                                "train.save_every_s=3600"), show_progress=False)
    records = [json.loads(x) for x in (summary.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3
    last, best = (load_checkpoint(summary.run_dir / n) for n in ("last.pt", "best.pt"))
    assert last["epoch"] == 3
    best_epoch = max(records, key=lambda r: (r["val_top1"], -r["epoch"]))["epoch"]
    assert best["epoch"] == best_epoch and best["best_top1"] == summary.best_top1
    if best_epoch == 3:
        assert_same_weights(best["model"], last["model"])


def test_cli_run_logged_to_a_file_says_how_far_each_epoch_is(tmp_path, monkeypatch, capsys):
    """With stderr not a terminal (a log file) the bar is off; progress lines take its place."""
    import vit.cli.train

    data = make_folder(tmp_path / "data")
    monkeypatch.setattr(vit.cli.train, "PROGRESS_LOG_EVERY_S", 0.0)
    assert main(["train", *cli_args(data, tmp_path / "run", 1)]) == 0
    lines = [line.split(" INFO ", 1)[1] for line in capsys.readouterr().err.splitlines()
             if " INFO epoch 1: batch " in line]
    # 27 training images in batches of 8 (the last part-batch dropped): a line after each of
    # the 3 batches but the last, which the epoch's own line follows
    assert [line.split(",")[0] for line in lines] == ["epoch 1: batch 1/3", "epoch 1: batch 2/3"]
    assert all("img/s, about " in line and line.endswith("left in this epoch") for line in lines)
