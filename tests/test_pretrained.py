"""Fine-tuning from pretrained weights: every file format, every adaptation, against timm."""

import argparse
import json
import time

import huggingface_hub.constants
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer as TimmViT
from timm.models.vision_transformer import checkpoint_filter_fn

from vit.errors import CheckpointError, ConfigError, VitError
from vit.models.pretrained import (
    PretrainedWeights,
    build_finetune_model,
    infer_config,
    load_pretrained_into,
    read_pretrained,
)
from vit.models.timm_interop import from_timm
from vit.models.vision_transformer import VisionTransformer, config_dict

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
HEAD = ["head.weight", "head.bias"]
CLASSES = [f"c{i}" for i in range(10)]


def _perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every parameter off its init (zero head, unit norms) so equality checks can fail."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def _timm_vit(seed: int = 0, **overrides) -> TimmViT:
    torch.manual_seed(seed)
    return _perturbed(TimmViT(**{**TINY, "num_classes": 10, **overrides}), seed=seed)


@pytest.fixture
def timm_vit() -> TimmViT:
    return _timm_vit()


def _ours_meta(timm_model: TimmViT) -> dict:
    return {"format": "vit-checkpoint", "format_version": 1,
            "model_config": config_dict(from_timm(timm_model)), "classes": CLASSES,
            "preprocess": {"img_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 1.0}}


def _save(state_dict: dict, kind: str, tmp_path, meta: dict | None = None):
    """Write the weights the way users have them; returns the path."""
    if kind in ("pth", "bin"):
        path = tmp_path / f"weights.{kind}"
        torch.save(state_dict, path)
    elif kind == "wrapped":  # a DDP training checkpoint
        path = tmp_path / "checkpoint.pth.tar"
        module = {f"module.{k}": v for k, v in state_dict.items()}
        torch.save({"epoch": 3, "state_dict": module, "optimizer": {"state": {}}}, path)
    elif kind == "safetensors":
        path = tmp_path / "weights.safetensors"
        save_file(state_dict, path)
    elif kind == "ours_pt":
        path = tmp_path / "best.pt"
        torch.save({**meta, "model": state_dict, "epoch": 7}, path)
    elif kind == "ours_safetensors":
        path = tmp_path / "model.safetensors"
        save_file(state_dict, path)
        (tmp_path / "model.json").write_text(json.dumps({**meta, "img_size": 32}))
    elif kind == "ours_safetensors_alone":  # the sidecar is lost; its copy in the metadata is not
        path = tmp_path / "model.safetensors"
        save_file(state_dict, path, metadata={"vit": json.dumps(meta)})
    return path


FORMATS = ["pth", "bin", "wrapped", "safetensors", "ours_pt", "ours_safetensors",
           "ours_safetensors_alone"]


# --- reading and loading every format ----------------------------------------------------------


@pytest.mark.parametrize("kind", FORMATS)
def test_every_format_loads_with_a_new_zero_head(kind, timm_vit, tmp_path):
    reference = timm_vit.state_dict()
    path = _save(reference, kind, tmp_path, meta=_ours_meta(timm_vit))

    model, report = build_finetune_model(path, num_classes=3, overrides={"num_heads": 2})

    state = model.state_dict()
    assert set(state) == set(reference)
    for name, tensor in reference.items():
        if name not in HEAD:
            torch.testing.assert_close(state[name], tensor, rtol=0, atol=0, msg=name)
    assert state["head.weight"].shape == (3, 32) and not state["head.weight"].any()
    assert state["head.bias"].shape == (3,) and not state["head.bias"].any()
    assert report.new == HEAD and report.adapted == {}
    assert sorted(report.loaded) == sorted(set(reference) - set(HEAD))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.eval().forward_features(x), timm_vit.forward_features(x))


@pytest.mark.parametrize("kind", ["ours_pt", "ours_safetensors", "ours_safetensors_alone"])
def test_ours_carries_architecture_and_classes(kind, timm_vit, tmp_path):
    path = _save(timm_vit.state_dict(), kind, tmp_path, meta=_ours_meta(timm_vit))
    weights = read_pretrained(path)
    assert weights.classes == CLASSES
    assert weights.model_config == config_dict(from_timm(timm_vit))

    # Same classes: the whole model, head included, is the file's: same logits as timm.
    model, report = build_finetune_model(weights, num_classes=10, classes=CLASSES)
    assert report.new == [] and "head.weight" in report.loaded
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.eval()(x), timm_vit(x))


