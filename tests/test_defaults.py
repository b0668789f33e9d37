"""Defaults that fit the data: workers from the cores, a batch that fits the images, and
augmentation strength from what the run will see; each choice logged, explicit values kept."""

from __future__ import annotations

import logging
import warnings

import pytest
import yaml
from helpers.images import make_folder
from helpers.training import tiny_config

from vit.config import load_config
from vit.text import plural
from vit.training.defaults import (
    RECIPES,
    auto_batch_size,
    auto_workers,
    fit_to_data,
    fit_workers,
    merge_notes,
    pick_recipe,
)
from vit.training.trainer import train


@pytest.mark.parametrize("cores,workers", [(1, 0), (2, 1), (4, 3), (64, 8)])
def test_workers_leave_a_core_for_training(cores, workers):
    assert auto_workers(cores) == workers
    cfg, notes = fit_workers(load_config(None), cores=cores)
    assert cfg.data.workers == workers and "data.workers" in notes[0][1]


def test_explicit_workers_are_kept():
    cfg, notes = fit_workers(load_config(None, ["data.workers=3"]), cores=2)
    assert cfg.data.workers == 3 and notes == []
    cfg, _ = fit_to_data(cfg, num_train=20, img_size=32)
    assert cfg.data.workers == 3


def test_few_images_need_no_loader_processes():
    cfg, _ = fit_workers(load_config(None), cores=4)
    few, notes = fit_to_data(cfg, num_train=24, img_size=32, workers_chosen=True)
    assert few.data.workers == 0 and "data.workers=0" in notes[0][1]
    many, _ = fit_to_data(cfg, num_train=5000, img_size=32, workers_chosen=True)
    assert many.data.workers == 3


@pytest.mark.parametrize("num_train,world,batch", [
    (245, 1, 8), (2000, 1, 32), (4096, 1, 128), (50_000, 1, 128), (5, 1, 5), (300, 4, 8),
    (6, 4, 4)])
def test_auto_batch_size(num_train, world, batch):
    assert auto_batch_size(num_train, world) == batch
    assert batch % world == 0 and batch <= num_train


def test_a_batch_larger_than_the_data_is_lowered_with_a_warning():
    cfg, notes = fit_to_data(load_config(None, ["train.batch_size=256"]), num_train=245,
                             img_size=64)
    assert cfg.train.batch_size == 245
    warnings_ = [line for level, line in notes if level == logging.WARNING]
    assert warnings_ == ["--batch-size 256 is larger than the 245 training images; using 245"]


def test_few_images_seen_get_light_augmentation():
    """2,000 CIFAR-sized images for 3 epochs: today's ImageNet augmentation kept the loss from
    moving; the light recipe turns RandAugment off and keeps most of each small image."""
    cfg, notes = fit_to_data(load_config(None, ["train.epochs=3"]), num_train=2000, img_size=32)
    assert (cfg.data.randaug_n, cfg.data.scale, cfg.model.drop_path_rate) == (0, [0.6, 1.0], 0.0)
    assert any("recipe 'light'" in line and "6,000 images" in line for _, line in notes)


def test_long_runs_on_large_data_get_imagenet_strength():
    cfg, _ = fit_to_data(load_config(None, ["train.epochs=300"]), num_train=1_281_167,
                         img_size=224)
    assert (cfg.data.randaug_n, cfg.data.randaug_m, cfg.data.scale) == (2, 9, [0.08, 1.0])
    assert cfg.model.drop_path_rate == 0.1


def test_photos_crop_harder_than_small_images():
    small, _ = fit_to_data(load_config(None), num_train=1000, img_size=32)
    photo, _ = fit_to_data(load_config(None), num_train=1000, img_size=128)
    assert photo.data.scale[0] < small.data.scale[0]


def test_recipes_grow_with_the_images_seen():
    assert [pick_recipe(n) for n in (10_000, 1_000_000, 10_000_000)] == list(RECIPES)


def test_explicit_values_and_named_recipes_win():
    cfg, _ = fit_to_data(load_config(None, ["data.randaug_n=1", "data.recipe=strong",
                                            "model.drop_path_rate=0.2"]),
                         num_train=100, img_size=32)
    assert cfg.data.randaug_n == 1 and cfg.model.drop_path_rate == 0.2  # kept
    assert cfg.data.randaug_m == 9 and cfg.data.scale == [0.25, 1.0]  # the named recipe


def test_a_run_records_and_logs_its_choices(tmp_path, caplog):
    """The run folder's config.yaml holds what was chosen (so it reproduces the run), the log
    says why, and PyTorch does not warn about the number of workers."""
    data = make_folder(tmp_path / "data", per_class=4)
    cfg = tiny_config(data, tmp_path / "run", "train.epochs=1")
    cfg.train.batch_size, cfg.data.workers, cfg.data.randaug_n = 64, None, None
    with caplog.at_level(logging.INFO), warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # "This DataLoader will create N workers"
        train(cfg, show_progress=False)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["batch_size"] == 9  # 12 images, 3 held out
    assert saved["data"]["workers"] == 0 and saved["data"]["randaug_n"] == 0  # 9 images
    assert "--batch-size 64 is larger than the 9 training images; using 9" in caplog.text
    assert "recipe 'light'" in caplog.text
    # issue 25: each decision once (fit_workers chose 1 or more, then 9 images dropped them)
    assert [m for m in caplog.messages if m.startswith("data.workers=")] == [
        "data.workers=0: 9 training images decode in the training process faster than loader "
        "processes start each epoch"]
    assert "3 classes; 9 training images, 3 validation images" in caplog.messages
    assert "x 1 epoch = 9 images" in caplog.text and "1 epochs" not in caplog.text
    # the backbone, as `vit models` counts it, and the head apart: (32 + 1) x 3 classes
    assert "M parameters + a head of 99 for 3 classes" in caplog.text


@pytest.mark.parametrize("num_train,line", [
    (18, "train.batch_size=8: 2 steps per epoch over 18 training images"),
    (8, "train.batch_size=8: 1 step per epoch over 8 training images"),
    (2000, "train.batch_size=32: 62 steps per epoch over 2,000 training images"),
    (50_000, "train.batch_size=128: 390 steps per epoch over 50,000 training images")])
def test_the_batch_line_counts_the_steps_the_run_takes(num_train, line):
    """Issue 25: "about 32 steps per epoch over 18 training images" was 2 steps, not 32."""
    _, notes = fit_to_data(load_config(None), num_train=num_train, img_size=32)
    batch_lines = [text for _, text in notes if text.startswith("train.batch_size=")]
    assert len(batch_lines) == 1 and batch_lines[0].startswith(line + " ("), batch_lines


def test_a_later_decision_on_a_key_replaces_the_earlier_line():
    earlier = [(logging.INFO, "data.workers=1: one CPU core for the training loop")]
    later = [(logging.INFO, "data.workers=0: 9 training images ..."),
             (logging.INFO, "train.batch_size=8: 1 step per epoch")]
    assert merge_notes(earlier, later) == later
    other = [(logging.WARNING, "--batch-size 64 is larger than the 9 training images")]
    assert merge_notes(earlier, other) == earlier + other


@pytest.mark.parametrize("count,noun,words", [
    (1, "class", "1 class"), (2, "class", "2 classes"), (0, "epoch", "0 epochs"),
    (1, "epoch", "1 epoch"), (1600, "training image", "1,600 training images"),
    (1, "step", "1 step")])
def test_counts_read_as_english(count, noun, words):
    assert plural(count, noun) == words
