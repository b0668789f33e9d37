"""Early stopping (train.patience, train.monitor): when it stops, what best.pt holds, what the
log says, and a resume across the stop keeps the count."""

from __future__ import annotations

import json
import logging
import math

import pytest
from helpers.images import make_folder
from helpers.models import assert_same_weights, weights
from helpers.training import tiny_config, train_killed_in_epoch

import vit.training.trainer as trainer_mod
from vit.config import load_config
from vit.errors import ConfigError
from vit.models.checkpoint import load_checkpoint
from vit.training.early_stop import EarlyStopping
from vit.training.trainer import train

# val_top1 per epoch: best at epoch 2, then 3 epochs without improvement (patience 3 stops
# after epoch 5), then a better epoch 6 that a run which lost its count would reach
SCRIPT = [50.0, 60.0, 55.0, 58.0, 59.0, 70.0, 71.0, 72.0]


@pytest.fixture
def scripted(monkeypatch):
    """validate() returns the scripted top-1 of the epoch just trained (val_loss falls with it)."""
    current = {}
    real_train = trainer_mod.train_one_epoch

    def train_one_epoch(**kwargs):
        current["epoch"] = kwargs["epoch"]
        return real_train(**kwargs)

    def validate(**kwargs):
        top1 = SCRIPT[current["epoch"]]
        return {"val_loss": 2.0 - top1 / 100, "val_top1": top1, "val_top5": None}

    monkeypatch.setattr(trainer_mod, "train_one_epoch", train_one_epoch)
    monkeypatch.setattr(trainer_mod, "validate", validate)
    return real_train


def epochs_in(run_dir) -> list[int]:
    return [json.loads(x)["epoch"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_stopper_counts_epochs_without_improvement():
    s = EarlyStopping(monitor="val_loss", patience=2)
    assert [s.update(epoch=i + 1, metrics={"val_loss": v}) for i, v in
            enumerate([1.0, 0.8, 0.9, 0.7, 0.75, math.nan])] == [True, True, False, True, False,
                                                                   False]
    assert s.should_stop and s.best == 0.7 and s.best_epoch == 4
    assert "val_loss has not improved for 2 epochs" in s.reason()
    never = EarlyStopping(monitor="val_top1", patience=None)
    for i in range(20):
        never.update(epoch=i + 1, metrics={"val_top1": 10.0})
    assert not never.should_stop
    with pytest.raises(ConfigError, match="train.monitor"):
        EarlyStopping(monitor="top1")
    with pytest.raises(ConfigError, match="train.monitor"):
        load_config(None, ["train.monitor=accuracy"])


def test_patience_stops_the_run_and_best_pt_is_the_best_epoch(tmp_path, scripted, caplog):
    data = make_folder(tmp_path / "data", per_class=4)
    with caplog.at_level(logging.INFO, logger="vit.training.trainer"):
        summary = train(tiny_config(data, tmp_path / "run", "train.epochs=8", "train.patience=3"),
                        show_progress=False)
    assert epochs_in(summary.run_dir) == [1, 2, 3, 4, 5]
    assert summary.epochs_done == 5 and summary.best_top1 == 60.0
    assert summary.stopped_early is not None
    assert "val_top1 has not improved for 3 epochs" in caplog.text
    assert "stopped after epoch 5 of 8" in caplog.text
    best, last = (load_checkpoint(summary.run_dir / n) for n in ("best.pt", "last.pt"))
    assert best["epoch"] == 2 and last["epoch"] == 5
    assert last["extra"]["early_stop"] == {"monitor": "val_top1", "best": 60.0,
                                           "best_epoch": 2, "bad_epochs": 3}


def test_monitor_val_loss_picks_best_pt_by_the_loss(tmp_path, scripted, monkeypatch):
    """Falling loss with falling top-1: val_loss must choose the epoch, not top-1."""
    data = make_folder(tmp_path / "data", per_class=4)
    SCRIPT_LOSS = {0: 1.0, 1: 0.5, 2: 0.4, 3: 0.6}

    def validate(**kwargs):
        e = len(epochs_in(tmp_path / "run")) if (tmp_path / "run" / "metrics.jsonl").exists() else 0
        return {"val_loss": SCRIPT_LOSS[e], "val_top1": 90.0 - 10 * e, "val_top5": None}

    monkeypatch.setattr(trainer_mod, "validate", validate)
    summary = train(tiny_config(data, tmp_path / "run", "train.epochs=4", "train.patience=1",
                                "train.monitor=val_loss"), show_progress=False)
    assert epochs_in(summary.run_dir) == [1, 2, 3, 4]
    assert summary.stopped_early is not None
    assert load_checkpoint(summary.run_dir / "best.pt")["epoch"] == 3
    assert summary.best_top1 == 90.0  # the summary's top-1 is still the best top-1 seen


def test_resume_across_the_stop_keeps_the_patience_count(tmp_path, scripted, monkeypatch):
    """Killed in epoch 4 (one epoch without improvement counted), resumed: the run stops after
    epoch 5 as the uninterrupted one does, with the same weights, instead of counting anew
    and training on to epoch 8."""
    data = make_folder(tmp_path / "data", per_class=4)
    extra = ("train.epochs=8", "train.patience=3")
    straight = train(tiny_config(data, tmp_path / "straight", *extra), show_progress=False)

    train_killed_in_epoch(monkeypatch, tiny_config(data, tmp_path / "resumed", *extra), 4)
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["extra"]["early_stop"][
        "bad_epochs"] == 1
    resumed = train(tiny_config(data, tmp_path / "resumed", *extra),
                    resume=tmp_path / "resumed", show_progress=False)
    assert epochs_in(resumed.run_dir) == [1, 2, 3, 4, 5]
    assert resumed.epochs_done == straight.epochs_done == 5
    assert load_checkpoint(resumed.run_dir / "best.pt")["epoch"] == 2
    assert_same_weights(weights(tmp_path / "straight" / "last.pt"),
                        weights(tmp_path / "resumed" / "last.pt"))

    # resuming the stopped run trains no further epoch and says why
    again = train(tiny_config(data, tmp_path / "resumed", *extra), resume=tmp_path / "resumed",
                  show_progress=False)
    assert again.epochs_done == 5 and again.stopped_early is not None
    assert epochs_in(again.run_dir) == [1, 2, 3, 4, 5]
