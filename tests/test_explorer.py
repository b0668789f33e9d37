"""The explorer page without a browser: its math, its storage, its HTML and `vit explain --html`."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.models import SHAPES as CLASSES
from helpers.models import peaky_classifier, peaky_model
from helpers.rollout_reference import query_rollout_from_attentions

from vit.cli import main
from vit.explain import METHODS, attention_rollout, deletion_auc, insertion_auc, saliency
from vit.explain.attention_stats import patch_distances
from vit.explain.explorer import PageOptions, explorer_page, image_records
from vit.explain.explorer_html import decode_rows, encode_rows
from vit.explain.rollout import rollout_rows
from vit.figures.attention_files import check_html_output


def page_data(html: str) -> dict:
    """The JSON the page holds (what its script reads)."""
    match = re.search(r'<script type="application/json" id="vit-data">(.*?)</script>', html, re.S)
    return json.loads(match.group(1))


# ---------------------------------------------------------------------------------------------
# Math
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fusion, discard", [("mean", 0.0), ("max", 0.3), ("min", 0.0)])
def test_rollout_rows_are_the_dense_product_and_row_0_the_rollout_map(fusion, discard):
    model = peaky_model()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        _, attentions = model(x, return_attention=True)
    full = rollout_rows(model, x, head_fusion=fusion, discard_ratio=discard)
    assert full.shape == (2, 39, 39)
    torch.testing.assert_close(full.sum(-1), torch.ones(2, 39))  # rows stay distributions
    dense = query_rollout_from_attentions(attentions, head_fusion=fusion, discard_ratio=discard)
    torch.testing.assert_close(full, dense, rtol=1e-4, atol=1e-6)
    want = attention_rollout(model, x, head_fusion=fusion, discard_ratio=discard)
    torch.testing.assert_close(full[:, 0, 3:].reshape(2, 6, 6), want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fusion, discard", [("mean", 0.0), ("max", 0.3)])
def test_rollout_rows_are_the_package_rollout_from_each_query(fusion, discard):
    """Row q of the page's rollout matrices is saliency(method="rollout", query=q): patches as
    (row, col), [CLS] and a register as token indices."""
    model = peaky_model()
    x = torch.randn(2, 3, 48, 48)
    full = rollout_rows(model, x, head_fusion=fusion, discard_ratio=discard)
    for query, token in (((2, 5), 3 + 2 * 6 + 5), ((0, 0), 3), (0, 0), (2, 2)):
        want = saliency(model, x, "rollout", query=query, head_fusion=fusion,
                        discard_ratio=discard)
        torch.testing.assert_close(full[:, token, 3:].reshape(2, 6, 6), want, rtol=1e-4,
                                   atol=1e-6)


def test_the_dense_query_rollout_reference_by_hand():
    # one layer, one head, 2 tokens: M = rownorm(0.5 A + 0.5 I)
    a = torch.tensor([[[[0.2, 0.8], [0.6, 0.4]]]])
    want = torch.tensor([[[0.6, 0.4], [0.3, 0.7]]])
    torch.testing.assert_close(query_rollout_from_attentions([a]), want)
    # two layers: M2 @ M1 (the last layer first, as rollout_from_attentions)
    b = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    m_b = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    torch.testing.assert_close(query_rollout_from_attentions([a, b])[0], m_b @ want[0])


def test_records_hold_every_saliency_method_and_its_faithfulness():
    """The page's maps are vit.explain.saliency's, every method of it, for the predicted class,
    and the AUCs those of vit.explain's deletion/insertion functions on those maps."""
    clf = peaky_classifier()
    x = torch.randn(3, 3, 48, 48)
    views = [np.zeros((48, 48, 3), np.uint8)] * 3
    records = image_records(clf.model, x, views, ["a", "b", "c"], clf.classes, auc_steps=6)
    with torch.no_grad():
        predicted = clf.model(x).argmax(-1)
    assert predicted.unique().numel() > 1  # a wrong target would show
    assert list(records[0]["maps"]) == list(METHODS) == list(records[0]["auc"])
    for method in METHODS:
        want = saliency(clf.model, x, method, target=predicted)
        got = torch.tensor([r["maps"][method] for r in records])
        torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-7)
        deletion = deletion_auc(clf.model, x, want, target=predicted, steps=6)
        insertion = insertion_auc(clf.model, x, want, target=predicted, steps=6)
        for i, r in enumerate(records):
            assert r["auc"][method]["deletion"] == pytest.approx(deletion[i].item(), abs=1e-6)
            assert r["auc"][method]["insertion"] == pytest.approx(insertion[i].item(), abs=1e-6)
    with torch.no_grad():
        probs = clf.model(x).softmax(-1)
    assert records[1]["top"][0][0] == CLASSES[int(probs[1].argmax())]
    assert records[1]["top"][0][1] == pytest.approx(float(probs[1].max()), rel=1e-5)
    assert len(records[0]["top"]) == 3
    assert np.asarray(records[0]["distance"]).shape == (3, 3)  # layers x heads


