"""The explanations on timm's ViT families as they are, each against an independent reference.

Every family is built tiny (2 blocks, width 32, 32 px images, 8 px patches) with random weights
moved off timm's init. References, all computed through timm's own non-fused attention
(``fused_attn=False``), not through the explainers' path (which keeps the model fused and sees
its attention in ``scaled_dot_product_attention``):

- rollout and attention: the attention probabilities by timm's ``AttentionExtract`` (fx), full
  N x N products in float64, started from the pooled feature's row written out here;
- gradient rollout and LeGrad: autograd of the logit through the whole non-fused graph, the
  attention probabilities caught by hooks on timm's ``attn_drop`` modules;
- AttnLRP: with every bias, position embedding and prefix token zeroed, CP-LRP conserves the
  logit exactly (rules of LayerNorm, GELU/QuickGELU/SwiGLU, LayerScale, the attention pool), and
  AttnLRP's own rule within the stated tolerance;
- Grad-CAM: the grad-cam package with a reshape transform.
"""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest
import torch

timm = pytest.importorskip("timm")

from helpers.stats import relative_error  # noqa: E402

from vit.errors import ConfigError  # noqa: E402
from vit.explain import METHODS, saliency  # noqa: E402
from vit.explain.adapters import adapter_for  # noqa: E402

CASES = {
    "vit": "vit_tiny_patch16_224",
    "deit-distilled": "deit_tiny_distilled_patch16_224",
    "deit3-layerscale": "deit3_small_patch16_224",
    "clip-quickgelu": "vit_base_patch16_clip_quickgelu_224",
    "siglip-map": "vit_base_patch16_siglip_224",
    "gap-registers": "vit_base_patch16_reg4_gap_256",
    "dinov2-registers": "vit_small_patch14_reg4_dinov2",
    "eva02-rope-swiglu": "eva02_tiny_patch14_224",
    "dinov3": "vit_small_patch16_dinov3",
    "rope-mixed": "vit_base_patch16_rope_mixed_224",
    "beit-relpos-bias": "beit_base_patch16_224",
    "vit-relpos": "vit_relpos_small_patch16_224",
    "naflex-map": "naflexvit_base_patch16_map",
}
GRID = (4, 4)


def tiny(case: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """The family of ``case``, 2 blocks wide 32, on 32 px images with 8 px patches, its
    weights moved off timm's init (a zero head would give zero gradients)."""
    torch.manual_seed(seed)
    args = dict(depth=2, img_size=32, patch_size=8, embed_dim=32, num_heads=2, num_classes=3)
    model = timm.create_model(CASES[case], pretrained=False, **{**args, **overrides}).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.2)
    return model


