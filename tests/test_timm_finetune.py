"""Fine-tuning timm's ViT families as they are (`--model timm:NAME [--pretrained FILE]`): tiny
models (2 blocks, width 32, 2 heads, 28-32 px) with random weights, on the CPU.

What is checked against what:
  - a timm-format state_dict loads exactly as timm's own pretrained loading of the same file
    (``timm.create_model(..., pretrained=True, pretrained_cfg_overlay={"file": ...})``),
    position embeddings and relative-position tables resampled by timm, the head new;
  - a run writes a checkpoint that rebuilds the same model for predict, evaluate, export (ONNX
    against PyTorch), push (timm loads the folder and gives the same logits);
  - a killed and resumed run ends with bit-identical weights;
  - freezing and layer decay follow timm's group matcher and get_classifier.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.images import make_folder
from helpers.models import assert_same_weights, weights
from helpers.training import train_killed_in_epoch

from vit.cli import main
from vit.config import load_config
from vit.errors import CheckpointError, ConfigError, VitError
from vit.inference.classifier import Classifier
from vit.models.architecture import describe_model, model_from_spec
from vit.models.checkpoint import load_checkpoint, model_from_checkpoint
from vit.models.timm_models import create_timm_model
from vit.training.optim import freeze_parameters, param_groups
from vit.training.trainer import train

timm = pytest.importorskip("timm")

TINY = {"depth": 2, "embed_dim": 32, "num_heads": 2}
# one name per family and form: (timm name, extra arguments)
FAMILIES = {
    "vit": ("vit_tiny_patch16_224", {}),
    "deit3": ("deit3_small_patch16_224", {}),
    "clip": ("vit_base_patch16_clip_224", {}),
    "siglip-map": ("vit_base_patch16_siglip_224", {}),
    "gap": ("vit_base_patch16_gap_224", {}),
    "registers": ("vit_tiny_patch16_224", {"reg_tokens": 2}),
    "dinov2-registers-no-embed-class": ("vit_small_patch14_reg4_dinov2", {}),
    "deit-distilled": ("deit_tiny_distilled_patch16_224", {}),
    "eva02": ("eva02_tiny_patch14_224", {}),
    "dinov3": ("vit_small_patch16_dinov3", {}),
    "rope": ("vit_base_patch16_rope_224", {}),
    "beit": ("beit_base_patch16_224", {}),
    "relpos": ("vit_relpos_small_patch16_224", {}),
}


def patch(name: str) -> int:
    return 14 if "patch14" in name else 16


def save_timm_file(path: Path, name: str, args: dict, img_size: int) -> Path:
    """What a user brings: ``torch.save(timm.create_model(NAME, pretrained=True).state_dict())``,
    here from random weights (timm's default 1000-class head, or none for DINOv2), every one
    moved off timm's initialisation so that a tensor left unloaded shows."""
    torch.manual_seed(123)
    model = timm.create_model(name, img_size=img_size, **TINY, **args)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.save(model.state_dict(), path)
    return path


def config(data: Path, out: Path, name: str, *extra: str):
    return load_config(None, [
        f"data.root={data}", f"train.output={out}", "train.device=cpu", "data.workers=0",
        "train.batch_size=8", "train.epochs=2", "train.lr=3e-3", "train.warmup_epochs=0.5",
        "data.val_fraction=0.25", "train.explain_samples=0", f"model.name=timm:{name}",
        "model.depth=2", "model.embed_dim=32", "model.num_heads=2",
        f"model.img_size={2 * patch(name)}", "model.drop_path_rate=0.0", *extra])


def save_checkpoint(path: Path, model: torch.nn.Module) -> Path:
    from vit.io import atomic_save
    from vit.models.checkpoint import make_checkpoint

    preprocess = {"img_size": describe_model(model).img_size, "mean": [0.5] * 3,
                  "std": [0.5] * 3, "crop_pct": 1.0}
    atomic_save(make_checkpoint(model=model, classes=["a", "b", "c"], preprocess=preprocess,
                                config={}, epoch=1, step=1, best_top1=None, metrics={}), path)
    return path


# --- weights: loaded as timm loads them ---------------------------------------------------------


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_timm_file_loads_as_timm_itself_loads_it(family, tmp_path):
    name, args = FAMILIES[family]
    size = 2 * patch(name)
    path = save_timm_file(tmp_path / "w.pth", name, args, img_size=2 * size)  # a 4x4 grid

    from vit.io import read_weights

    model = create_timm_model(f"timm:{name}", num_classes=3, img_size=size, args={**TINY, **args},
                              state_dict=read_weights(path).state_dict, source=str(path))
    reference = timm.create_model(name, pretrained=True, num_classes=3, img_size=size, **TINY,
                                  **args, pretrained_cfg_overlay={"file": str(path)})
    heads = {f"{h}.{p}" for h in ("head", "head_dist") for p in ("weight", "bias")}
    ours, theirs = model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours.keys() - heads:
        assert torch.equal(ours[key], theirs[key]), key
    assert model.get_classifier() is not None and model.num_classes == 3
    info = describe_model(model)
    assert (info.img_size, info.patch_size, info.depth, info.embed_dim) == (size, patch(name), 2,
                                                                             32)
    logits = model.eval()(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()


def test_the_distilled_heads_are_both_new_and_averaged(tmp_path):
    path = save_timm_file(tmp_path / "w.pth", "deit_tiny_distilled_patch16_224", {}, 32)
    model = create_timm_model("deit_tiny_distilled_patch16_224", num_classes=3, img_size=32,
                              args=TINY, state_dict=torch.load(path, weights_only=True))
    assert model.head.out_features == model.head_dist.out_features == 3
    torch.nn.init.normal_(model.head_dist.weight)
    x = torch.randn(2, 3, 32, 32)
    tokens = model.forward_features(x)
    expected = (model.head(tokens[:, 0]) + model.head_dist(tokens[:, 1])) / 2
    for mode in (model.train, model.eval):  # no teacher: the mean in training and prediction
        mode()
        torch.testing.assert_close(model.forward_head(tokens), expected)


def test_a_head_with_the_classes_count_is_kept_and_another_dropped(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32, **TINY)
    state = source.state_dict()
    kept = create_timm_model("vit_tiny_patch16_224", num_classes=3, img_size=32, args=TINY,
                             state_dict=state)
    assert torch.equal(kept.head.weight, state["head.weight"])
    new = create_timm_model("vit_tiny_patch16_224", num_classes=3, img_size=32, args=TINY,
                            state_dict=state, keep_head=False)
    assert not torch.equal(new.head.weight, state["head.weight"])


# --- mistakes, one line each ------------------------------------------------------------------


def test_what_cannot_be_built_or_loaded_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="unknown timm model 'vit_no_such'.*Eva.*list_models"):
        create_timm_model("timm:vit_no_such", num_classes=3)
    with pytest.raises(ConfigError, match="is a SwinTransformer, which is not fine-tuned here"):
        create_timm_model("timm:swin_tiny_patch4_window7_224", num_classes=3)
    with pytest.raises(ConfigError, match="reg_tokens"):
        create_timm_model("beit_base_patch16_224", num_classes=3, args={**TINY, "reg_tokens": 2})
    eva = save_timm_file(tmp_path / "eva.pth", "eva02_tiny_patch14_224", {}, 28)
    with pytest.raises(CheckpointError, match="not a timm state_dict of timm:vit_tiny") as info:
        create_timm_model("vit_tiny_patch16_224", num_classes=3, img_size=32, args=TINY,
                          state_dict=torch.load(eva, weights_only=True), source="eva.pth")
    assert "\n" not in str(info.value)
    wide = save_timm_file(tmp_path / "wide.pth", "vit_tiny_patch16_224", {}, 32)
    with pytest.raises(CheckpointError, match="size mismatch"):
        create_timm_model("vit_tiny_patch16_224", num_classes=3, img_size=32,
                          args={**TINY, "embed_dim": 64},
                          state_dict=torch.load(wide, weights_only=True))


def test_timm_weights_by_name_offline_fail_fast_in_one_line(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    name = "eva02_tiny_patch14_224.mim_in22k"
    data = make_folder(tmp_path / "data", per_class=2)
    code = main(["train", "--data", str(data), "--model", f"timm:{name}", "--pretrained",
                 f"timm:{name}", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"huggingface.co/timm/{name}" in err and "pass its path" in err


def test_a_preset_with_pretrained_weights_is_still_refused(capsys):
    assert main(["train", "--data", "x", "--model", "vit_tiny_patch4_32",
                 "--pretrained", "w.pth"]) == 2
    assert "--model timm:NAME --pretrained FILE" in capsys.readouterr().err


# --- freezing and layer decay by timm's group matcher -------------------------------------------


def test_freezing_follows_get_classifier_and_the_group_matcher():
    distilled = create_timm_model("deit_tiny_distilled_patch16_224", num_classes=3, args=TINY)
    assert sorted(freeze_parameters(distilled, "backbone")) == [
        "head.bias", "head.weight", "head_dist.bias", "head_dist.weight"]
    siglip = create_timm_model("vit_base_patch16_siglip_224", num_classes=3, args=TINY)
    trainable = freeze_parameters(siglip, "all-but-last-1")
    assert {n.split(".")[0] for n in trainable} == {"blocks", "norm", "attn_pool", "head"}
    assert all(n.startswith("blocks.1.") for n in trainable if n.startswith("blocks"))
    with pytest.raises(ConfigError, match="N from 1 to the model depth 2"):
        freeze_parameters(siglip, "all-but-last-3")


def test_layer_decay_scales_by_timm_layers():
    eva = create_timm_model("eva02_tiny_patch14_224", num_classes=3, args=TINY)
    groups = param_groups(eva, weight_decay=0.05, layer_decay=0.5)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    named = dict(eva.named_parameters())
    # stem, block 0, block 1 (+ final norm), head: 0.5^3, 0.5^2, 0.5, 1
    assert scale[id(named["patch_embed.proj.weight"])] == pytest.approx(0.125)
    assert scale[id(named["blocks.0.attn.qkv.weight"])] == pytest.approx(0.25)
    assert scale[id(named["blocks.1.attn.qkv.weight"])] == pytest.approx(0.5)
    assert scale[id(named["head.weight"])] == pytest.approx(1.0)


# --- a run, and what its checkpoint does --------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("colours"), size=32)


@pytest.mark.parametrize("family", ["dinov2-registers-no-embed-class", "deit-distilled", "eva02",
                                    "beit", "relpos"])
def test_a_run_fine_tunes_from_a_file_and_its_checkpoint_predicts(family, data, tmp_path):
    name, args = FAMILIES[family]
    path = save_timm_file(tmp_path / "w.pth", name, args, img_size=4 * patch(name))
    extra = [f"model.{k}={v}" for k, v in args.items()]
    summary = train(config(data, tmp_path / "run", name, f"train.pretrained={path}",
                           "train.epochs=1", *extra), show_progress=False)
    best = load_checkpoint(summary.run_dir / "best.pt")
    assert best["model_config"]["timm_name"] == name
    assert best["model_config"]["timm_args"]["img_size"] == 2 * patch(name)
    model = model_from_checkpoint(best)
    source = torch.load(path, weights_only=True)["blocks.0.attn.qkv.weight"]
    # the blocks started from the file (4 steps of lr <= 3e-3 moved them a little), not from
    # a fresh initialisation
    trained = model.blocks[0].attn.qkv.weight.detach()
    fresh = model_from_spec(best["model_config"]).blocks[0].attn.qkv.weight.detach()
    assert (trained - source).abs().max() < 0.02 < (fresh - source).abs().mean()
    clf = Classifier.from_checkpoint(summary.run_dir / "best.pt", device="cpu")
    image = next((data / "red").iterdir())
    with torch.no_grad():
        expected = model(clf.transform([image])).softmax(-1)[0]
    (top,) = clf.predict([image], topk=3)
    assert top[0][0] == best["classes"][int(expected.argmax())]
    assert top[0][1] == pytest.approx(float(expected.max()), abs=1e-5)


def test_the_cli_fine_tunes_a_timm_model_then_evaluates_and_pushes_it(data, tmp_path, capsys):
    path = save_timm_file(tmp_path / "dinov2.pth", "vit_small_patch14_reg4_dinov2", {}, 56)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--model", "timm:vit_small_patch14_reg4_dinov2",
                 "--pretrained", str(path), "--img-size", "28", "--epochs", "1", "--device",
                 "cpu", "--workers", "0", "--output", str(run), "model.depth=2",
                 "model.embed_dim=32", "model.num_heads=2", "train.explain_samples=2",
                 "--quiet"]) == 0
    # the end of the run explains held-out images through the explain adapters
    assert len(list((run / "overlays").glob("*_attnlrp.png"))) == 2
    assert main(["evaluate", "--checkpoint", str(run / "best.pt"), "--data", str(data),
                 "--device", "cpu", "--output", str(tmp_path / "eval"), "--quiet"]) == 0
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["num_images"] == 36
    assert main(["push", str(run), "--to-folder", str(tmp_path / "repo")]) == 0
    from helpers.models import timm_from_folder

    in_timm = timm_from_folder(tmp_path / "repo")
    ours = model_from_checkpoint(load_checkpoint(run / "best.pt"))
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(in_timm(x), ours(x), rtol=0, atol=1e-6)
    capsys.readouterr()


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224",
                                  "eva02_tiny_patch14_224"])