# ---------------------------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 6, 4])
def test_rows_round_trip_within_half_a_level_of_the_patch_maximum(bits):
    torch.manual_seed(0)
    rows = torch.rand(2, 3, 11, 11) ** 4
    rows[..., 0] *= 50  # [CLS] takes most of the weight: the patch part keeps its precision
    rows = rows / rows.sum(-1, keepdim=True)
    encoded = encode_rows(rows, num_prefix_tokens=2, bits=bits)
    values, prefix = decode_rows(encoded)
    np.testing.assert_array_equal(prefix, rows[..., :2].numpy())  # exact (float32)
    patches = rows[..., 2:].numpy()
    error = np.abs(values - patches) / patches.max(-1, keepdims=True)
    assert error.max() <= 0.5 / (2**bits - 1) + 1e-6
    assert error.max() > 0.1 / (2**bits - 1)  # really quantised, not stored exactly


def test_html_output_errors_are_one_line(tmp_path):
    from vit.errors import VitError

    with pytest.raises(VitError, match="the folder .*nope does not exist"):
        check_html_output(tmp_path / "nope" / "page.html")
    with pytest.raises(VitError, match="is a folder; name the page file"):
        check_html_output(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(VitError, match="is a file, not a folder"):
        check_html_output(tmp_path / "file" / "page.html")
    assert check_html_output(tmp_path / "page.html") == tmp_path / "page.html"


# ---------------------------------------------------------------------------------------------
# The HTML
# ---------------------------------------------------------------------------------------------


def test_page_is_self_contained_and_its_policy_admits_only_its_own_script_and_style():
    images = [np.full((48, 48, 3), c, np.uint8) for c in (30, 120, 220)]
    html = explorer_page(peaky_classifier(), images, options=PageOptions(auc_steps=0))
    # nothing is fetched: no URL other than data: in src/href, no url(), no @import
    assert not re.search(r"""(src|href)\s*=\s*["']?(?!data:)[a-z]+:""", html, re.I)
    assert not re.search(r"https?://", html.split('id="vit-data"')[0])
    assert "url(" not in html and "@import" not in html
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    assert "default-src 'none'" in policy
    for tag, directive in (("style", "style-src"), ("script", "script-src")):
        body = re.search(rf"<{tag}>(.*?)</{tag}>", html, re.S).group(1)
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"{directive} 'sha256-{digest}'" in policy
    assert "unsafe-inline" not in policy
    data = page_data(html)
    assert [r["name"] for r in data["images"]] == ["image 1", "image 2", "image 3"]
    uniform = pytest.approx(patch_distances((6, 6), 8).mean().item(), abs=1e-4)
    assert data["model"] == {"depth": 3, "heads": 3, "grid": [6, 6], "patch": 8, "img_size": 48,
                             "prefix": 3, "registers": 2, "tokens": 39, "uniform_distance": uniform,
                             "prefix_names": ["[CLS]", "register 1", "register 2"]}
    assert data["settings"]["attention_bits"] == 6
    blob_ids = re.findall(r'<script type="application/octet-stream" id="blob-(\d+)">', html)
    assert len(blob_ids) == 3 * 2 * 3  # images x (attention, rollout) x (codes, peak, prefix)
    assert len(data["colormap"]) == 256 * 3


def test_names_that_look_like_html_cannot_leave_the_data_script():
    hostile = '</script><script>alert(1)</script><img src=x onerror=alert(2)>&amp;'
    classes = ["<script>", "a</script>b", "ok", "x&y", "é\u2028"]
    html = explorer_page(peaky_classifier(classes), [np.zeros((48, 48, 3), np.uint8)], [hostile],
                         options=PageOptions(auc_steps=0, topk=5))
    assert "<img src=x" not in html and "<script>alert" not in html
    assert html.count("<script") == html.count("</script>")  # every script closes where it should
    data = page_data(html)
    assert data["images"][0]["name"] == hostile  # the JSON gives the names back unchanged
    assert {label for label, _ in data["images"][0]["top"]} == set(classes)


# ---------------------------------------------------------------------------------------------
# `vit explain --html`
# ---------------------------------------------------------------------------------------------


def _checkpoint_and_images(tmp_path: Path, shapes_dataset: Path) -> tuple[Path, list[str]]:
    from helpers.models import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "best.pt", peaky_model(), CLASSES)
    images = [str(p) for p in sorted(shapes_dataset.rglob("00000.png"))]
    return ckpt, images


