"""Parameter groups, layer decay (against timm), the lr schedule, freezing, parameter counts."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers.models import TINY_VIT, tiny_vit
from timm.models.vision_transformer import VisionTransformer as TimmViT
from timm.optim import param_groups_layer_decay
from torch import nn

from vit.errors import ConfigError
from vit.training.optim import (
    build_optimizer,
    count_parameters,
    freeze_parameters,
    lr_at_step,
    param_groups,
    set_lr,
)


def settings_by_name(model: nn.Module, groups: list[dict]) -> dict[str, tuple[float, float]]:
    """Parameter name -> (lr_scale, weight_decay) of its group."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    return {name_of[id(p)]: (g.get("lr_scale", 1.0), g["weight_decay"])
            for g in groups for p in g["params"]}


class Wrapper(nn.Module):
    """Stands in for DistributedDataParallel (attribute ``module``) or torch.compile
    (attribute ``_orig_mod``): same attribute, same state_dict prefix."""

    def __init__(self, inner: nn.Module, attr: str):
        super().__init__()
        setattr(self, attr, inner)


# --- parameter groups -------------------------------------------------------------------------


def test_weight_decay_membership_by_hand():
    model = tiny_vit(reg_tokens=1, init_values=1e-5, train=True)  # registers and LayerScale gamma too
    settings = settings_by_name(model, param_groups(model, weight_decay=0.05))

    per_block_no_decay = ["norm1.weight", "norm1.bias", "attn.qkv.bias", "attn.proj.bias",
                          "ls1.gamma", "norm2.weight", "norm2.bias", "mlp.fc1.bias",
                          "mlp.fc2.bias", "ls2.gamma"]
    per_block_decay = ["attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight"]
    no_decay = ["cls_token", "reg_token", "pos_embed", "patch_embed.proj.bias",
                "norm.weight", "norm.bias", "head.bias"]
    decay = ["patch_embed.proj.weight", "head.weight"]
    for i in range(2):
        no_decay += [f"blocks.{i}.{n}" for n in per_block_no_decay]
        decay += [f"blocks.{i}.{n}" for n in per_block_decay]

    assert settings == {**dict.fromkeys(no_decay, (1.0, 0.0)), **dict.fromkeys(decay, (1.0, 0.05))}


@pytest.mark.parametrize("layer_decay", [None, 0.75])
def test_every_trainable_param_in_exactly_one_group_and_frozen_in_none(layer_decay):
    model = tiny_vit(train=True)
    model.patch_embed.proj.weight.requires_grad_(False)
    model.blocks[0].mlp.fc1.bias.requires_grad_(False)
    groups = param_groups(model, weight_decay=0.1, layer_decay=layer_decay)

    grouped = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == set(trainable)
    assert id(model.patch_embed.proj.weight) not in grouped
    assert id(model.blocks[0].mlp.fc1.bias) not in grouped


@pytest.mark.parametrize("global_pool", ["token", "avg"])
def test_layer_decay_scales_by_hand(global_pool):
    model = tiny_vit(global_pool=global_pool, train=True)  # avg: fc_norm after pooling instead of norm
    settings = settings_by_name(model, param_groups(model, weight_decay=0.05, layer_decay=0.5))
    # embeddings, blocks.0, blocks.1 (+ the final norm, as in timm), head (+ fc_norm)
    expected_prefix_scale = {"patch_embed.": 0.125, "cls_token": 0.125, "pos_embed": 0.125,
                             "blocks.0.": 0.25, "blocks.1.": 0.5, "norm.": 0.5, "fc_norm.": 1.0,
                             "head.": 1.0}
    for name, (scale, _) in settings.items():
        (want,) = [v for p, v in expected_prefix_scale.items() if name.startswith(p)]
        assert scale == pytest.approx(want), name
    assert len(settings) == len(list(model.parameters()))


