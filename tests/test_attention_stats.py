"""Mean attention distance and entropy: by hand, on a model, over a folder, the command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers.figures import lines_by_label, plot_axes
from helpers.images import make_folder
from helpers.models import save_checkpoint, tiny_vit
from helpers.training import tiny_config

from vit.cli import main
from vit.errors import ConfigError
from vit.explain.attention_stats import (
    attention_entropy,
    attention_stats,
    folder_attention_stats,
    mean_attention_distance,
    model_attention_stats,
    patch_distances,
    spread_sample,
)
from vit.inference.classifier import Classifier
from vit.models.checkpoint import load_checkpoint


def test_patch_distances_are_pixels_between_patch_centres():
    d = patch_distances((2, 3), patch_size=10)
    assert d.shape == (6, 6)
    assert d[0, 1] == pytest.approx(10.0)          # (0,0) -> (0,1)
    assert d[0, 3] == pytest.approx(10.0)          # (0,0) -> (1,0)
    assert d[0, 5] == pytest.approx(math.hypot(10, 20))  # (0,0) -> (1,2)
    assert torch.equal(d, d.T) and (d.diagonal() == 0).all()


def test_distance_leaves_out_prefix_rows_and_renormalises_over_patch_keys():
    # 1 prefix token, a 1x2 grid of 16 px patches: tokens [CLS, A, B]
    attention = torch.tensor([[[[0.0, 0.0, 1.0],      # [CLS] row: ignored whatever it holds
                                [0.5, 0.25, 0.25],    # A: half on [CLS]; of the rest, half on B
                                [0.0, 0.0, 1.0]]]])   # B: all on itself
    distance = mean_attention_distance(attention, num_prefix_tokens=1, grid=(1, 2), patch_size=16)
    assert distance.shape == (1, 1)
    # A: 0.5 * 0 + 0.5 * 16 = 8 px; B: 0 px; mean over the two patch queries: 4 px
    assert distance.item() == pytest.approx(4.0)


def test_entropy_leaves_out_prefix_rows_and_counts_every_key():
    attention = torch.tensor([[[[1 / 3, 1 / 3, 1 / 3],  # [CLS] row: uniform, ignored
                                [0.5, 0.5, 0.0],        # A: ln 2
                                [0.0, 0.0, 1.0]]]])     # B: 0
    entropy = attention_entropy(attention, num_prefix_tokens=1)
    assert entropy.item() == pytest.approx(math.log(2) / 2)


def test_uniform_and_identity_attention():
    grid, patch, prefix = (3, 4), 8, 2
    n = prefix + grid[0] * grid[1]
    uniform = torch.full((2, 3, n, n), 1.0 / n)
    identity = torch.eye(n).expand(2, 3, n, n)
    pairwise = patch_distances(grid, patch).mean().item()  # every patch to every patch
    dist_u = mean_attention_distance(uniform, prefix, grid, patch)
    torch.testing.assert_close(dist_u, torch.full((2, 3), pairwise))
    torch.testing.assert_close(attention_entropy(uniform, prefix), torch.full((2, 3), math.log(n)))
    assert mean_attention_distance(identity, prefix, grid, patch).abs().max() < 1e-6
    assert attention_entropy(identity, prefix).abs().max() < 1e-6


def test_bad_shapes_raise_one_line_errors():
    with pytest.raises(ConfigError, match="do not fill a 2x3 grid"):
        mean_attention_distance(torch.full((1, 1, 5, 5), 0.2), 1, (2, 3), 4)
    with pytest.raises(ConfigError, match=r"\(B, heads, N, N\)"):
        attention_entropy(torch.zeros(3, 3), 1)
    with pytest.raises(ConfigError, match="at least 1"):
        spread_sample([1, 2], 0)


def test_spread_sample_visits_the_whole_list():
    assert spread_sample(list(range(10)), 20) == list(range(10))
    assert spread_sample(list(range(100)), 4) == [0, 33, 66, 99]


def test_model_stats_match_the_attention_the_model_returns():
    model = tiny_vit(head_std=2.0)
    model.train()  # the stats switch to eval mode for the call and back
    x = torch.randn(3, 3, 32, 32)
    distance, entropy = model_attention_stats(model, x)
    assert model.training
    model.eval()
    with torch.no_grad():
        _, attentions = model(x, return_attention=True)
    want_d, want_e = attention_stats(attentions, model.num_prefix_tokens, (4, 4), 8)
    assert distance.shape == (3, model.config.depth, model.config.num_heads)
    torch.testing.assert_close(distance, want_d)
    torch.testing.assert_close(entropy, want_e)
    # a random model attends nearly uniformly: entropy close to ln(17 tokens)
    assert entropy.max() <= math.log(17) + 1e-5


def test_folder_stats_are_means_over_readable_images(tmp_path, caplog):
    folder = make_folder(tmp_path / "data", per_class=3, size=32)
    (folder / "red" / "broken.png").write_bytes(b"not an image")
    model = tiny_vit(head_std=2.0)
    clf = Classifier(model, classes=["red", "green", "blue"], device="cpu",
                     preprocess={"img_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3,
                                 "crop_pct": 1.0})
    paths = sorted(folder.rglob("*.png"))
    stats = folder_attention_stats(clf, paths, batch_size=4)
    assert stats.num_images == 9 and "broken.png" in caplog.text
    readable = [p for p in paths if p.name != "broken.png"]
    distance, entropy = model_attention_stats(model, clf.transform(readable))
    np.testing.assert_allclose(stats.distance_px, distance.mean(0).numpy(), rtol=1e-5)
    np.testing.assert_allclose(stats.entropy_nats, entropy.mean(0).numpy(), rtol=1e-5)
    np.testing.assert_allclose(stats.distance_px_std, distance.double().std(0, correction=0),
                               rtol=1e-3, atol=1e-4)
    assert stats.max_entropy_nats == pytest.approx(math.log(17))
    assert stats.uniform_distance_px == pytest.approx(patch_distances((4, 4), 8).mean().item())


def test_command_writes_png_and_json_next_to_the_checkpoint(tmp_path, capsys, saved_figures):
    ckpt = save_checkpoint(tmp_path / "run" / "best.pt", tiny_vit(jitter=0.3, head_std=2.0),
                           ["red", "green", "blue"])  # off its init: heads that differ
    data = make_folder(tmp_path / "data", per_class=2, size=32)
    assert main(["attention-stats", "--checkpoint", str(ckpt), "--data", str(data)]) == 0
    out = tmp_path / "run" / "attention_stats"
    report = json.loads((out / "attention_stats.json").read_text())
    assert report["num_images"] == 6 and report["source"]["weights"] == "trained"
    assert np.asarray(report["distance_px"]).shape == (2, 2)  # layers x heads
    assert set(report["definitions"]) == {"distance_px", "entropy_nats"}
    assert (out / "attention_stats.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the figure shows the report: one dot per head and layer, a line through their mean
    distance_panel, entropy_panel = plot_axes(saved_figures[0])
    for axes, key in ((distance_panel, "distance_px"), (entropy_panel, "entropy_nats")):
        values = np.asarray(report[key])  # layers x heads
        assert np.ptp(values, axis=1).min() > 1e-3 * values.max()  # the heads differ
        per_head = np.stack([dots.get_offsets()[:, 1] for dots in axes.collections], axis=1)
        np.testing.assert_allclose(per_head, values, rtol=1e-4)
        [(depth, mean)] = lines_by_label(axes).values()
        assert depth == [1.0, 2.0]
        np.testing.assert_allclose(mean, values.mean(axis=1), rtol=1e-4)
    assert [t.get_text() for t in saved_figures[0].legends[0].get_texts()] == [
        "head 1", "head 2", "mean over heads"]
    printed = capsys.readouterr().out
    assert "6 images" in printed and str(out / "attention_stats.png") in printed

    assert main(["attention-stats", "--checkpoint", str(ckpt), "--data", str(data),
                 "--untrained", "--seed", "3", "--max-images", "4"]) == 0
    fresh = json.loads((tmp_path / "run" / "attention_stats_untrained" / "attention_stats.json")
                       .read_text())
    assert fresh["num_images"] == 4 and "seed 3" in fresh["source"]["weights"]
    assert fresh["distance_px"] != report["distance_px"]


def test_command_errors_are_one_line(tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "best.pt", tiny_vit(head_std=2.0), ["a", "b", "c"])
    missing = str(tmp_path / "nope")
    assert main(["attention-stats", "--checkpoint", str(ckpt), "--data", missing]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["attention-stats", "--checkpoint", str(ckpt), "--data", str(tmp_path),
                 "--seed", "1"]) == 2
    assert "--seed only applies with --untrained" in capsys.readouterr().err


@pytest.mark.slow
def test_untrained_is_the_model_that_vit_train_started_from(tmp_path):
    """A run that trains only the head keeps the initial backbone: --untrained must rebuild it."""
    from vit.figures.attention_files import _classifier
    from vit.training.trainer import train

    data = make_folder(tmp_path / "data", size=16)
    cfg = tiny_config(data, tmp_path / "run", "train.freeze=backbone", "train.epochs=1",
                      "train.seed=7")
    train(cfg, show_progress=False)
    ckpt = tmp_path / "run" / "best.pt"
    clf, weights = _classifier(ckpt, untrained=True, seed=None, device="cpu", batch_size=8)
    assert "seed 7" in weights
    saved = load_checkpoint(ckpt)["model"]
    rebuilt = clf.model.state_dict()
    assert saved.keys() == rebuilt.keys()
    assert not torch.equal(saved["head.weight"], rebuilt["head.weight"])  # it did train
    for name, tensor in saved.items():
        if not name.startswith("head."):
            assert torch.equal(tensor, rebuilt[name]), name
