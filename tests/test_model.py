"""The model: shapes, gradients, fused vs explicit attention, timm parity, presets."""

from dataclasses import replace

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer as TimmViT

import vit
from vit.models.presets import create_model, list_models
from vit.models.timm_interop import from_timm
from vit.models.vision_transformer import Attention, VisionTransformer, ViTConfig

TINY = dict(img_size=32, patch_size=8, num_classes=5, embed_dim=32, depth=2, num_heads=4)


def _perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Move every parameter off its init (zero head, unit LayerNorm) so parity tests can fail."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def test_public_imports():
    assert vit.VisionTransformer is VisionTransformer
    assert "vit_tiny_patch16_224" in vit.list_models()
    assert isinstance(vit.create_model("vit_nano_patch4_32", depth=1), VisionTransformer)


@pytest.mark.parametrize("name", list_models())
def test_every_preset_shapes_at_reduced_depth(name):
    model = create_model(name, depth=1, num_classes=3).eval()
    size = model.config.img_size
    x = torch.randn(2, 3, size, size)
    tokens = model.forward_features(x)
    grid = model.patch_embed.grid_size
    assert tokens.shape == (2, 1 + grid[0] * grid[1], model.embed_dim)
    assert model.forward_head(tokens).shape == (2, 3)
    assert model.forward_head(tokens, pre_logits=True).shape == (2, model.embed_dim)


@pytest.mark.parametrize(
    "name", ["vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224",
             "vit_large_patch16_224"]
)
def test_imagenet_presets_have_timm_shapes(name):
    ours = {k: v.shape for k, v in create_model(name).state_dict().items()}
    with torch.device("meta"):
        theirs = {k: v.shape for k, v in timm.create_model(name, pretrained=False).state_dict().items()}
    assert ours == theirs


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="vit_tiny_patch16_224"):
        create_model("vit_gigantic")
    with pytest.raises(ValueError, match="unknown model arguments"):
        create_model("vit_nano_patch4_32", depthh=3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(img_size=30, patch_size=8), "not divisible by patch_size"),
        (dict(embed_dim=30, num_heads=4), "not divisible by num_heads"),
        (dict(global_pool="max"), "global_pool"),
        (dict(drop_path_rate=1.5), "drop_path_rate"),
    ],
)
def test_bad_config_raises_clearly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VisionTransformer(**{**TINY, **kwargs})


def test_bad_input_raises_clearly():
    model = VisionTransformer(**TINY)
    with pytest.raises(ValueError, match=r"expected input of shape \(B, 3, H, W\)"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        model(torch.randn(2, 3, 30, 30))


def test_every_parameter_gets_a_gradient_and_nothing_is_nan():
    torch.manual_seed(0)
    model = VisionTransformer(**TINY, reg_tokens=2, init_values=0.1, qk_norm=True, drop_path_rate=0.1)
    _perturb(model)  # the zero-initialised head would otherwise block gradients to the body
    x = torch.randn(4, 3, 32, 32)
    loss = F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_head_is_zero_initialised_and_linears_trunc_normal():
    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=4, embed_dim=192, depth=2, num_heads=3)
    assert model.head.weight.abs().sum() == 0
    w = model.blocks[0].mlp.fc1.weight
    assert abs(w.std().item() - 0.02) < 0.003  # trunc-normal(0.02) cut at +-2 (i.e. 100 std)
    assert model.blocks[0].attn.qkv.bias.abs().sum() == 0


def test_deterministic_for_a_fixed_seed():
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = VisionTransformer(**TINY)
        _perturb(model, seed=1)
        torch.manual_seed(7)
        outs.append(model.eval()(torch.randn(2, 3, 32, 32)))
    assert torch.equal(outs[0], outs[1])


def test_fused_and_explicit_attention_agree():
    torch.manual_seed(0)
    model = VisionTransformer(**TINY, reg_tokens=4).eval()
    _perturb(model)
    x = torch.randn(3, 3, 32, 32)
    fused = model(x)
    explicit, attentions = model(x, return_attention=True)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=0)
    assert len(attentions) == TINY["depth"]
    n = model.num_prefix_tokens + 16
    for a in attentions:
        assert a.shape == (3, TINY["num_heads"], n, n)
        torch.testing.assert_close(a.sum(-1), torch.ones(3, TINY["num_heads"], n))