def test_onnx_export_agrees_with_pytorch(name, tmp_path):
    pytest.importorskip("onnxruntime")
    from vit.inference.export import export_checkpoint, onnx_max_abs_diff

    size = 2 * patch(name)
    model = create_timm_model(name, num_classes=3, img_size=size, args=TINY).eval()
    ckpt = save_checkpoint(tmp_path / "best.pt", model)
    onnx_path, sidecar = export_checkpoint(ckpt, tmp_path / "model.onnx")
    images = torch.randn(3, 3, size, size)
    diff = onnx_max_abs_diff(onnx_path.read_bytes(), model, images)
    assert diff < 1e-4
    assert json.loads(sidecar.read_text())["model_config"]["timm_name"] == name


def test_resume_of_a_timm_run_is_bit_identical(data, tmp_path, monkeypatch):
    name = "eva02_tiny_patch14_224"
    extra = ("train.ema=true", "train.layer_decay=0.75")
    straight = train(config(data, tmp_path / "straight", name, *extra), show_progress=False)
    train_killed_in_epoch(monkeypatch, config(data, tmp_path / "resumed", name, *extra), 2)
    torch.manual_seed(999)
    resumed = train(config(data, tmp_path / "resumed", name, *extra),
                    resume=tmp_path / "resumed", show_progress=False)
    assert resumed.epochs_done == straight.epochs_done == 2
    assert_same_weights(weights(tmp_path / "straight" / "last.pt"),
                        weights(tmp_path / "resumed" / "last.pt"))
    assert_same_weights(load_checkpoint(tmp_path / "straight" / "last.pt")["ema"],
                        load_checkpoint(tmp_path / "resumed" / "last.pt")["ema"])