def test_head_rows_are_kept_by_class_name(timm_vit, tmp_path):
    path = _save(timm_vit.state_dict(), "ours_pt", tmp_path, meta=_ours_meta(timm_vit))
    model, report = build_finetune_model(path, num_classes=3, classes=["c7", "fox", "c2"])

    weight, bias = timm_vit.head.weight.detach(), timm_vit.head.bias.detach()
    expected_w = torch.stack([weight[7], torch.zeros(32), weight[2]])
    expected_b = torch.stack([bias[7], torch.zeros(()), bias[2]])
    torch.testing.assert_close(model.head.weight.detach(), expected_w, rtol=0, atol=0)
    torch.testing.assert_close(model.head.bias.detach(), expected_b, rtol=0, atol=0)
    assert "2 classes" in report.adapted["head.weight"]


def test_training_checkpoint_prefers_ema_and_allows_timm_args(tmp_path):
    plain, ema = _timm_vit(seed=1).state_dict(), _timm_vit(seed=2).state_dict()
    path = tmp_path / "timm_train.pth.tar"
    args = argparse.Namespace(model="vit_tiny", lr=1e-3)  # timm's train.py saves its args
    torch.save({"state_dict": plain, "state_dict_ema": ema, "args": args, "epoch": 1}, path)
    weights = read_pretrained(path)
    torch.testing.assert_close(weights.state_dict["pos_embed"], ema["pos_embed"], rtol=0, atol=0)


def test_only_wrapper_prefixes_shared_by_every_key_are_removed(timm_vit, tmp_path):
    state = timm_vit.state_dict()
    path = tmp_path / "compiled.pth"
    torch.save({"model": {f"module._orig_mod.{k}": v for k, v in state.items()}}, path)
    assert set(read_pretrained(path).state_dict) == set(state)

    mixed = {**{f"model.{k}": v for k, v in state.items()}, "ema_decay": torch.tensor(0.9)}
    torch.save(mixed, path)
    assert set(read_pretrained(path).state_dict) == set(mixed)  # not all keys share "model."

    bare = {**{f"model.{k}": v for k, v in state.items()}, "model": torch.tensor(1.0)}
    torch.save(bare, path)
    assert set(read_pretrained(path).state_dict) == set(bare)  # "model" is a key, not a prefix


# --- adaptations ---------------------------------------------------------------------------------