def images(batch: int = 2, height: int = 32, width: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def non_fused(model):
    copied = copy.deepcopy(model)
    for module in copied.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    return copied


def extracted(model, x):
    """timm's AttentionExtract on the non-fused model: {node name: probabilities}."""
    from timm.utils import AttentionExtract

    with torch.no_grad():
        return AttentionExtract(non_fused(model), names=["*softmax"], method="fx")(x)


def pooled_row(model, x, found) -> torch.Tensor:
    """(B, N) weights of the last tokens in the pooled feature, written out from timm's own
    attributes: [CLS]; [CLS] and [DIST] by half; the patch mean; the attention pool's weights."""
    n, prefix = found["blocks.0.attn.softmax"].shape[-1], model.num_prefix_tokens
    row = torch.zeros(x.shape[0], n, dtype=torch.float64)
    if "attn_pool.softmax" in found:
        weights = found["attn_pool.softmax"].double().mean(dim=(1, 2))
        row[:, n - weights.shape[1]:] = weights
    elif getattr(model, "dist_token", None) is not None:
        row[:, :2] = 0.5
    elif model.global_pool == "token":
        row[:, 0] = 1.0
    else:
        assert model.global_pool == "avg"
        row[:, prefix:] = 1.0 / (n - prefix)
    return row


def reference_rollout(model, x, found) -> torch.Tensor:
    row = pooled_row(model, x, found)
    n = row.shape[1]
    eye = torch.eye(n, dtype=torch.float64)
    product = eye
    for layer in range(len(model.blocks)):
        m = 0.5 * found[f"blocks.{layer}.attn.softmax"].double().mean(dim=1) + 0.5 * eye
        product = (m / m.sum(-1, keepdim=True)) @ product  # M_l ... M_1
    return (row[:, None] @ product)[:, 0, model.num_prefix_tokens:].reshape(-1, *GRID)


def reference_attention(model, x, found) -> torch.Tensor:
    last = found[f"blocks.{len(model.blocks) - 1}.attn.softmax"].double().mean(dim=1)
    out = (pooled_row(model, x, found)[:, None] @ last)[:, 0]
    return out[:, model.num_prefix_tokens:].reshape(-1, *GRID)


def graph_attentions(model, x):
    """The non-fused model's logits and each block's attention probabilities in the graph,
    caught on timm's attn_drop module (identity in eval mode), and each block's output."""
    model, attentions, outputs = non_fused(model), [], []
    handles = [block.attn.attn_drop.register_forward_hook(
        lambda _m, _a, out: attentions.append(out)) for block in model.blocks]
    handles += [block.register_forward_hook(lambda _m, _a, out: outputs.append(out))
                for block in model.blocks]
    logits = model(x)
    for handle in handles:
        handle.remove()
    return model, logits, attentions, outputs


def reference_grad_rollout(model, x, target, found) -> torch.Tensor:
    row = pooled_row(model, x, found)
    _, logits, attentions, _ = graph_attentions(model, x)
    grads = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), attentions)
    n = row.shape[1]
    product = torch.eye(n, dtype=torch.float64)
    for a, g in zip(attentions, grads, strict=True):
        product = product + (g * a).clamp(min=0).mean(dim=1).double() @ product
    return (row[:, None] @ product)[:, 0, model.num_prefix_tokens:].reshape(-1, *GRID)


def reference_legrad(model, x, target) -> torch.Tensor:
    """Per layer: the target score read off that layer's tokens (each replaced by their mean,
    through the final norm and head), its gradient w.r.t. that layer's attention on the whole
    graph, relu, mean over heads and rows; averaged over layers."""
    copied, _, attentions, outputs = graph_attentions(model, x)
    per_layer = []
    for a, out in zip(attentions, outputs, strict=True):
        mean = out.mean(dim=1, keepdim=True).expand_as(out)
        score = copied.forward_head(copied.norm(mean)).gather(1, target[:, None]).sum()
        (grad,) = torch.autograd.grad(score, a, retain_graph=True)
        per_layer.append(grad.clamp(min=0).mean(dim=(1, 2)))
    out = torch.stack(per_layer).mean(dim=0)[:, model.num_prefix_tokens:]
    return out.reshape(-1, *GRID)