def test_timm_weights_bring_their_normalisation(data, tmp_path, caplog):
    name = "vit_base_patch16_siglip_224"
    path = save_timm_file(tmp_path / "w.pth", name, {}, 32)
    with caplog.at_level("INFO"):
        summary = train(config(data, tmp_path / "run", name, f"train.pretrained={path}",
                               "train.epochs=1"), show_progress=False)
    pre = load_checkpoint(summary.run_dir / "best.pt")["preprocess"]
    assert pre["mean"] == [0.5, 0.5, 0.5] and pre["std"] == [0.5, 0.5, 0.5]
    assert "the normalisation timm:vit_base_patch16_siglip_224's timm weights" in caplog.text


def test_a_checkpoint_of_a_timm_run_fine_tunes_again_without_model(data, tmp_path):
    first = train(config(data, tmp_path / "a", "beit_base_patch16_224", "train.epochs=1"),
                  show_progress=False)
    cfg = load_config(None, [
        f"data.root={data}", f"train.output={tmp_path / 'b'}", "train.device=cpu",
        "data.workers=0", "train.batch_size=8", "train.epochs=1", "train.explain_samples=0",
        f"train.pretrained={first.run_dir / 'best.pt'}"])
    second = train(cfg, show_progress=False)
    a = load_checkpoint(first.run_dir / "best.pt")
    b = load_checkpoint(second.run_dir / "best.pt")
    assert b["model_config"]["timm_name"] == "beit_base_patch16_224"
    assert b["model_config"]["timm_args"]["img_size"] == 32
    assert a["model"]["head.weight"].shape == b["model"]["head.weight"].shape