def test_attention_module_matches_sdpa_reference():
    torch.manual_seed(0)
    attn = Attention(dim=32, num_heads=4, qkv_bias=True, qk_norm=False, attn_drop=0, proj_drop=0)
    x = torch.randn(2, 10, 32)
    out, weights = attn(x, return_attention=True)
    q, k, v = attn.qkv(x).reshape(2, 10, 3, 4, 8).permute(2, 0, 3, 1, 4)
    ref = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 10, 32)
    torch.testing.assert_close(out, attn.proj(ref), atol=1e-6, rtol=1e-5)
    ref_weights = torch.softmax(q @ k.transpose(-2, -1) / 8**0.5, dim=-1)
    torch.testing.assert_close(weights, ref_weights)


def test_other_input_size_interpolates_pos_embed():
    torch.manual_seed(0)
    model = VisionTransformer(**TINY).eval()
    _perturb(model)
    logits, attentions = model(torch.randn(2, 3, 48, 48), return_attention=True)
    assert logits.shape == (2, 5)
    assert attentions[0].shape[-1] == 1 + 6 * 6
    # a 1x1 -> 1x1 resample is the identity; at the trained size nothing changes
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(model(x), model(x))
    assert torch.isfinite(model(torch.randn(1, 3, 16, 64))).all()  # non-square input too


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"reg_tokens": 4},
        {"global_pool": "avg"},
        {"init_values": 1e-5},
        {"qk_norm": True},
        {"reg_tokens": 1, "global_pool": "avg", "init_values": 0.1},
    ],
    ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()) or "plain",
)
def test_timm_state_dict_loads_strict_and_matches(extra):
    torch.manual_seed(0)
    theirs = TimmViT(**TINY, **extra).eval()
    _perturb(theirs)
    ours = VisionTransformer(**TINY, **extra).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.forward_features(x), theirs.forward_features(x), atol=1e-5, rtol=0)

    converted = from_timm(theirs).eval()
    assert replace(converted.config, init_values=ours.config.init_values) == ours.config
    torch.testing.assert_close(converted(x), theirs(x), atol=1e-5, rtol=0)


def test_from_timm_refuses_what_it_cannot_represent():
    import timm

    with pytest.raises(ValueError, match="no_embed_class"):
        from_timm(TimmViT(**TINY, no_embed_class=True))
    tiny = dict(depth=1, img_size=32, patch_size=8, embed_dim=32, num_heads=2, num_classes=3)
    with pytest.raises(ValueError, match="distillation token"):
        from_timm(timm.create_model("deit_tiny_distilled_patch16_224", **tiny))
    with pytest.raises(ValueError, match="class Eva .*as it is"):
        from_timm(timm.create_model("eva02_tiny_patch14_224", **tiny))


def test_reset_classifier_and_no_weight_decay():
    model = VisionTransformer(**TINY)
    model.reset_classifier(11)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 11)
    assert model.config.num_classes == 11
    assert {"pos_embed", "cls_token"} <= model.no_weight_decay()


def test_config_roundtrip():
    cfg = ViTConfig(**TINY, reg_tokens=2)
    assert ViTConfig.from_dict(cfg.__dict__) == cfg
    with pytest.raises(ValueError, match="unknown model config keys"):
        ViTConfig.from_dict({**cfg.__dict__, "bogus": 1})


def test_mlp_in_chunks_of_tokens_gives_the_same_block_output():
    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=4, num_classes=3, embed_dim=32, depth=2,
                              num_heads=2, init_values=0.5).eval()
    tokens = torch.randn(2, 65, 32)
    with torch.no_grad():
        whole, _ = model.blocks[1](tokens)
        for chunk in (1, 7, 64, 65, 500):
            chunked, _ = model.blocks[1](tokens, mlp_chunk=chunk)
            torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=1e-5)