def bias_free(model):
    """Every bias (relative-position tables too), position embedding and prefix token zeroed."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bias" in name or name.endswith(("pos_embed", "cls_token", "reg_token",
                                                "dist_token")):
                p.zero_()
    return model


# --- the references ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_each_method_is_its_definition_on_timm_own_non_fused_attention(case):
    """Rollout and attention: products of timm's attention probabilities; grad-rollout and
    LeGrad: autograd through timm's non-fused forward."""
    model, x, target = tiny(case), images(), torch.tensor([2, 0])
    found = extracted(model, x)
    torch.testing.assert_close(saliency(model, x, "rollout").double(),
                               reference_rollout(model, x, found), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(saliency(model, x, "attention").double(),
                               reference_attention(model, x, found), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(saliency(model, x, "grad-rollout", target=target).double(),
                               reference_grad_rollout(model, x, target, found),
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(saliency(model, x, "legrad", target=target),
                               reference_legrad(model, x, target), atol=1e-6, rtol=1e-4)


def explicit_attnlrp(softmaxes):
    """AttnLRP's attention written out op by op (uniform rule on both products, unless a
    factor does not depend on the input; the softmax's own gradient), keeping each softmax's
    scores and probabilities so that the relevance it absorbs can be added up afterwards."""

    def uniform(a, b):  # a @ b with the relevance split evenly between a and b
        if not (a.requires_grad and b.requires_grad):
            return a @ b
        return 0.5 * (a @ b.detach()) + 0.5 * (a.detach() @ b)

    def attend(call):
        s = uniform(call.q * call.scale, call.k.transpose(-2, -1))
        s = s if call.bias is None else s + call.bias
        a = s.softmax(dim=-1)
        a.retain_grad()
        s.retain_grad()
        softmaxes.append((s, a, call.bias))
        return uniform(a, call.v)

    return attend


@pytest.mark.parametrize("case", CASES)
def test_attnlrp_conserves_the_logit(case, monkeypatch):
    model, x = bias_free(tiny(case)), images()
    logits = model(x)
    target = logits.argmax(dim=-1)
    logit = logits.gather(1, target[:, None])[:, 0].detach()
    cp = saliency(model, x, "attnlrp", target=target, rule="cp").sum(dim=(1, 2))
    torch.testing.assert_close(cp, logit, atol=1e-4, rtol=1e-4)  # exact: every rule linearises
    fused = saliency(model, x, "attnlrp", target=target)
    softmaxes = []
    monkeypatch.setattr("vit.explain.lrp._attnlrp_attend", explicit_attnlrp(softmaxes))
    written_out = saliency(model, x, "attnlrp", target=target)
    torch.testing.assert_close(fused, written_out, atol=1e-5, rtol=1e-4)
    # the paper's bias term of each softmax: A - J s = A (1 - s + sum_j A_j s_j), times A's
    # grad; and what a relative-position bias computed from coordinates (an MLP) takes of s
    absorbed = sum((a.grad * a * (1 - s + (a * s).sum(-1, keepdim=True))).sum(dim=(1, 2, 3))
                   + (0 if bias is None else (s.grad * bias).sum(dim=(1, 2, 3)))
                   for s, a, bias in softmaxes if a.grad is not None)
    torch.testing.assert_close(written_out.sum(dim=(1, 2)) + absorbed.detach(), logit,
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", CASES)
def test_gradcam_equals_the_grad_cam_package(case):
    pytest.importorskip("pytorch_grad_cam", reason="pip install grad-cam (in the dev extra)")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, x, target = tiny(case), images(2, 32, 32), [2, 0]
    prefix = model.num_prefix_tokens

    def reshape_transform(tensor):  # pytorch-grad-cam's ViT example, with this model's prefix
        result = tensor[:, prefix:, :].reshape(tensor.size(0), *GRID, tensor.size(2))
        return result.permute(0, 3, 1, 2)

    with GradCAM(model=model, target_layers=[model.blocks[-1].norm1],
                 reshape_transform=reshape_transform) as cam:
        theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in target])
    ours = saliency(model, x, "gradcam", target=torch.tensor(target)).numpy()
    assert ours.max() > 0
    np.testing.assert_allclose(scale_cam_image(scale_cam_image(ours, (32, 32))), theirs,
                               atol=1e-4)


# --- the model as it is --------------------------------------------------------------------


def snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [(m, dict(m.__dict__.get("_forward_hooks", {})),
              dict(m.__dict__.get("_forward_pre_hooks", {})), getattr(m, "fused_attn", None),
              m.training, set(m.__dict__)) for m in model.modules()])


@pytest.mark.parametrize("case", CASES)
def test_every_method_leaves_the_model_as_it_was_and_is_batched(case):
    model, x = tiny(case), images(2)
    for module in model.modules():  # the user's flags, which the explainers turn on meanwhile
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    model.train()
    model.blocks[0].eval()  # a mixed state must come back exactly as well
    model.head.weight.grad = torch.ones_like(model.head.weight)
    state, modules = snapshot(model)
    for method in METHODS:
        batched = saliency(model, x, method)
        singles = torch.cat([saliency(model, x[i:i + 1], method) for i in range(2)])
        assert batched.shape == (2, *GRID) and torch.isfinite(batched).all()
        assert batched.abs().sum() > 0, method
        torch.testing.assert_close(batched, singles, atol=1e-5, rtol=1e-4)
    after_state, after_modules = snapshot(model)
    assert all(torch.equal(state[k], after_state[k]) for k in state)
    assert after_modules == modules
    assert torch.equal(model.head.weight.grad, torch.ones_like(model.head.weight))
    assert all(p.grad is None for name, p in model.named_parameters() if name != "head.weight")


@pytest.mark.parametrize("case", ["vit", "eva02-rope-swiglu", "siglip-map"])
def test_the_same_maps_in_train_and_eval_mode(case):
    model, x = tiny(case, drop_path_rate=0.5, attn_drop_rate=0.5), images()
    evaluated = {m: saliency(model, x, m) for m in METHODS}
    model.train()
    for method in METHODS:
        torch.testing.assert_close(saliency(model, x, method), evaluated[method])


AUTOCAST_CASES = ["eva02-rope-swiglu", "dinov2-registers"]  # RoPE + SwiGLU; registers + LayerScale


def maps_under_autocast(case: str, device: str, dtype: torch.dtype | None) -> dict:
    """Every method's maps of the tiny ``case`` on ``device``, inside ``dtype`` autocast (None:
    none), for fixed classes (a near tie cannot flip the explained class)."""
    model, x = tiny(case).to(device), images(4).to(device)
    target = (torch.arange(4) % 3).to(device)
    with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
        return {m: saliency(model, x, m, target=target) for m in METHODS}


@pytest.mark.parametrize("case", AUTOCAST_CASES)
def test_an_outer_bf16_autocast_leaves_the_maps_as_in_fp32(case):
    """The methods run in full precision whatever autocast surrounds them (CPU autocast here;
    tests/test_gpu.py and the GPU test below do it on CUDA)."""
    plain, autocast = (maps_under_autocast(case, "cpu", d) for d in (None, torch.bfloat16))
    for method in METHODS:
        assert autocast[method].dtype == torch.float32 and plain[method].std() > 0, method
        assert relative_error(autocast[method], plain[method]) < 1e-5, method


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", AUTOCAST_CASES)
def test_timm_family_maps_on_the_gpu_under_bf16_match_the_cpu(case):
    on_cpu = maps_under_autocast(case, "cpu", None)
    on_gpu = maps_under_autocast(case, "cuda", torch.bfloat16)
    for method in METHODS:
        assert on_gpu[method].device.type == "cuda" and on_gpu[method].dtype == torch.float32
        assert relative_error(on_gpu[method], on_cpu[method]) < 1e-3, method


@pytest.mark.parametrize("case", ["vit", "dinov2-registers", "eva02-rope-swiglu", "naflex-map"])
def test_non_square_inputs_where_the_family_allows_them(case):
    extra = {} if case == "naflex-map" else {"dynamic_img_size": True}
    model, x = tiny(case, **extra), images(2, 32, 48)
    with torch.no_grad():
        assert model(x).shape == (2, 3)  # the family itself takes the 4 x 6 grid
    for method in METHODS:
        out = saliency(model, x, method)
        assert out.shape == (2, 4, 6) and torch.isfinite(out).all()


def test_a_fixed_size_model_names_its_size():
    with pytest.raises(ConfigError, match="takes 32x32 images, got 32x48.*dynamic_img_size"):
        saliency(tiny("beit-relpos-bias"), images(1, 32, 48), "rollout")


@pytest.mark.parametrize("name", ["swin_tiny_patch4_window7_224", "resnet18",
                                  "samvit_base_patch16"])
def test_unsupported_models_get_one_line_naming_what_is_supported(name):
    model = timm.create_model(name, pretrained=False, num_classes=3).eval() \
        if name != "samvit_base_patch16" else timm.create_model(name, pretrained=False, depth=2,
                                                                img_size=64, num_classes=3)
    with pytest.raises(ConfigError) as err:
        saliency(model, images(1, 64, 64), "rollout")
    message = str(err.value)
    assert "\n" not in message and "Eva (EVA-02" in message and type(model).__name__ in message


def test_each_case_is_the_family_it_claims():
    families = {case: adapter_for(tiny(case)).family for case in CASES}
    assert families["eva02-rope-swiglu"] == families["dinov3"] == "Eva"
    assert {type(tiny(c)).__name__ for c in CASES} == {
        "VisionTransformer", "VisionTransformerDistilled", "Eva", "Beit",
        "VisionTransformerRelPos", "NaFlexVit"}


# --- dropping tokens (token deletion / insertion) -----------------------------------------------


class FixedKeep(torch.nn.Module):
    """timm's patch-dropout slot, keeping the given patches (B, K) instead of random ones."""

    def __init__(self, keep, prefix, with_indices):
        super().__init__()
        self.keep, self.prefix, self.with_indices = keep, prefix, with_indices

    def forward(self, x):
        patches = x[:, self.prefix:]
        kept = patches.gather(1, self.keep[..., None].expand(-1, -1, x.shape[-1]))
        out = torch.cat([x[:, :self.prefix], kept], dim=1)
        return (out, self.keep) if self.with_indices else out


def dropped_probabilities(model, x, keep, classes):
    from vit.explain.token_drop import _probabilities

    adapter = adapter_for(model)
    with adapter.session(), torch.no_grad():
        trace = adapter.trace(x, output=False)
        return _probabilities(adapter, trace, [keep], classes)[0]


@pytest.mark.parametrize("case", ["vit", "dinov2-registers", "eva02-rope-swiglu", "rope-mixed",
                                  "dinov3"])
def test_dropped_tokens_are_timm_own_patch_dropout(case):
    model, x, classes = tiny(case), images(), torch.tensor([1, 2])
    keep = torch.tensor([[0, 3, 5, 9, 15], [1, 2, 7, 8, 12]])
    ours = dropped_probabilities(model, x, keep, classes)
    reference = copy.deepcopy(model)  # timm's own path: its patch-dropout slot, RoPE gathered
    reference.patch_drop = FixedKeep(keep, model.num_prefix_tokens, case not in (
        "vit", "dinov2-registers"))
    with torch.no_grad():
        expected = reference(x).softmax(-1).gather(1, classes[:, None])[:, 0]
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_keeping_every_token_is_the_model(case):
    model, x, classes = tiny(case), images(), torch.tensor([0, 2])
    everything = torch.arange(16).expand(2, 16)
    with torch.no_grad():
        expected = model(x).softmax(-1).gather(1, classes[:, None])[:, 0]
    torch.testing.assert_close(dropped_probabilities(model, x, everything, classes), expected,
                               atol=1e-6, rtol=1e-5)


def test_a_whole_sequence_bias_keeps_the_rows_and_columns_of_the_kept_tokens():
    from vit.explain.attention_calls import AttentionCall, restricted

    bias = torch.randn(1, 2, 5, 5)  # a relative-position bias over prefix + 4 patches
    kept = torch.tensor([[0, 2, 4], [0, 1, 3]])
    q = torch.zeros(2, 2, 3, 8)
    call = restricted(kept)(AttentionCall(q, q, q, bias, 1.0))
    for b in range(2):
        torch.testing.assert_close(call.bias[b], bias[0][:, kept[b]][:, :, kept[b]])


@pytest.mark.parametrize("case, top", [
    ("deit-distilled", {"head", "head_dist", "norm"}),
    ("siglip-map", {"head", "norm", "attn_pool"}),
    ("eva02-rope-swiglu", {"head", "fc_norm"}),
])
def test_the_randomisation_cascade_starts_with_every_part_of_the_head(case, top):
    from vit.explain.sanity import randomised_cascade

    model = tiny(case)
    original = model.state_dict()
    stages = []
    for _stage, randomised in randomised_cascade(model, seed=0):
        state = randomised.state_dict()
        stages.append({".".join(k.split(".")[:2]) if k.startswith("blocks") else k.split(".")[0]
                       for k in state if not torch.equal(state[k], original[k])})
    assert stages[0] == top
    assert stages[1] - stages[0] == {"blocks.1"} and stages[2] - stages[1] == {"blocks.0"}


def test_a_hybrid_with_a_resnet_stem_conserves_the_logit_through_its_group_norms():
    """timm's ViT on a ResNetV2 stem (GroupNorm, ReLU, max pooling): a patch token is 32 px."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_r_s16_p8_224", pretrained=False, depth=2, img_size=128,
                              embed_dim=32, num_heads=2, num_classes=3).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.2)
    model, x = bias_free(model), images(2, 128, 128)
    logits = model(x)
    target = logits.argmax(dim=-1)
    relevance = saliency(model, x, "attnlrp", target=target, rule="cp")
    assert relevance.shape == (2, *GRID)
    torch.testing.assert_close(relevance.sum(dim=(1, 2)), logits.gather(1, target[:, None])[:, 0],
                               atol=1e-4, rtol=1e-4)


def test_a_model_without_a_head_has_class_free_maps_and_one_line_for_the_rest():
    model, x = tiny("eva02-rope-swiglu", num_classes=0), images()
    assert saliency(model, x, "rollout").shape == (2, *GRID)
    assert saliency(model, x, "attention").shape == (2, *GRID)
    for method in ("grad-rollout", "legrad", "attnlrp", "gradcam"):
        with pytest.raises(ConfigError, match=f"{method} explains a class logit.*num_classes=0"):
            saliency(model, x, method)


def test_a_compiled_model_is_explained_as_the_model_it_wraps():
    model = tiny("vit")
    compiled = torch.compile(model)  # not run: only its wrapper is asked for
    assert adapter_for(compiled).model is model


# --- a checkpoint of a timm model, through the commands ----------------------------------------


@pytest.mark.parametrize("case", ["eva02-rope-swiglu", "siglip-map"])
def test_a_timm_checkpoint_is_explained_by_the_commands(case, shapes_dataset, tmp_path):
    """`vit explain` (every method, the explorer page) and `vit explain-bench` on the
    checkpoint of a timm model, as a fine-tuned run leaves it: no conversion anywhere."""
    from vit.cli import main
    from vit.io import atomic_save
    from vit.models.checkpoint import load_checkpoint, make_checkpoint, model_from_checkpoint
    from vit.models.timm_models import create_timm_model

    classes = sorted(p.name for p in shapes_dataset.iterdir() if p.is_dir())
    model = create_timm_model(CASES[case], num_classes=len(classes), img_size=48, args=dict(
        depth=2, patch_size=8, embed_dim=32, num_heads=2))  # as `--model timm:NAME` builds it
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    ckpt = tmp_path / "best.pt"
    atomic_save(make_checkpoint(
        model=model, classes=classes, config={}, epoch=1, step=1, best_top1=None, metrics={},
        preprocess={"img_size": 48, "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 1.0}), ckpt)
    assert type(model_from_checkpoint(load_checkpoint(ckpt))) is type(model)
    out, page = tmp_path / "maps", tmp_path / "page.html"
    three = sorted((shapes_dataset / classes[0]).glob("*.png"))[:3]
    assert main(["explain", "--checkpoint", str(ckpt), *map(str, three), "--method", "all",
                 "--output", str(out), "--html", str(page), "--auc-steps", "2", "--device", "cpu",
                 "--quiet"]) == 0
    assert len(list(out.glob("*_attnlrp.png"))) == 3 and len(list(out.glob("*_gradcam.png"))) == 3
    data = re.search(r'<script type="application/json" id="vit-data">(.*?)</script>',
                     page.read_text(), re.S).group(1)
    names = {"eva02-rope-swiglu": ["[CLS]"], "siglip-map": []}[case]
    assert json.loads(data)["model"]["prefix_names"] == names  # the page names what it shows
    if case != "eva02-rope-swiglu":
        return
    bench = tmp_path / "bench"  # the randomisation cascade included: a family's whole head
    assert main(["explain-bench", "--checkpoint", str(ckpt), "--data", str(shapes_dataset),
                 "--images", "3", "--steps", "2", "--batch-size", "3", "--output", str(bench),
                 "--device", "cpu", "--quiet"]) == 0
    rows = json.loads((bench / "explain_bench.json").read_text())["rows"]
    assert {r["method"] for r in rows} >= set(METHODS)
    assert all(np.isfinite(v) for r in rows for k, v in r.items() if isinstance(v, float))


@pytest.mark.parametrize("name", ["vit_small_patch16_18x2_224", "vit_dwee_patch16_reg1_gap_256"])
def test_blocks_with_two_attentions_are_refused_by_every_method(name):
    model = timm.create_model(name, pretrained=False, depth=2, img_size=64, embed_dim=64,
                              num_heads=4, num_classes=3).eval()
    for method in METHODS:
        with pytest.raises(ConfigError, match="computes 2 attentions.*exactly one per block"):
            saliency(model, images(1, 64, 64), method)