@pytest.mark.parametrize("overrides", [{}, {"global_pool": "avg", "reg_tokens": 2}])
def test_layer_decay_matches_timm(overrides):
    """Same names, same config -> the same (lr_scale, weight_decay) per parameter as timm's own
    ViT gets from timm."""
    ours = tiny_vit(**overrides, train=True)
    theirs = TimmViT(**TINY_VIT, **overrides)
    their_groups = param_groups_layer_decay(theirs, weight_decay=0.05, layer_decay=0.75,
                                            no_weight_decay_list=theirs.no_weight_decay())
    expected = settings_by_name(theirs, their_groups)
    got = settings_by_name(ours, param_groups(ours, weight_decay=0.05, layer_decay=0.75))
    assert got.keys() == expected.keys()
    for name, settings in expected.items():
        assert got[name] == pytest.approx(settings), name


def test_param_groups_unwrap_ddp_and_compile_wrappers():
    model = tiny_vit(train=True)
    wrapped = Wrapper(Wrapper(model, "_orig_mod"), "module")
    plain = param_groups(model, weight_decay=0.05, layer_decay=0.5)
    through = param_groups(wrapped, weight_decay=0.05, layer_decay=0.5)
    assert [g["lr_scale"] for g in through] == [g["lr_scale"] for g in plain]
    assert [[id(p) for p in g["params"]] for g in through] == [
        [id(p) for p in g["params"]] for g in plain]


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5])
def test_bad_layer_decay(bad):
    with pytest.raises(ConfigError, match="layer_decay"):
        param_groups(tiny_vit(train=True), weight_decay=0.05, layer_decay=bad)


# --- schedule ---------------------------------------------------------------------------------

SCHEDULE = dict(base_lr=1.0, min_lr=0.1, warmup_steps=4, total_steps=14)


@pytest.mark.parametrize("step,expected", [
    (0, 0.25),  # first warmup step: base_lr * 1/4, never 0
    (1, 0.5),
    (3, 1.0),  # last warmup step reaches base_lr
    (4, 1.0),  # cosine starts at base_lr
    (9, 0.55),  # halfway through the cosine: (1.0 + 0.1) / 2
    (14, 0.1),  # end
    (1000, 0.1),  # beyond the end: clamped
])
def test_lr_at_step_by_hand(step, expected):
    assert lr_at_step(step, **SCHEDULE) == pytest.approx(expected)


def test_lr_quarter_of_cosine_by_hand():
    # t = 0.25: min + (base - min) * (1 + cos(pi/4)) / 2
    expected = 0.1 + 0.9 * (1 + math.sqrt(0.5)) / 2
    assert lr_at_step(6, **{**SCHEDULE, "total_steps": 12}) == pytest.approx(expected)


def test_lr_schedule_is_monotone_and_without_warmup_starts_at_base():
    lrs = [lr_at_step(s, **SCHEDULE) for s in range(20)]
    warmup, decay = lrs[:4], lrs[3:]
    assert all(a < b for a, b in zip(warmup, warmup[1:], strict=False))
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))
    assert lr_at_step(0, base_lr=3e-4, min_lr=0.0, warmup_steps=0, total_steps=10) == 3e-4


@pytest.mark.parametrize("kwargs,words", [
    (dict(step=-1), "step"),
    (dict(base_lr=0.0), "train.lr"),
    (dict(min_lr=2.0), "min_lr"),
    (dict(min_lr=-1.0), "min_lr"),
    (dict(total_steps=0), "total_steps"),
    (dict(warmup_steps=15), "warmup"),
    (dict(warmup_steps=-1), "warmup"),
])
def test_lr_at_step_rejects_bad_inputs(kwargs, words):
    args = {"step": 0, **SCHEDULE, **kwargs}
    with pytest.raises(ConfigError, match=words):
        lr_at_step(args.pop("step"), **args)


def test_set_lr_applies_each_groups_scale():
    a, b, c = (nn.Parameter(torch.zeros(1)) for _ in range(3))
    optimizer = torch.optim.AdamW([
        {"params": [a], "lr_scale": 0.25},
        {"params": [b], "lr_scale": 1.0},
        {"params": [c]},  # no scale: 1
    ], lr=123.0)
    set_lr(optimizer, 0.4)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.1, 0.4, 0.4])


# --- optimizer --------------------------------------------------------------------------------


