"""vit.inference.export and `vit export`: safetensors + sidecar load back; ONNX runs in onnxruntime with
the same logits as PyTorch, any batch size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.images import colour_image
from helpers.models import save_checkpoint, tiny_vit

from vit.cli import main
from vit.errors import VitError
from vit.inference import export as export_lib
from vit.inference.classifier import Classifier
from vit.inference.export import export_checkpoint, onnx_sidecar_path

CLASSES = ["cat", "dog", "fox"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("export") / "best.pt", tiny_vit(head_std=2.0), CLASSES,
                           crop_pct=0.9)


def test_safetensors_export_loads_as_a_classifier(ckpt, tmp_path, capsys):
    target = tmp_path / "deploy" / "model.safetensors"
    assert main(["export", "--checkpoint", str(ckpt), "--output", str(target)]) == 0
    assert capsys.readouterr().out.split() == [str(target), str(tmp_path / "deploy/model.json")]
    sidecar = json.loads((tmp_path / "deploy" / "model.json").read_text())
    assert sidecar["classes"] == CLASSES and sidecar["preprocess"]["crop_pct"] == 0.9

    image = colour_image((30, 140, 220), size=(48, 40))
    original = Classifier.from_checkpoint(ckpt, device="cpu")
    exported = Classifier.from_checkpoint(target, device="cpu")
    assert exported.classes == CLASSES
    torch.testing.assert_close(exported.predict_proba(image), original.predict_proba(image),
                               atol=0, rtol=0)


def test_onnx_matches_pytorch_for_any_batch_size(ckpt, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path, sidecar = export_checkpoint(ckpt, tmp_path / "model.onnx")
    assert sidecar == tmp_path / "model.onnx.json"

    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["logits"]

    model = tiny_vit(head_std=2.0)  # the checkpoint's weights, built independently
    for batch in (1, 5):
        images = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        (logits,) = session.run(["logits"], {"images": images.numpy()})
        with torch.no_grad():
            expected = model(images).numpy()
        assert logits.shape == (batch, 3)
        np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)

    info = json.loads(sidecar.read_text())
    assert info["classes"] == CLASSES
    assert info["preprocess"] == {"img_size": 32, "mean": pytest.approx([0.485, 0.456, 0.406]),
                                  "std": pytest.approx([0.229, 0.224, 0.225]), "crop_pct": 0.9}
    assert info["input"]["name"] == "images" and info["output"]["name"] == "logits"
    assert info["max_abs_diff_vs_pytorch"] < 1e-4


def test_onnx_export_is_refused_when_onnxruntime_disagrees(ckpt, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(export_lib, "onnx_max_abs_diff", lambda *args: 0.5)
    with pytest.raises(VitError, match="disagrees with PyTorch"):
        export_checkpoint(ckpt, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_onnx_export_without_onnxruntime_skips_the_check(ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(export_lib, "_onnxruntime", lambda: None)
    path, sidecar = export_checkpoint(ckpt, tmp_path / "model.onnx")
    assert path.stat().st_size > 0
    assert json.loads(sidecar.read_text())["max_abs_diff_vs_pytorch"] is None


def test_onnx_sidecar_does_not_overwrite_the_safetensors_one(tmp_path):
    assert onnx_sidecar_path(tmp_path / "model.onnx") != (tmp_path / "model.safetensors") \
        .with_suffix(".json")


@pytest.mark.parametrize(("argv", "message"), [
    (["--output", "model.bin"], "cannot tell the export format"),
    (["--output", "model.bin", "--format", "safetensors"], "must end in .safetensors"),
    (["--output", "model.onnx", "--opset", "13"], "--opset must be at least 17"),
])
def test_bad_export_arguments_are_one_clear_line(ckpt, tmp_path, capsys, argv, message):
    argv = [a if not a.startswith("model.") else str(tmp_path / a) for a in argv]
    code = main(["export", "--checkpoint", str(ckpt), *argv])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.splitlines()[-1].startswith("error: ") and message in err