def test_a_checkpoint_without_a_known_model_is_refused():
    with pytest.raises(VitError, match="model_config is invalid"):
        model_from_checkpoint({"model_config": {"timm_name": "nope", "timm_args": {}},
                               "model": {}})


def test_timm_weights_by_name_come_from_the_hub_cache(tmp_path, monkeypatch):
    """``--pretrained timm:NAME`` online is timm's download; with the file in the Hugging Face
    cache (what a download leaves) and the Hub off, it is read from there."""
    import huggingface_hub
    from safetensors.torch import save_file

    from vit.training.model_build import build_model, read_run_pretrained

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    name = "eva02_tiny_patch14_224.mim_in22k"
    torch.manual_seed(5)
    reference = {k: v.contiguous() for k, v in timm.create_model(name).state_dict().items()}
    snapshot = tmp_path / "hub" / f"models--timm--{name}" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    save_file(reference, snapshot / "model.safetensors")

    cfg = load_config(None, [f"model.name=timm:{name}", f"train.pretrained=timm:{name}",
                             "model.img_size=56"])
    model = build_model(cfg, classes=["a", "b"], pretrained=read_run_pretrained(cfg))
    assert describe_model(model).img_size == 56 and model.head.out_features == 2
    for key, tensor in model.state_dict().items():
        if key.startswith("blocks."):
            assert torch.equal(tensor, reference[key]), key


