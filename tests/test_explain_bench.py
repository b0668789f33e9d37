"""The evidence: token dropping, occlusion, rank correlation, the randomisation cascade, the
asked-object score, the two-squares data and `vit explain-bench` end to end on a tiny model."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.models import save_checkpoint, trained_like
from PIL import Image

from vit.bench.measures import SANITY_THRESHOLD, BenchSettings, asked_object_hits, explain_bench
from vit.bench.report import markdown_report
from vit.cli import main
from vit.data.squares import make_squares_dataset, make_two_squares_set
from vit.errors import VitError
from vit.explain.object_boxes import patch_mask
from vit.explain.occlusion import occlusion
from vit.explain.recommend import method_file
from vit.explain.sanity import randomised_cascade, spearman, spread
from vit.explain.token_drop import token_drop_auc, token_drop_curve, token_drop_curves


def images(batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# --- dropping patch tokens equals masking them out of every attention --------------------------


def masked_probability(model, x, keep, classes):
    """Reference: the full sequence, but no token attends to a dropped patch (a key mask)."""
    n = model.num_prefix_tokens + 16
    allowed = torch.zeros(x.shape[0], n, dtype=torch.bool)
    allowed[:, :model.num_prefix_tokens] = True
    for i, kept in enumerate(keep):
        allowed[i, model.num_prefix_tokens + kept] = True
    mask = allowed[:, None, None, :]  # (B, 1, 1, N): keys

    def attend(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    with torch.no_grad():
        tokens = model.embed(x)
        for block in model.blocks:
            tokens, _ = block(tokens, attend=attend)
        probs = model.forward_head(model.norm(tokens)).softmax(-1)
    return probs.gather(1, classes[:, None])[:, 0]


def test_token_deletion_and_insertion_curves_equal_key_masking():
    model, x = trained_like(reg_tokens=1), images(2)
    classes = torch.tensor([0, 2])
    saliency = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(1))
    order = saliency.flatten(1).argsort(dim=1, descending=True)
    for insert in (False, True):
        curve, fraction = token_drop_curve(model, x, saliency, classes, insert=insert, steps=4)
        assert fraction.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
        for point, count in enumerate([0, 4, 8, 12, 16]):
            keep = order[:, :count] if insert else order[:, count:]
            torch.testing.assert_close(curve[:, point], masked_probability(model, x, keep, classes))
    with torch.no_grad():
        full = model(x).softmax(-1).gather(1, classes[:, None])[:, 0]
    deletion, _ = token_drop_curve(model, x, saliency, classes, insert=False, steps=4)
    torch.testing.assert_close(deletion[:, 0], full)  # nothing removed yet: the model's output
    auc = token_drop_auc(model, x, saliency, classes, insert=False, steps=4)
    torch.testing.assert_close(auc, torch.trapezoid(deletion, dx=0.25, dim=1))
    # several curves at once share forward passes between sequences of equal length
    together = token_drop_curves(model, x, {"del": (saliency, False), "ins": (saliency, True),
                                            "lerf": (-saliency, False)}, classes, steps=4)
    for name, sal, insert in (("del", saliency, False), ("ins", saliency, True),
                              ("lerf", -saliency, False)):
        alone, _ = token_drop_curve(model, x, sal, classes, insert=insert, steps=4)
        torch.testing.assert_close(together[name][0], alone)


# --- occlusion, ranks, the cascade, the asked object --------------------------------------------


def test_occlusion_is_the_logit_drop_of_each_hidden_patch():
    model, x = trained_like(), images(2)
    classes = torch.tensor([1, 2])
    out = occlusion(model, x, classes, baseline="zero", batch_size=7)  # chunks of 3 patches
    with torch.no_grad():
        full = model(x).gather(1, classes[:, None])[:, 0]
        for p in range(16):
            hidden = x.clone()
            r, c = divmod(p, 4)
            hidden[:, :, 8 * r:8 * r + 8, 8 * c:8 * c + 8] = 0.0
            drop = full - model(hidden).gather(1, classes[:, None])[:, 0]
            torch.testing.assert_close(out[:, r, c], drop, atol=1e-5, rtol=1e-5)


def test_spearman_with_ties_matches_scipy_and_a_hand_example():
    # ranks of [1, 2, 2, 3] are [0, 1.5, 1.5, 3]; against [0, 1, 2, 3]: cov 4.5, norms sqrt(4.5 * 5)
    a, b = torch.tensor([[1.0, 2.0, 2.0, 3.0]]), torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    assert spearman(a, b).item() == pytest.approx(4.5 / (4.5 * 5) ** 0.5)
    assert spearman(b, -b).item() == pytest.approx(-1.0)
    assert spearman(torch.zeros(1, 4), b).item() == 0.0  # a constant map carries no ranking
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 5, (6, 30), generator=g).float(), torch.randn(6, 30, generator=g)
    expected = [stats.spearmanr(x[i], y[i]).statistic for i in range(6)]
    np.testing.assert_allclose(spearman(x, y).numpy(), expected, rtol=1e-5)


def test_the_cascade_randomises_the_head_then_one_more_block_from_the_top():
    model = trained_like(depth=3)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    stages = []
    for stage, randomised in randomised_cascade(model, seed=0):
        state = randomised.state_dict()
        changed = {k.split(".")[0] + ("." + k.split(".")[1] if k.startswith("blocks") else "")
                   for k in state if not torch.equal(state[k], original[k])}
        stages.append((stage, changed))
    assert stages == [(0, {"head", "norm"}), (1, {"head", "norm", "blocks.2"}),
                      (2, {"head", "norm", "blocks.2", "blocks.1"}),
                      (3, {"head", "norm", "blocks.2", "blocks.1", "blocks.0"})]
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())  # a copy
    again = [s for _, s in randomised_cascade(model, seed=0)][-1].state_dict()
    assert all(torch.equal(again[k], state[k]) for k in state)  # seeded


def test_asked_object_hits_share_ties():
    inside = torch.tensor([[True, False], [False, False]]).expand(3, 2, 2)
    maps = torch.tensor([[[0.9, 0.1], [0.2, 0.3]],   # top patch on the object
                         [[0.1, 0.9], [0.2, 0.3]],   # elsewhere
                         [[0.5, 0.5], [0.1, 0.1]]])  # tie, one of two on the object
    assert asked_object_hits(maps, inside).tolist() == [1.0, 0.0, 0.5]


def test_patch_mask_of_a_box_without_resizing():
    # 32 px, crop 1.0, patch 8: centres at 4, 12, 20, 28. x in [10, 21) holds 12 and 20.
    mask = patch_mask((10, 0, 21, 5), (32, 32), img_size=32, crop_pct=1.0, patch_size=8)
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[0, 1:3] = True
    assert torch.equal(mask, expected)


# --- the whole bench --------------------------------------------------------------------------


def test_bench_rows_sanity_verdicts_and_asked_objects():
    model, x = trained_like(depth=2), images(4)
    inside = torch.zeros(4, 4, dtype=torch.bool)
    inside[0, 0] = True
    objects = [[(0, inside), (1, ~inside)]] * 4
    result = explain_bench(model, x, settings=BenchSettings(
        methods=["rollout", "legrad", "random", "occlusion"], steps=4, batch_size=3, pixels=True),
                           objects=objects)
    rows = {r["method"]: r for r in result["rows"]}
    assert result["images"] == 4 and result["half_stage"] == 1 and list(rows) == [
        "rollout", "legrad", "random", "occlusion"]
    for row in rows.values():
        for key in ("token_deletion", "token_insertion", "pixel_deletion", "pixel_insertion"):
            assert 0.0 <= row[key] <= 1.0 and row[f"{key}_sem"] >= 0.0
        assert 0.0 <= row["asked_object"] <= 1.0
    # rollout never looks at the head: identical maps with a random head
    assert rows["rollout"]["random_0"] == pytest.approx(1.0)
    assert rows["rollout"]["sanity"] == ("pass" if rows["rollout"]["random_1"] < SANITY_THRESHOLD
                                         else "FAIL")
    assert "random_0" not in rows["random"] and "sanity" not in rows["random"]
    # the lead of each column's best contender, paired image by image
    deletion = result["paired"]["token_deletion"]
    best = deletion["best"]
    assert best in ("rollout", "legrad")
    per_image = result["per_image"]
    for other, (mean, sem) in deletion["ahead_of"].items():
        diff = torch.tensor(per_image[other]["token_deletion"]) - torch.tensor(
            per_image[best]["token_deletion"])  # lower deletion is better
        assert mean == pytest.approx(diff.mean().item(), abs=1e-6)
        assert sem == pytest.approx(diff.std().item() / 2.0, abs=1e-6)  # 4 images
    table = markdown_report(result)
    assert "| random (reference) |" in table and "asked object (%)" in table
    with pytest.raises(VitError, match="unknown methods"):
        explain_bench(model, x, settings=BenchSettings(methods=["lrp"]))


def test_report_without_the_randomisation_check_has_no_sanity_columns():
    model, x = trained_like(depth=2), images(2)
    table = markdown_report(explain_bench(model, x, settings=BenchSettings(
        methods=["rollout", "random"], steps=2, sanity=False)))
    header = table.splitlines()[0]
    assert header.startswith("| method | deletion, tokens") and "ρ" not in header
    assert "sanity" not in header and "Spearman" not in table
    assert all(line.count("|") == header.count("|") for line in table.splitlines()[:4])


def test_squares_data_and_the_cli_end_to_end(tmp_path, capsys):
    train = make_squares_dataset(tmp_path / "squares", num_per_class=2, val_per_class=2,
                                 colours=["red", "blue", "green"])
    assert sorted(p.name for p in (train / "val").iterdir()) == ["blue", "green", "red"]
    pairs = make_two_squares_set(tmp_path / "two", num_images=3, colours=["red", "blue", "green"])
    objects = json.loads((pairs / "objects.json").read_text())
    for name, found in objects.items():
        image = np.asarray(Image.open(pairs / name))
        assert image.shape == (32, 32, 3) and len({o["class"] for o in found}) == 2
        for o in found:  # the box holds the bright square
            x0, y0, x1, y1 = o["box"]
            assert image[y0:y1, x0:x1].max(axis=-1).mean() > 120 > image[:2, :2].max()
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "best.pt", trained_like(), ["red", "blue", "green"])
    out = tmp_path / "bench"
    assert main(["explain-bench", "--checkpoint", str(ckpt), "--data", str(pairs), "--methods",
                 "gradcam,random", "--steps", "4", "--output", str(out)]) == 0
    result = json.loads((out / "explain_bench.json").read_text())
    assert result["images"] == 3 and [r["method"] for r in result["rows"]] == ["gradcam", "random"]
    report = (out / "explain_bench.md").read_text()
    assert "asked object" in report
    # the report and the JSON end with the recommendation; two methods are too few to record one
    assert list(result)[-1] == "recommendation" and report.rstrip().splitlines()[-1].startswith(
        "Rule: ")
    assert "Not recorded: only a run of every saliency method" in report
    assert not method_file(ckpt).exists()
    printed = capsys.readouterr().out
    assert "| gradcam |" in printed and f"and {out / 'explain_bench.png'}" in printed
    with Image.open(out / "explain_bench.png") as figure:  # faithfulness and the cascade
        assert figure.format == "PNG" and figure.width > 2 * figure.height
    assert main(["explain-bench", "--checkpoint", str(ckpt), "--data", str(train),
                 "--methods", "lrp", "--output", str(out)]) == 2
    assert "unknown methods ['lrp']" in capsys.readouterr().err


# --- the batched bench: methods share token passes, the check runs on a spread sub-set -----------


def test_token_measures_of_several_methods_at_once_equal_one_method_at_a_time(monkeypatch):
    import vit.bench.measures as bench

    model, x = trained_like(reg_tokens=1), images(3)
    classes = torch.tensor([0, 2, 1])
    g = torch.Generator().manual_seed(2)
    maps = {m: torch.rand(3, 4, 4, generator=g) for m in ("a", "b", "c")}
    expected = {}
    for m, saliency in maps.items():  # the reference: one call of token_drop_curves per method
        curves = token_drop_curves(model, x, {"d": (saliency, False), "i": (saliency, True),
                                              "l": (-saliency, False)}, classes, steps=4)
        auc = {k: torch.trapezoid(c, f, dim=1) for k, (c, f) in curves.items()}
        expected[m] = {"token_deletion": auc["d"], "token_insertion": auc["i"],
                       "token_gap": auc["l"] - auc["d"]}
    bar = bench.progress_bar(6, enabled=False)
    for per_pass in (9, 6, 3):  # all three methods in one pass, two then one, one at a time
        monkeypatch.setattr(bench, "TOKEN_BATCH", per_pass)
        found = bench._token_measures(model, x, maps, classes, 4, bar)
        for m in maps:
            for key, value in expected[m].items():
                torch.testing.assert_close(found[m][key], value)


def test_the_randomisation_check_runs_on_spread_images_at_the_chosen_stages():
    model, x = trained_like(depth=4), images(5)
    summary = explain_bench(model, x, settings=BenchSettings(methods=["gradcam", "random"],
                                                             steps=2, sanity_images=2))
    assert summary["stages"] == [0, 2, 4] and summary["sanity_images"] == [0, 4]
    row = next(r for r in summary["rows"] if r["method"] == "gradcam")
    assert "random_1" not in row and len(summary["per_image"]["gradcam"]["random_2"]) == 2
    full = explain_bench(model, x, settings=BenchSettings(methods=["gradcam", "random"], steps=2,
                                                          sanity_images=2, full_cascade=True))
    assert full["stages"] == [0, 1, 2, 3, 4]
    for stage in (0, 2, 4):  # the same numbers, whether or not the stages between are measured
        assert full["per_image"]["gradcam"][f"random_{stage}"] == pytest.approx(
            summary["per_image"]["gradcam"][f"random_{stage}"])
    # the reference: the two images' maps by the trained and the randomised model, by hand
    from vit.explain.saliency import saliency

    chosen = x[[0, 4]]
    with torch.no_grad():
        classes = model(chosen).argmax(dim=1)
    trained = saliency(model, chosen, "gradcam", target=classes)
    for stage, randomised in randomised_cascade(model, seed=0):
        if stage == 2:
            rho = spearman(trained, saliency(randomised, chosen, "gradcam", target=classes))
            assert summary["per_image"]["gradcam"]["random_2"] == pytest.approx(rho.tolist())
    assert spread(10, 4) == [0, 3, 6, 9] and spread(3, 8) == [0, 1, 2] and spread(5, 1) == [0]


def test_progress_on_a_log_file_is_whole_lines_with_the_time_left(monkeypatch):
    import io

    import vit.bench.measures as bench

    log = io.StringIO()  # not a terminal
    monkeypatch.setattr(sys, "stderr", log)
    monkeypatch.setattr(bench, "LOG_EVERY_S", 0.0)
    model, x = trained_like(depth=2), images(4)
    bench.explain_bench(model, x, settings=bench.BenchSettings(
        methods=["attention", "random"], steps=2, batch_size=2, sanity_images=1),
                        show_progress=True)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) >= 3
    assert all(line.startswith("explain-bench:") for line in lines)
    # per batch: 2 maps + 2 token passes; the batch with the checked image: 3 stages x 1 method
    assert re.search(r" 11/11 \[\d\d:\d\d<00:00", lines[-1])
    assert re.search(r" \d+/11 \[\d\d:\d\d<\d\d:\d\d", lines[1])  # the time left, early on


def test_the_command_line_defaults_are_the_library_defaults():
    import inspect

    import vit.bench.measures as bench
    import vit.cli.explain_bench as cli
    from vit.bench.run import DEFAULT_IMAGES, run_explain_bench

    assert (cli.DEFAULT_IMAGES, cli.DEFAULT_STEPS, cli.DEFAULT_BATCH_SIZE,
            cli.DEFAULT_SANITY_IMAGES) == (DEFAULT_IMAGES, bench.DEFAULT_STEPS,
                                           bench.DEFAULT_BATCH_SIZE, bench.DEFAULT_SANITY_IMAGES)
    defaults = {k: p.default for k, p in inspect.signature(run_explain_bench).parameters.items()}
    settings = bench.BenchSettings()
    assert defaults["images"] == DEFAULT_IMAGES and (
        settings.steps, settings.batch_size, settings.sanity_images) == (
        bench.DEFAULT_STEPS, bench.DEFAULT_BATCH_SIZE, bench.DEFAULT_SANITY_IMAGES)


def test_a_model_the_explainers_cannot_read_is_one_line_before_any_work():
    timm = pytest.importorskip("timm")
    resnet = timm.create_model("resnet10t", num_classes=3)
    with pytest.raises(VitError, match="cannot explain a ResNet"):
        explain_bench(resnet, torch.randn(2, 3, 32, 32),
                      settings=BenchSettings(methods=("rollout",), sanity=False))