def test_explain_html_writes_one_page_and_says_where(tmp_path, shapes_dataset, capsys):
    ckpt, images = _checkpoint_and_images(tmp_path, shapes_dataset)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    page = tmp_path / "page.html"
    code = main(["explain", "--checkpoint", str(ckpt), *images, str(broken), "--html", str(page),
                 "--auc-steps", "4", "--topk", "2"])
    assert code == 0
    out = capsys.readouterr().out
    assert f"explorer page: {page}" in out and "5 images" in out and "1 unreadable" in out
    data = page_data(page.read_text())
    assert [r["name"] for r in data["images"]] == images
    assert len(data["images"][0]["top"]) == 2 and data["settings"]["auc_steps"] == 4
    assert not list(tmp_path.glob("*.tmp"))


def test_explain_writes_pngs_and_the_page_together(tmp_path, shapes_dataset, capsys):
    ckpt, images = _checkpoint_and_images(tmp_path, shapes_dataset)
    code = main(["explain", "--checkpoint", str(ckpt), *images[:2], "--output",
                 str(tmp_path / "pngs"), "--html", str(tmp_path / "page.html"), "--auc-steps", "0"])
    assert code == 0
    assert (tmp_path / "pngs" / "grid.png").exists() and (tmp_path / "page.html").exists()
    assert page_data((tmp_path / "page.html").read_text())["images"][0]["auc"] == {}  # steps 0


def test_explain_html_user_errors(tmp_path, shapes_dataset, capsys):
    ckpt, images = _checkpoint_and_images(tmp_path, shapes_dataset)
    missing = tmp_path / "no_such_folder" / "page.html"
    assert main(["explain", "--checkpoint", str(ckpt), images[0], "--html", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"the folder {missing.parent} does not exist" in err
    pngs = tmp_path / "pngs"  # with --output too: the error comes before any work
    assert main(["explain", "--checkpoint", str(ckpt), images[0], "--output", str(pngs),
                 "--html", str(missing)]) == 2
    assert not pngs.exists() and "does not exist" in capsys.readouterr().err
    assert main(["explain", "--checkpoint", str(ckpt), images[0]]) == 2
    err = capsys.readouterr().err
    assert "--output DIR" in err and "--html FILE" in err
    assert main(["explain", "--checkpoint", str(ckpt), images[0], "--html",
                 str(tmp_path / "p.html"), "--attention-bits", "9"]) == 2
    assert "--attention-bits must be in [1, 8]" in capsys.readouterr().err