def test_timm_weights_of_another_family_for_the_package_vit_say_how_to_fine_tune_them():
    from vit.models.pretrained import read_pretrained

    with pytest.raises(CheckpointError, match="--model timm:eva02_tiny_patch14_224.mim_in22k "
                                              "--pretrained timm:eva02"):
        read_pretrained("timm:eva02_tiny_patch14_224.mim_in22k")


@pytest.mark.filterwarnings("ignore:::gradio")
def test_the_demo_app_answers_on_a_timm_checkpoint(tmp_path, monkeypatch):
    from helpers.images import COLOURS, colour_image
    from helpers.processes import ask, free_port, needs_gradio

    gradio_client = needs_gradio()
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    from PIL import Image

    from vit.publish.demo import build_demo

    torch.manual_seed(0)
    model = create_timm_model("eva02_tiny_patch14_224", num_classes=3, img_size=28, args=TINY)
    torch.nn.init.normal_(model.head.weight, std=2.0)
    clf = Classifier.from_checkpoint(save_checkpoint(tmp_path / "best.pt", model.eval()),
                                     device="cpu")
    image = tmp_path / "red.png"
    Image.fromarray(colour_image(COLOURS["red"], size=(40, 36))).save(image)
    app = build_demo(clf, topk=2)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        labels, picture = ask(gradio_client, f"http://127.0.0.1:{port}/", image, "attnlrp")
        assert labels == [label for label, _ in clf.predict([image], topk=2)[0]]
        assert picture.ndim == 3
    finally:
        app.close()