def test_build_optimizer_uses_groups_and_lr_scales():
    model = tiny_vit(train=True)
    optimizer = build_optimizer(model, lr=0.01, weight_decay=0.05, layer_decay=0.5,
                                betas=(0.8, 0.9))
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["betas"] == (0.8, 0.9)
    assert not optimizer.defaults["fused"]  # CPU parameters: no fused kernel

    def lr_of(param: nn.Parameter) -> float:
        (group,) = [g for g in optimizer.param_groups if any(p is param for p in g["params"])]
        return group["lr"]

    assert lr_of(model.patch_embed.proj.weight) == pytest.approx(0.01 * 0.125)
    assert lr_of(model.head.weight) == pytest.approx(0.01)
    set_lr(optimizer, 0.1)
    assert lr_of(model.blocks[0].norm1.bias) == pytest.approx(0.1 * 0.25)


def test_build_optimizer_without_trainable_parameters():
    model = tiny_vit(train=True)
    model.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        build_optimizer(model, lr=1e-3, weight_decay=0.05)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_build_optimizer_fuses_on_cuda():
    model = tiny_vit(train=True).cuda()
    assert build_optimizer(model, lr=1e-3, weight_decay=0.05).defaults["fused"] is True
    assert build_optimizer(model, lr=1e-3, weight_decay=0.05, fused=False).defaults["fused"] is False


# --- freezing ---------------------------------------------------------------------------------


def _train_one_step(model: nn.Module) -> dict[str, torch.Tensor]:
    """One AdamW step on a real loss; returns the parameters before the step."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer(model, lr=0.1, weight_decay=0.0)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    loss = F.cross_entropy(model(x), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    optimizer.step()
    return before


@pytest.mark.parametrize("spec,expected_prefixes", [
    ("backbone", ("head.",)),
    ("all-but-last-1", ("blocks.1.", "norm.", "head.")),
    ("all-but-last-2", ("blocks.0.", "blocks.1.", "norm.", "head.")),
    ("none", ("",)),
])
def test_freeze_trains_exactly_the_named_parameters(spec, expected_prefixes):
    model = tiny_vit(train=True)
    with torch.no_grad():  # a non-zero head, so every parameter gets a gradient
        model.head.weight.normal_(0, 0.5)
    trainable = freeze_parameters(model, spec)
    expected = [n for n, _ in model.named_parameters() if n.startswith(expected_prefixes)]
    assert trainable == expected

    before = _train_one_step(model)
    for name, p in model.named_parameters():
        moved = not torch.equal(p, before[name])
        assert moved == (name in expected), name


def test_freeze_none_unfreezes_again():
    model = tiny_vit(train=True)
    freeze_parameters(model, "backbone")
    assert freeze_parameters(model, "none") == [n for n, _ in model.named_parameters()]
    assert all(p.requires_grad for p in model.parameters())


def test_freeze_avg_pool_keeps_fc_norm_trainable():
    model = tiny_vit(global_pool="avg", train=True)
    assert freeze_parameters(model, "all-but-last-1")[-4:] == [
        "fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"]


@pytest.mark.parametrize("spec", ["all-but-last-x", "all-but-last-0", "all-but-last-3",
                                  "all-but-last--1", "head", ""])
def test_freeze_rejects_bad_specs(spec):
    with pytest.raises(ConfigError, match="--freeze"):
        freeze_parameters(tiny_vit(train=True), spec)


def test_count_parameters_by_hand_and_against_timm():
    model = tiny_vit(train=True)
    # patch_embed 3*8*8*32 + 32; cls 32; pos (1 + 16) * 32;
    # per block: 2 norms 2*64, qkv 32*96 + 96, proj 32*32 + 32, fc1 32*128 + 128, fc2 128*32 + 32;
    # final norm 64; head 32*3 + 3
    block = 2 * 64 + (32 * 96 + 96) + (32 * 32 + 32) + (32 * 128 + 128) + (128 * 32 + 32)
    total = (3 * 8 * 8 * 32 + 32) + 32 + 17 * 32 + 2 * block + 64 + (32 * 3 + 3)
    assert count_parameters(model) == (total, total)
    assert total == sum(p.numel() for p in TimmViT(**TINY_VIT).parameters())
    freeze_parameters(model, "backbone")
    assert count_parameters(Wrapper(model, "module")) == (total, 32 * 3 + 3)