def test_larger_images_resample_pos_embed_like_timm_and_train(timm_vit, tmp_path):
    path = _save(timm_vit.state_dict(), "pth", tmp_path)
    model, report = build_finetune_model(path, num_classes=3, img_size=48,
                                         overrides={"num_heads": 2})

    assert model.patch_embed.grid_size == (6, 6)
    assert "4x4 -> 6x6" in report.adapted["pos_embed"]
    # timm's own loader on a timm model at 48 px, and its resampling function, agree with ours.
    timm48 = TimmViT(**{**TINY, "img_size": 48, "num_classes": 10})
    theirs = checkpoint_filter_fn(timm_vit.state_dict(), timm48)["pos_embed"]
    direct = resample_abs_pos_embed(timm_vit.pos_embed.detach(), new_size=[6, 6],
                                    num_prefix_tokens=1)
    torch.testing.assert_close(model.pos_embed.detach(), theirs)
    torch.testing.assert_close(model.pos_embed.detach(), direct)

    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.train().parameters(), lr=1e-2)
    loss = F.cross_entropy(model(torch.randn(4, 3, 48, 48)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    for name in ("pos_embed", "head.weight", "blocks.0.attn.qkv.weight"):
        assert not torch.equal(model.state_dict()[name], before[name]), name


def test_registers_added_start_fresh_and_keep_cls_and_patch_positions(timm_vit, tmp_path):
    path = _save(timm_vit.state_dict(), "safetensors", tmp_path)
    model = VisionTransformer(**TINY, num_classes=3, reg_tokens=4)
    fresh_pos, fresh_reg = model.pos_embed.detach().clone(), model.reg_token.detach().clone()

    report = load_pretrained_into(model, read_pretrained(path))

    file_pos = timm_vit.pos_embed.detach()
    pos = model.pos_embed.detach()
    assert pos.shape == (1, 1 + 4 + 16, 32)
    torch.testing.assert_close(pos[:, :1], file_pos[:, :1], rtol=0, atol=0)  # [CLS]
    torch.testing.assert_close(pos[:, 1:5], fresh_pos[:, 1:5], rtol=0, atol=0)  # registers
    torch.testing.assert_close(pos[:, 5:], file_pos[:, 1:], rtol=0, atol=0)  # patches
    torch.testing.assert_close(model.reg_token.detach(), fresh_reg, rtol=0, atol=0)
    assert "reg_token" in report.new and "pos_embed" in report.adapted


def test_registers_removed_drop_the_files_registers(tmp_path):
    timm_reg = _timm_vit(reg_tokens=4)
    path = _save(timm_reg.state_dict(), "pth", tmp_path)
    model = VisionTransformer(**TINY, num_classes=10)
    report = load_pretrained_into(model, read_pretrained(path))

    file_pos = timm_reg.pos_embed.detach()
    expected = torch.cat([file_pos[:, :1], file_pos[:, 5:]], dim=1)
    torch.testing.assert_close(model.pos_embed.detach(), expected, rtol=0, atol=0)
    assert "reg_token" in report.dropped


@pytest.mark.parametrize(
    "variant",
    [
        dict(reg_tokens=4),  # timm's layout: pos_embed = [cls, registers, patches]
        dict(no_embed_class=True, init_values=0.1),  # DeiT III: no positions for [CLS]
        dict(no_embed_class=True, reg_tokens=2),
        dict(qk_norm=True, num_heads=4),  # num_heads read off the q_norm width
        dict(global_pool="avg", init_values=1e-2, mlp_ratio=2.0, qkv_bias=False),
    ],
    ids=["registers", "no_embed_class", "no_embed_class_registers", "qk_norm", "avg_layerscale"],
)
def test_inferred_architecture_reproduces_timm(variant, tmp_path):
    timm_model = _timm_vit(**variant)
    path = _save(timm_model.state_dict(), "pth", tmp_path)
    heads = {} if "qk_norm" in variant else {"num_heads": variant.get("num_heads", 2)}
    model, report = build_finetune_model(path, num_classes=10, overrides=heads)

    assert model.config.num_heads == timm_model.blocks[0].attn.num_heads
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.eval()(x), timm_model(x), rtol=1e-5, atol=1e-5)
    assert report.new == []


def _resize_each_patch(x: torch.Tensor, old: int, new: int) -> torch.Tensor:
    """Resize every patch on its own (what the pseudo-inverse resize is exact for)."""
    B, C, H, W = x.shape
    gh, gw = H // old, W // old
    patches = x.reshape(B, C, gh, old, gw, old).permute(0, 2, 4, 1, 3, 5).reshape(-1, C, old, old)
    patches = F.interpolate(patches, size=(new, new), mode="bicubic", antialias=True)
    patches = patches.reshape(B, gh, gw, C, new, new).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(B, C, gh * new, gw * new)


def test_patch_size_change_resamples_the_kernel(timm_vit, tmp_path):
    path = _save(timm_vit.state_dict(), "pth", tmp_path)
    model, report = build_finetune_model(
        path, num_classes=10, img_size=64, overrides={"num_heads": 2, "patch_size": 16}
    )
    assert "8x8 -> 16x16" in report.adapted["patch_embed.proj.weight"]
    assert model.patch_embed.grid_size == (4, 4) and "pos_embed" not in report.adapted

    # FlexiViT: the 16 px kernel on an upsampled patch equals the 8 px kernel on the original.
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.eval()(_resize_each_patch(x, 8, 16)), timm_vit(x),
                               rtol=1e-4, atol=1e-4)


# --- refusals ------------------------------------------------------------------------------------


def test_other_embed_dim_names_cls_token_and_both_shapes(timm_vit, tmp_path):
    path = _save(timm_vit.state_dict(), "pth", tmp_path)
    model = VisionTransformer(**{**TINY, "embed_dim": 48}, num_classes=3)
    before = model.pos_embed.detach().clone()
    with pytest.raises(CheckpointError, match=r"cls_token.*\(1, 1, 32\).*\(1, 1, 48\)"):
        load_pretrained_into(model, read_pretrained(path))
    torch.testing.assert_close(model.pos_embed.detach(), before, rtol=0, atol=0)


