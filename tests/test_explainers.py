"""Every saliency method against an independent reference, and the one batched API.

References: the rollout definition as full N x N products of the model's explicit attention;
LeGrad's formula as the authors' code computes it, on the explicit attention with the whole
graph; AttnLRP's rules written out op by op, with the relevance every bias and softmax absorbs
(conservation), lxt's CP-LRP on a torchvision ViT and lxt's AttnLRP on Hugging Face's ViT,
each with the same weights; Grad-CAM by the grad-cam
package on the same model and by Selvaraju et al.'s formula.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.models import tiny_vit, trained_like
from helpers.rollout_reference import full_rollout

from vit.errors import VitError
from vit.explain import METHODS, attention_maps, saliency
from vit.explain.saliency import CLASS_SPECIFIC

GRID = (4, 4)


def images(batch: int = 3, height: int = 32, width: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


# --- the API ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_every_method_is_batched_with_registers_on_a_non_square_input(method):
    model = trained_like(reg_tokens=3)
    x = images(3, 32, 48)  # a 4x6 grid with 1 + 3 prefix tokens
    batched = saliency(model, x, method)
    singles = torch.cat([saliency(model, x[i:i + 1], method) for i in range(3)])
    assert batched.shape == (3, 4, 6) and batched.dtype == torch.float32
    assert batched.abs().sum() > 0 and torch.isfinite(batched).all()
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_an_outer_bf16_autocast_does_not_change_any_map(method):
    model, x = trained_like(seed=3), images()
    plain = saliency(model, x, method)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = saliency(model, x, method)
    assert inside.dtype == torch.float32
    assert torch.equal(plain, inside)


@pytest.mark.parametrize("method", CLASS_SPECIFIC)
def test_class_specific_methods_follow_the_target(method):
    model, x = trained_like(), images(2)
    predicted = model(x).argmax(-1)
    torch.testing.assert_close(saliency(model, x, method), saliency(model, x, method, predicted))
    per_image = saliency(model, x, method, target=torch.tensor([1, 2]))
    torch.testing.assert_close(per_image[1:], saliency(model, x[1:], method, target=2))
    assert not torch.allclose(saliency(model, x, method, 0), saliency(model, x, method, 1))
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(VitError, match="target"):
        saliency(model, x, method, target=3)
    with torch.inference_mode(), pytest.raises(VitError, match="inference_mode"):
        saliency(model, x, method)


def test_frozen_parameters_give_the_same_maps():
    model, x = trained_like(), images(2)
    expected = {m: saliency(model, x, m) for m in CLASS_SPECIFIC}
    model.requires_grad_(False)
    for method in CLASS_SPECIFIC:
        torch.testing.assert_close(saliency(model, x, method), expected[method])


def test_unknown_methods_and_options_are_named():
    model, x = trained_like(), images(1)
    with pytest.raises(VitError, match=", ".join(METHODS)):
        saliency(model, x, "lrp")
    with pytest.raises(VitError, match="rollout takes no option rule; its options: query"):
        saliency(model, x, "rollout", rule="cp")
    with pytest.raises(VitError, match="rule must be one of attnlrp, cp"):
        saliency(model, x, "attnlrp", rule="gamma")
    with pytest.raises(VitError, match="chunk_size"):
        saliency(model, x, "rollout", chunk_size=0)
    with pytest.raises(VitError, match="outside the 4x4 grid"):
        saliency(model, x, "rollout", query=(4, 0))


# --- rollout and attention rows: chunked, from any query, equal to the definition --------------


def explicit_attentions(model, x):
    with torch.no_grad():
        _, attentions = model(x, return_attention=True)
    return attentions


@pytest.mark.parametrize("chunk_size", [1, 3, None, 1000])
@pytest.mark.parametrize("fusion, discard_ratio", [("mean", 0.0), ("max", 0.4), ("min", 0.2)])
def test_chunked_rollout_equals_the_full_product(chunk_size, fusion, discard_ratio):
    model, x = tiny_vit(depth=3, reg_tokens=1, jitter=0.3), images(2)
    expected = full_rollout(explicit_attentions(model, x), 2, GRID, fusion, discard_ratio)
    out = saliency(model, x, "rollout", head_fusion=fusion, discard_ratio=discard_ratio,
                   chunk_size=chunk_size)
    torch.testing.assert_close(out.double(), expected, atol=1e-6, rtol=1e-5)


def test_rollout_from_a_query_patch_is_that_row_of_the_product():
    model, x = tiny_vit(depth=3, reg_tokens=2, jitter=0.3), images(2, 32, 48)
    attentions = explicit_attentions(model, x)  # 3 prefix tokens + a 4x6 grid = 27 tokens
    eye = torch.eye(27, dtype=torch.float64)
    r = eye
    for a in attentions:
        m = 0.5 * a.double().mean(1) + 0.5 * eye
        r = (m / m.sum(-1, keepdim=True)) @ r
    token = 3 + 2 * 6 + 5  # patch (2, 5)
    expected = r[:, token, 3:].reshape(2, 4, 6)
    torch.testing.assert_close(saliency(model, x, "rollout", query=(2, 5)).double(), expected,
                               atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(saliency(model, x, "rollout", query=token).double(), expected,
                               atol=1e-6, rtol=1e-5)
    assert not torch.allclose(expected, r[:, 0, 3:].reshape(2, 4, 6))  # not the [CLS] row


def test_attention_rows_of_any_layer_and_query():
    model, x = tiny_vit(depth=3, reg_tokens=1, jitter=0.3), images(2, 32, 48)
    attentions = explicit_attentions(model, x)  # 2 prefix + 24 patches
    torch.testing.assert_close(saliency(model, x, "attention"),
                               attentions[-1].mean(1)[:, 0, 2:].reshape(2, 4, 6))
    torch.testing.assert_close(saliency(model, x, "attention", layer=0, head_fusion="max",
                                        query=(1, 1)),
                               attentions[0].amax(1)[:, 2 + 7, 2:].reshape(2, 4, 6))


def test_attention_maps_pick_layers_heads_and_query_rows():
    model, x = tiny_vit(depth=3, reg_tokens=1, jitter=0.3), images(2, 32, 48)
    attentions = explicit_attentions(model, x)
    every = attention_maps(model, x)
    assert every.shape == (2, 3, 2, 26, 26)
    torch.testing.assert_close(every, torch.stack(attentions, dim=1))
    rows = attention_maps(model, x, layers=[2, 0], query=[0, (2, 5)], heads=1)
    assert rows.shape == (2, 2, 1, 2, 26)
    torch.testing.assert_close(rows[:, 0, 0], attentions[2][:, 1, [0, 2 + 17]])
    torch.testing.assert_close(rows[:, 1, 0], attentions[0][:, 1, [0, 2 + 17]])
    torch.testing.assert_close(attention_maps(model, x, layers=-1, query=5)[:, 0],
                               attentions[-1][:, :, 5:6])
    with pytest.raises(VitError, match="heads"):
        attention_maps(model, x, heads=[2])
    with pytest.raises(VitError, match="layer"):
        attention_maps(model, x, layers=[3])


# --- gradient rollout: chunks change nothing -------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 5])
def test_gradient_rollout_chunks_change_nothing(chunk_size):
    model, x = trained_like(reg_tokens=2), images(2)
    torch.testing.assert_close(saliency(model, x, "grad-rollout", chunk_size=chunk_size),
                               saliency(model, x, "grad-rollout", chunk_size=10_000))


# --- LeGrad: the authors' formula on the explicit attention ------------------------------------


def legrad_reference(model, x, classes, *, pool="mean", start_layer=0, score_of_last=False):
    """compute_legrad_clip of WalBouss/LeGrad for a classifier: per layer, the score read off
    that layer's tokens, its gradient w.r.t. that layer's attention (whole graph), relu, mean
    over heads then over query rows, patch columns; averaged over the layers."""
    prefix, per_layer, attentions, scores = model.num_prefix_tokens, [], [], []
    tokens = model.embed(x.clone().requires_grad_(True))
    for block in model.blocks:
        tokens, attn = block(tokens, return_attention=True)
        attentions.append(attn)
        if pool == "mean":
            logits = model.head(model.fc_norm(model.norm(tokens.mean(dim=1))))
        else:
            logits = model.forward_head(model.norm(tokens))
        scores.append(logits.gather(1, classes[:, None]).sum())
    for layer in range(start_layer, len(model.blocks)):
        score = scores[-1] if score_of_last else scores[layer]
        (grad,) = torch.autograd.grad(score, attentions[layer], retain_graph=True)
        per_layer.append(grad.clamp(min=0).mean(dim=1).mean(dim=1)[:, prefix:])
    return torch.stack(per_layer).mean(dim=0).reshape(x.shape[0], 4, -1).detach()


@pytest.mark.parametrize("pool, start_layer", [("mean", 0), ("model", 0), ("mean", 2)])
def test_legrad_matches_the_authors_formula(pool, start_layer):
    model, x = trained_like(depth=3, reg_tokens=1), images(2, 32, 48)
    classes = torch.tensor([0, 2])
    expected = legrad_reference(model, x, classes, pool=pool, start_layer=start_layer)
    out = saliency(model, x, "legrad", target=classes, pool=pool, start_layer=start_layer)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-4)
    # reading every layer's gradient off the final score (not the layer's own) differs
    wrong = legrad_reference(model, x, classes, pool=pool, score_of_last=True)
    assert (wrong - legrad_reference(model, x, classes, pool=pool)).abs().max() > 1e-4


# --- AttnLRP: the rules written out, conservation, and lxt --------------------------------------


def _leaves(model):
    return {name: p.detach().clone().requires_grad_(True) for name, p in model.named_parameters()}


def attnlrp_reference(model, x, target, *, cp=False):
    """AttnLRP's rules op by op (gradient x input, Achtibat et al. 2024) on our block layout:
    identity rule on GELU and on LayerNorm's division, uniform rule on both attention products,
    the softmax's own gradient (Prop. 3.1); CP-LRP holds the attention fixed instead.
    Returns per-patch pixel relevance, the target logits, the relevance absorbed by the biases
    and by the softmaxes (the paper's bias terms)."""
    P, pixels = _leaves(model), x.clone().requires_grad_(True)
    softmaxes = []

    def ln(t, name):  # (t - mean) / std, std held fixed
        centred = t - t.mean(-1, keepdim=True)
        std = (centred.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt().detach()
        return centred / std * P[f"{name}.weight"] + P[f"{name}.bias"]

    def linear(t, name):
        return t @ P[f"{name}.weight"].T + P[f"{name}.bias"]

    def uniform(a, b):  # a @ b with the relevance split evenly between a and b
        return 0.5 * (a @ b.detach()) + 0.5 * (a.detach() @ b)

    b, heads, p = x.shape[0], model.blocks[0].attn.num_heads, model.patch_embed.patch_size[0]
    patches = F.conv2d(pixels, P["patch_embed.proj.weight"], P["patch_embed.proj.bias"], stride=p)
    prefix = [P[name].expand(b, -1, -1) for name in ("cls_token", "reg_token") if name in P]
    t = torch.cat([*prefix, patches.flatten(2).transpose(1, 2)], dim=1) + P["pos_embed"]
    n, d = t.shape[1:]
    for i in range(len(model.blocks)):
        q, k, v = linear(ln(t, f"blocks.{i}.norm1"), f"blocks.{i}.attn.qkv") \
            .reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        s = uniform(q * (d // heads) ** -0.5, k.transpose(-2, -1))
        a = s.softmax(dim=-1)
        if cp:
            o = a.detach() @ v
        else:
            a.retain_grad()
            softmaxes.append((s, a))
            o = uniform(a, v)
        t = t + linear(o.transpose(1, 2).reshape(b, n, d), f"blocks.{i}.attn.proj")
        u = linear(ln(t, f"blocks.{i}.norm2"), f"blocks.{i}.mlp.fc1")
        u = u * (F.gelu(u) / u).detach()  # identity rule
        t = t + linear(u, f"blocks.{i}.mlp.fc2")
    logits = linear(ln(t, "norm")[:, 0], "head").gather(1, target[:, None])[:, 0]
    logits.sum().backward()
    relevance = (pixels * pixels.grad).sum(1)
    per_patch = relevance.reshape(b, 4, p, -1, p).sum(dim=(2, 4))
    bias_like = [g for name, g in P.items()
                 if name.endswith(".bias") or name in ("cls_token", "reg_token", "pos_embed")]
    absorbed_by_biases = sum((g * g.grad).sum().item() for g in bias_like if g.grad is not None)
    # Taylor remainder of softmax at s: beta = A - J s = A * (1 - s + sum_i A_i s_i)
    absorbed_by_softmax = sum((a.grad * a * (1 - s + (a * s).sum(-1, keepdim=True))).sum().item()
                              for s, a in softmaxes)
    return per_patch.detach(), logits.detach(), float(absorbed_by_biases), float(absorbed_by_softmax)


@pytest.mark.parametrize("rule", ["attnlrp", "cp"])
def test_attnlrp_equals_the_rules_written_out_and_conserves_relevance(rule):
    model, x = trained_like(depth=2, reg_tokens=1), images(2)
    target = torch.tensor([1, 0])
    per_patch, logits, biases, softmax = attnlrp_reference(model, x, target, cp=rule == "cp")
    # conservation: the logit = pixels + biases + softmax remainders (the paper's bias terms)
    total = per_patch.sum() + biases + softmax
    torch.testing.assert_close(total, logits.sum(), atol=1e-4, rtol=1e-4)
    assert (rule == "cp") == (softmax == 0.0)
    out = saliency(model, x, "attnlrp", target=target, rule=rule)
    torch.testing.assert_close(out, per_patch, atol=1e-5, rtol=1e-4)
    # plain gradient x input (no rules) is a different map
    plain = x.clone().requires_grad_(True)
    model(plain).gather(1, target[:, None]).sum().backward()
    gxi = (plain * plain.grad).sum(1).reshape(2, 4, 8, 4, 8).sum(dim=(2, 4))
    assert (gxi - out).abs().max() > 1e-3


def bias_free(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias") or name in ("cls_token", "pos_embed"):
                p.zero_()
    return model


def test_cp_lrp_on_a_bias_free_model_conserves_the_logit_exactly():
    model, x = bias_free(trained_like(depth=3)), images(3)
    logits = model(x)
    target = logits.argmax(-1)
    relevance = saliency(model, x, "attnlrp", target=target, rule="cp")
    torch.testing.assert_close(relevance.sum(dim=(1, 2)), logits.gather(1, target[:, None])[:, 0],
                               atol=1e-5, rtol=1e-4)


def torchvision_copy(model):
    """torchvision's VisionTransformer holding our model's weights (same function)."""
    from torchvision.models.vision_transformer import VisionTransformer as TVViT

    cfg = model.config
    tv = TVViT(image_size=cfg.img_size, patch_size=cfg.patch_size, num_layers=cfg.depth,
               num_heads=cfg.num_heads, hidden_dim=cfg.embed_dim,
               mlp_dim=int(cfg.embed_dim * cfg.mlp_ratio), num_classes=cfg.num_classes)
    ours = model.state_dict()
    state = {"conv_proj.weight": ours["patch_embed.proj.weight"],
             "conv_proj.bias": ours["patch_embed.proj.bias"], "class_token": ours["cls_token"],
             "encoder.pos_embedding": ours["pos_embed"], "encoder.ln.weight": ours["norm.weight"],
             "encoder.ln.bias": ours["norm.bias"], "heads.head.weight": ours["head.weight"],
             "heads.head.bias": ours["head.bias"]}
    names = {"ln_1": "norm1", "self_attention.in_proj": "attn.qkv",
             "self_attention.out_proj": "attn.proj", "ln_2": "norm2", "mlp.0": "mlp.fc1",
             "mlp.3": "mlp.fc2"}
    for i in range(cfg.depth):
        for theirs, mine in names.items():
            for kind in ("weight", "bias"):
                state[f"encoder.layers.encoder_layer_{i}.{theirs}_{kind}"
                      if theirs == "self_attention.in_proj"
                      else f"encoder.layers.encoder_layer_{i}.{theirs}.{kind}"] = \
                    ours[f"blocks.{i}.{mine}.{kind}"]
    tv.load_state_dict(state, strict=True)
    return tv.eval()


def skip_without_lxt(e: Exception):
    pytest.skip(f"lxt is not usable here ({type(e).__name__}: {e}); "
                "pip install -e '.[explain]' installs it")


@contextmanager
def patched_by_lxt(target, patch_map, classes, module_attributes=()):
    """lxt's ``monkey_patch(target, patch_map)``, undone afterwards: lxt patches whole classes
    (and attributes of ``target``) for the process, our model included, so nothing of ours may
    run inside."""
    from lxt.efficient import monkey_patch

    saved = {cls: cls.__dict__["forward"] for cls in classes}
    saved_attributes = {name: getattr(target, name) for name in module_attributes}
    monkey_patch(target, patch_map)
    try:
        yield
    finally:
        for cls, forward in saved.items():
            cls.forward = forward
            if "original_forward" in cls.__dict__:
                del cls.original_forward
        for name, value in saved_attributes.items():
            setattr(target, name, value)


def lxt_patches_for_torchvision():
    """lxt's CP-LRP patches for torchvision's ViT (nn.LayerNorm, nn.GELU, nn.MultiheadAttention)."""
    try:
        from lxt.efficient.models.vit_torch import cp_LRP
        from torchvision.models import vision_transformer
    except Exception as e:  # lxt missing, or broken by its transformers version
        skip_without_lxt(e)
    return patched_by_lxt(vision_transformer, cp_LRP,
                          [torch.nn.LayerNorm, torch.nn.GELU, torch.nn.MultiheadAttention])


@pytest.mark.slow
def test_attnlrp_cp_rule_equals_lxt_on_torchvision_vit():
    model, x = trained_like(depth=2), images(2)
    target = torch.tensor([2, 1])
    ours = saliency(model, x, "attnlrp", target=target, rule="cp")  # before lxt patches torch
    tv = torchvision_copy(model)
    torch.testing.assert_close(tv(x), model(x), atol=1e-5, rtol=1e-5)  # the same function
    with lxt_patches_for_torchvision():
        pixels = x.clone().requires_grad_(True)
        tv(pixels).gather(1, target[:, None]).sum().backward()
    theirs = (pixels * pixels.grad).sum(1).reshape(2, 4, 8, 4, 8).sum(dim=(2, 4))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    assert torch.nn.GELU.forward is not None and "original_forward" not in vars(torch.nn.GELU)


def hf_vit_copy(model):
    """Hugging Face's ViTForImageClassification holding our model's weights (same function),
    with eager attention: lxt's AttnLRP patches hook into transformers' attention functions."""
    from transformers import ViTConfig, ViTForImageClassification

    cfg = model.config
    hf = ViTForImageClassification(ViTConfig(
        image_size=cfg.img_size, patch_size=cfg.patch_size, num_channels=3,
        hidden_size=cfg.embed_dim, num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
        intermediate_size=int(cfg.embed_dim * cfg.mlp_ratio), hidden_act="gelu",
        layer_norm_eps=1e-6, qkv_bias=True, num_labels=cfg.num_classes,
        attn_implementation="eager"))
    ours = model.state_dict()
    d = cfg.embed_dim
    state = {"vit.embeddings.cls_token": ours["cls_token"],
             "vit.embeddings.position_embeddings": ours["pos_embed"],
             "vit.embeddings.patch_embeddings.projection.weight": ours["patch_embed.proj.weight"],
             "vit.embeddings.patch_embeddings.projection.bias": ours["patch_embed.proj.bias"],
             "vit.layernorm.weight": ours["norm.weight"], "vit.layernorm.bias": ours["norm.bias"],
             "classifier.weight": ours["head.weight"], "classifier.bias": ours["head.bias"]}
    names = {"layernorm_before": "norm1", "attention.output.dense": "attn.proj",
             "layernorm_after": "norm2", "intermediate.dense": "mlp.fc1",
             "output.dense": "mlp.fc2"}
    for i in range(cfg.depth):
        theirs, mine = f"vit.encoder.layer.{i}", f"blocks.{i}"
        for kind in ("weight", "bias"):
            for their_name, my_name in names.items():
                state[f"{theirs}.{their_name}.{kind}"] = ours[f"{mine}.{my_name}.{kind}"]
            qkv = ours[f"{mine}.attn.qkv.{kind}"]  # (3 D, ...): q, k, v stacked
            for j, part in enumerate(("query", "key", "value")):
                state[f"{theirs}.attention.attention.{part}.{kind}"] = qkv[j * d:(j + 1) * d]
    hf.load_state_dict(state, strict=True)
    return hf.eval()


def lxt_attnlrp_patches_for_hf_vit():
    """lxt's AttnLRP (not CP) for transformers' ViT, built from lxt's own patches as its
    model maps do for BERT and Llama: the uniform rule on the attention's products
    (``patch_attention``), identity rules on LayerNorm and GELU."""
    from functools import partial

    try:
        from lxt.efficient.patches import (
            layer_norm_forward,
            non_linear_forward,
            patch_attention,
            patch_method,
        )
        from transformers.activations import GELUActivation
        from transformers.models.vit import modeling_vit
    except Exception as e:  # lxt or transformers missing, or not matching
        skip_without_lxt(e)
    rules = {modeling_vit: patch_attention,
             torch.nn.LayerNorm: partial(patch_method, layer_norm_forward),
             GELUActivation: partial(patch_method, non_linear_forward, keep_original=True)}
    return patched_by_lxt(modeling_vit, rules, [torch.nn.LayerNorm, GELUActivation],
                          ("eager_attention_forward", "ALL_ATTENTION_FUNCTIONS"))


@pytest.mark.slow
def test_attnlrp_equals_lxt_attnlrp_on_hugging_face_vit():
    """Our AttnLRP (the paper's rules in the attention, not CP) = lxt's AttnLRP patches on
    transformers' ViT holding the same weights; lxt has no AttnLRP for torchvision's ViT."""
    pytest.importorskip("transformers", reason="pip install -e '.[explain]'")
    model, x = trained_like(depth=2), images(2)
    target = torch.tensor([2, 1])
    ours = saliency(model, x, "attnlrp", target=target)  # before lxt patches torch's LayerNorm
    cp = saliency(model, x, "attnlrp", target=target, rule="cp")
    hf = hf_vit_copy(model)
    torch.testing.assert_close(hf(pixel_values=x).logits, model(x), atol=1e-5, rtol=1e-5)
    with lxt_attnlrp_patches_for_hf_vit():
        pixels = x.clone().requires_grad_(True)
        hf(pixel_values=pixels).logits.gather(1, target[:, None]).sum().backward()
    theirs = (pixels * pixels.grad).sum(1).reshape(2, 4, 8, 4, 8).sum(dim=(2, 4))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    assert (cp - theirs).abs().max() > 1e-3  # the attention rule matters: CP-LRP differs
    assert "original_forward" not in vars(torch.nn.LayerNorm)


# --- Grad-CAM: the formula and the grad-cam package ------------------------------------------


def test_gradcam_is_selvaraju_formula_on_the_last_norm1():
    model, x = trained_like(depth=3, reg_tokens=2), images(2, 32, 48)
    target, prefix = torch.tensor([2, 0]), 3
    seen = []
    hook = model.blocks[-1].norm1.register_forward_hook(lambda m, a, out: seen.append(out))
    logits = model(x)
    hook.remove()
    (grad,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), seen[0])
    act, grad = seen[0].detach()[:, prefix:], grad[:, prefix:]
    alpha = grad.mean(dim=1, keepdim=True)  # (B, 1, D): global-average-pooled gradients
    expected = torch.relu((alpha * act).sum(-1)).reshape(2, 4, 6)
    torch.testing.assert_close(saliency(model, x, "gradcam", target=target), expected)


@pytest.mark.parametrize("reg_tokens", [0, 2])
def test_gradcam_equals_the_grad_cam_package(reg_tokens):
    pytest.importorskip("pytorch_grad_cam", reason="pip install grad-cam (in the dev extra)")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, x = trained_like(depth=3, reg_tokens=reg_tokens), images(3, 32, 48)
    target = [2, 0, 1]

    def reshape_transform(tensor):  # its ViT example, with our prefix and a 4x6 grid
        result = tensor[:, 1 + reg_tokens:, :].reshape(tensor.size(0), 4, 6, tensor.size(2))
        return result.transpose(2, 3).transpose(1, 2)

    with GradCAM(model=model, target_layers=[model.blocks[-1].norm1],
                 reshape_transform=reshape_transform) as cam:
        theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in target])
    ours = saliency(model, x, "gradcam", target=torch.tensor(target)).numpy()
    assert ours.max() > 0
    # their post-processing (min-max per image, resize to the input, again min-max) on our map
    ours_scaled = scale_cam_image(scale_cam_image(ours, (48, 32)))
    np.testing.assert_allclose(ours_scaled, theirs, atol=1e-4)