def test_other_mlp_and_depth_name_the_tensors(timm_vit, tmp_path):
    weights = read_pretrained(_save(timm_vit.state_dict(), "pth", tmp_path))
    with pytest.raises(CheckpointError, match=r"blocks\.0\.mlp\.fc1\.weight.*\(128, 32\).*\(64, 32\)"):
        load_pretrained_into(VisionTransformer(**TINY, mlp_ratio=2.0), weights)
    with pytest.raises(CheckpointError, match=r"missing from the file: blocks\.2\."):
        load_pretrained_into(VisionTransformer(**{**TINY, "depth": 3}), weights)
    extra = PretrainedWeights({**weights.state_dict, "norm_pre.weight": torch.ones(32)})
    with pytest.raises(CheckpointError, match=r"not in the model: norm_pre\.weight"):
        load_pretrained_into(VisionTransformer(**TINY), extra)


def test_unknown_width_needs_num_heads(timm_vit):
    with pytest.raises(ConfigError, match="num_heads"):
        infer_config(timm_vit.state_dict())
    with torch.device("meta"):
        tiny = timm.create_model("vit_tiny_patch16_224", depth=1)
    assert infer_config(tiny.state_dict())["num_heads"] == tiny.blocks[0].attn.num_heads == 3


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"cls_token": torch.zeros(1, 1, 32)}, "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="arbitrary Python objects.*refused for safety") as info:
        read_pretrained(path)
    assert not marker.exists()
    assert "\n" not in str(info.value)


def test_unreadable_sources_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_pretrained(tmp_path / "missing.pth")
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.pth is not a weights file: it is a text file"):
        read_pretrained(text)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="safetensors"):
        read_pretrained(bad)
    nested = tmp_path / "optimizer_only.pth"
    torch.save({"optimizer": {"lr": torch.tensor(0.1)}}, nested)
    with pytest.raises(CheckpointError, match="without weights.*'optimizer'"):
        read_pretrained(nested)


# --- timm:<name> ---------------------------------------------------------------------------------


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


@pytest.mark.parametrize("offline_flag", [True, False], ids=["HF_HUB_OFFLINE", "unreachable"])
def test_timm_offline_fails_fast_in_one_line(offline_flag, empty_hub_cache, monkeypatch):
    """Fast: at most one connection is tried, with a short timeout, and no download is started
    (timm's download retries with back-off for minutes). Counted, not timed."""
    import socket

    import timm

    from vit.models import timm_interop

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline_flag)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "https://127.0.0.1:9")
    connections, downloads, sleeps = [], [], []

    def refused(address, timeout=None, *args, **kwargs):  # nothing listens: refused at once
        connections.append((address, timeout))
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(socket, "create_connection", refused)
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: downloads.append(a) or 1 / 0)
    monkeypatch.setattr(time, "sleep", sleeps.append)
    name = "vit_tiny_patch16_224.augreg_in21k"
    with pytest.raises(VitError) as info:
        read_pretrained(f"timm:{name}")
    if offline_flag:
        assert connections == []
    else:
        assert connections == [(("127.0.0.1", 9), timm_interop.PROBE_TIMEOUT_S)]
        assert timm_interop.PROBE_TIMEOUT_S <= 5
    assert downloads == [] and sleeps == []
    message = str(info.value)
    assert "\n" not in message
    assert f"huggingface.co/timm/{name}" in message and "pass its path" in message


def test_timm_unknown_name_is_refused():
    with pytest.raises(CheckpointError, match="no pretrained VisionTransformer weights"):
        read_pretrained("timm:resnet50")
    with pytest.raises(CheckpointError, match="no pretrained VisionTransformer weights"):
        read_pretrained("timm:vit_tiny_patch16_224.no_such_tag")


@pytest.mark.slow
def test_timm_weights_in_the_hub_cache_load_through_timm(empty_hub_cache, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    name = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in timm.create_model(name).state_dict().items()}
    g = torch.Generator().manual_seed(3)
    reference = {k: 0.1 * torch.randn(shape, generator=g) for k, shape in shapes.items()}
    snapshot = empty_hub_cache / f"models--timm--{name}" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    save_file(reference, snapshot / "model.safetensors")

    weights = read_pretrained(f"timm:{name}")

    assert weights.model_config["embed_dim"] == 192 and weights.model_config["num_heads"] == 3
    for key, tensor in reference.items():
        torch.testing.assert_close(weights.state_dict[key], tensor, rtol=0, atol=0, msg=key)
