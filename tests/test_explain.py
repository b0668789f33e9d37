"""Explainers: hand-computed rollouts, batching, registers, gradient pairing, model state,
overlays and deletion/insertion faithfulness."""

import math

import matplotlib
import numpy as np
import pytest
import torch
from helpers.models import TINY_VIT, tiny_vit
from helpers.rollout_reference import (
    full_rollout,
    grad_rollout_from_attentions,
    rollout_from_attentions,
)
from PIL import Image
from torch import nn

from vit.errors import VitError
from vit.explain import (
    METHODS,
    attention_rollout,
    deletion_auc,
    explain,
    gradient_rollout,
    insertion_auc,
    overlay,
    random_saliency,
    raw_attention,
)
from vit.explain.overlay import DEFAULT_COLORMAP


def attention(*rows_per_head: list[list[float]]) -> torch.Tensor:
    """Literal per-head N x N matrices -> a (1, heads, N, N) attention tensor."""
    return torch.tensor(rows_per_head, dtype=torch.float32)[None]


def identity_rows(row0: list[float]) -> list[list[float]]:
    """A 5x5 attention whose [CLS] row is ``row0`` and whose patches attend only to themselves."""
    return [row0] + [[float(i == j) for j in range(5)] for i in range(1, 5)]


I5 = [[float(i == j) for j in range(5)] for i in range(5)]
U5 = [[0.2] * 5 for _ in range(5)]
# N = 5 tokens: [CLS] + a 2x2 grid of patches. Layer 1: head 0 identity, head 1 uniform.
# Layer 2: the [CLS] row of head 0 is [.5, .5, 0, 0, 0], of head 1 [.5, 0, 0, 0, .5].
LAYER1 = attention(I5, U5)
LAYER2 = attention(identity_rows([0.5, 0.5, 0, 0, 0]), identity_rows([0.5, 0, 0, 0, 0.5]))


# --- 1. hand-computed rollouts ---------------------------------------------------------------


def test_two_layer_mean_rollout_by_hand():
    # mean F1 = 0.5 I + 0.1 J, so M1 = 0.5 F1 + 0.5 I = 0.75 I + 0.05 J (rows already sum to 1):
    #   M1[0] = [.8, .05, .05, .05, .05], M1[1] = [.05, .8, .05, .05, .05], M1[4] = [.05, .05, .05, .05, .8]
    # mean F2[0] = [.5, .25, 0, 0, .25]  ->  M2[0] = [.75, .125, 0, 0, .125]; M2[i] = e_i
    # R = M2 @ M1, R[0] = .75 M1[0] + .125 M1[1] + .125 M1[4]; on the patches:
    #   p1 = .75*.05 + .125*.8 + .125*.05 = .0375 + .1 + .00625 = .14375
    #   p2 = p3 = .75*.05 + .125*.05 + .125*.05 = .05;  p4 = .14375
    # (The wrong order M1 @ M2 would give .15 on p1 and p4.)
    out = rollout_from_attentions([LAYER1, LAYER2], num_prefix_tokens=1, grid=(2, 2))
    expected = torch.tensor([[[0.14375, 0.05], [0.05, 0.14375]]])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_two_layer_max_rollout_by_hand():
    # max F1 = diag 1, off-diagonal .2; M1 = .5 F1 + .5 I: diag 1, off .1, row sum 1.4
    #   -> normalised diag 5/7, off 1/14
    # max F2[0] = [.5, .5, 0, 0, .5]; M2[0] = [.75, .25, 0, 0, .25] / 1.25 = [.6, .2, 0, 0, .2]
    # R[0] = .6 M1[0] + .2 M1[1] + .2 M1[4]:
    #   p1 = .6/14 + .2*5/7 + .2/14 = 2.8/14 = .2;  p2 = p3 = (.6 + .2 + .2)/14 = 1/14;  p4 = .2
    out = rollout_from_attentions([LAYER1, LAYER2], 1, (2, 2), head_fusion="max")
    expected = torch.tensor([[[0.2, 1 / 14], [1 / 14, 0.2]]])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "fusion, expected",
    [
        # heads' [CLS] rows [.4, .4, .2, 0, 0] and [.4, .2, .4, 0, 0]; M[0] = (.5 F[0] + .5 e_0) / sum
        ("mean", [[0.15, 0.15], [0, 0]]),  # F[0] = [.4, .3, .3, 0, 0]; M[0] = [.7, .15, .15, 0, 0]
        ("max", [[2 / 11, 2 / 11], [0, 0]]),  # F[0] = [.4, .4, .4, 0, 0]; [.7, .2, .2, 0, 0] / 1.1
        ("min", [[1 / 9, 1 / 9], [0, 0]]),  # F[0] = [.4, .2, .2, 0, 0]; [.7, .1, .1, 0, 0] / .9
    ],
)
def test_head_fusion_by_hand(fusion, expected):
    layer = attention(identity_rows([0.4, 0.4, 0.2, 0, 0]), identity_rows([0.4, 0.2, 0.4, 0, 0]))
    out = rollout_from_attentions([layer], 1, (2, 2), head_fusion=fusion)
    torch.testing.assert_close(out, torch.tensor([expected]), atol=1e-6, rtol=0)
    # Normalising columns instead of rows (a known bug) would give M[0, 1] = .1 / 1.1 for "min".


def test_discard_ratio_never_discards_the_diagonal():
    # k = int(5 * .5) = 2. [CLS] row [.05, .5, .25, .15, .05]: the diagonal .05 is a smallest entry
    # but is kept; the two smallest others (.05 at p4, .15 at p3) are zeroed -> [.05, .5, .25, 0, 0]
    # M[0] = [.525, .25, .125, 0, 0] / .9 -> patches [.25/.9, .125/.9, 0, 0] = [5/18, 5/36, 0, 0]
    row = [0.05, 0.5, 0.25, 0.15, 0.05]
    layer = attention(identity_rows(row), identity_rows(row))
    out = rollout_from_attentions([layer], 1, (2, 2), discard_ratio=0.5)
    torch.testing.assert_close(out, torch.tensor([[[5 / 18, 5 / 36], [0, 0]]]), atol=1e-6, rtol=0)
    # Had the diagonal been a candidate: [0, .5, .25, .15, 0] -> M[0] = [.5, .25, .125, .075, 0] / .95
    assert abs(out[0, 0, 0].item() - 0.25 / 0.95) > 1e-3


def test_start_layer_skips_the_first_blocks():
    # Only layer 2: R[0] = M2[0] = [.75, .125, 0, 0, .125]
    out = rollout_from_attentions([LAYER1, LAYER2], 1, (2, 2), start_layer=1)
    torch.testing.assert_close(out, torch.tensor([[[0.125, 0], [0, 0.125]]]), atol=1e-6, rtol=0)


# --- 2. uniform and identity attention -------------------------------------------------------


def test_uniform_attention_gives_a_uniform_map():
    # M = .5 I + .1 J, so M^2 = .25 I + c J with off-diagonal c = (1 - .25) / 5 = .15
    uniform = attention(U5, U5)
    out = rollout_from_attentions([uniform, uniform], 1, (2, 2))
    torch.testing.assert_close(out, torch.full((1, 2, 2), 0.15), atol=1e-6, rtol=0)


def test_identity_attention_keeps_cls_on_itself():
    identity = attention(I5, I5)
    out = rollout_from_attentions([identity] * 3, 1, (2, 2))
    assert torch.equal(out, torch.zeros(1, 2, 2))


@pytest.mark.parametrize(
    "fusion, discard_ratio", [("mean", 0.0), ("mean", 0.3), ("max", 0.0), ("min", 0.6), ("max", 0.9)]
)
def test_cls_row_fast_path_equals_the_full_product(fusion, discard_ratio):
    g = torch.Generator().manual_seed(0)
    # rows that do not sum to 1 as well, so the row normalisation matters on every path
    attentions = [torch.rand(3, 2, 21, 21, generator=g) ** 4 for _ in range(4)]
    out = rollout_from_attentions(attentions, num_prefix_tokens=1, grid=(4, 5),
                                  head_fusion=fusion, discard_ratio=discard_ratio)
    expected = full_rollout(attentions, 1, (4, 5), fusion, discard_ratio)
    torch.testing.assert_close(out.double(), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(head_fusion="median"), "head_fusion"),
        (dict(discard_ratio=1.0), "discard_ratio"),
        (dict(discard_ratio=-0.1), "discard_ratio"),
        (dict(start_layer=2), "start_layer"),
        (dict(start_layer=-1), "start_layer"),
    ],
)
def test_rollout_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rollout_from_attentions([LAYER1, LAYER2], 1, (2, 2), **kwargs)
    with pytest.raises(VitError, match=match):
        attention_rollout(tiny_vit(jitter=0.3), torch.zeros(1, 3, 32, 32), **kwargs)


def test_grid_that_does_not_match_the_tokens_is_an_error():
    with pytest.raises(ValueError, match="prefix tokens"):
        rollout_from_attentions([LAYER1], num_prefix_tokens=1, grid=(3, 3))


# --- 3. batches equal single images ----------------------------------------------------------


@pytest.mark.parametrize("method", ["rollout", "grad-rollout", "attention"])
def test_batch_equals_single_images(method):
    model = tiny_vit(jitter=0.3)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    batched = explain(model, x, method=method)
    singles = torch.cat([explain(model, x[i:i + 1], method=method) for i in range(4)])
    assert batched.shape == (4, 4, 4)
    assert batched.abs().sum() > 0
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=1e-4)


def test_rollout_on_a_real_model_matches_the_definition():
    model = tiny_vit(jitter=0.3, reg_tokens=1)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, attentions = model(x, return_attention=True)
    expected = full_rollout(attentions, 2, (4, 4))
    torch.testing.assert_close(attention_rollout(model, x).double(), expected, atol=1e-6, rtol=0)


# --- 4. register tokens and non-square inputs ------------------------------------------------


def test_registers_are_excluded_and_patches_keep_their_layout():
    # 1 [CLS] + 4 registers + a 4x6 grid (a 32x48 input with patch 8) = 29 tokens.
    # [CLS] row: .8 on the registers (.2 each), .2 on the patches in proportion to j + 1 (j = patch).
    # One layer: M[0] = .5 A[0] + .5 e_0, so patch j gets .5 * .2 * (j + 1) / 300 = (j + 1) / 3000.
    n, prefix = 29, 5
    cls_row = [0.0] + [0.2] * 4 + [0.2 * (j + 1) / 300 for j in range(24)]
    rows = [cls_row] + [[float(i == j) for j in range(n)] for i in range(1, n)]
    out = rollout_from_attentions([attention(rows)], num_prefix_tokens=prefix, grid=(4, 6))
    expected = torch.arange(1, 25, dtype=torch.float32).reshape(1, 4, 6) / 3000
    torch.testing.assert_close(out, expected, atol=1e-7, rtol=0)


@pytest.mark.parametrize("method", ["rollout", "grad-rollout", "attention"])
def test_register_model_on_a_non_square_input(method):
    model = tiny_vit(jitter=0.3, reg_tokens=4)
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(10))
    assert explain(model, x, method=method).shape == (2, 4, 6)


# --- 5. gradient rollout pairs each layer with its own gradient ------------------------------


def chefer_reference(attentions, grads, prefix, grid):
    """Chefer et al.'s loop with full N x N matrices: R <- R + mean_h(relu(grad * A)) @ R."""
    n = attentions[0].shape[-1]
    r = torch.eye(n, dtype=torch.float64)
    for a, g in zip(attentions, grads, strict=True):
        r = r + (g.double() * a.double()).clamp(min=0).mean(1) @ r
    return r[:, 0, prefix:].reshape(-1, *grid)


def test_gradient_rollout_matches_retain_grad_reference_and_not_the_shifted_pairing():
    model = tiny_vit(jitter=0.3, depth=3, reg_tokens=2)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    target = torch.tensor([0, 2, 1])

    # Reference gradients by a second route: retain_grad on each attention, then .backward().
    logits, attentions = model(x, return_attention=True)
    for a in attentions:
        a.retain_grad()
    logits.gather(1, target[:, None]).sum().backward()
    grads = [a.grad for a in attentions]
    attentions = [a.detach() for a in attentions]
    model.zero_grad(set_to_none=True)

    ours = gradient_rollout(model, x, target=target)
    expected = chefer_reference(attentions, grads, 3, (4, 4))
    torch.testing.assert_close(ours.double(), expected, atol=1e-6, rtol=1e-5)
    # The known bug pairs layer l's attention with layer l+1's gradient; that answer differs.
    shifted = chefer_reference(attentions[:-1], grads[1:], 3, (4, 4))
    assert (shifted - expected).abs().max() > 1e-3
    torch.testing.assert_close(
        grad_rollout_from_attentions(attentions, grads, 3, (4, 4)).double(), expected,
        atol=1e-6, rtol=1e-5,
    )


def test_gradient_rollout_targets_and_leaves_no_parameter_gradients():
    model = tiny_vit(jitter=0.3)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    predicted = model(x).argmax(-1)
    torch.testing.assert_close(gradient_rollout(model, x), gradient_rollout(model, x, target=predicted))
    per_image = gradient_rollout(model, x, target=torch.tensor([1, 2]))
    torch.testing.assert_close(per_image[1:], gradient_rollout(model, x[1:], target=2))
    assert not torch.allclose(gradient_rollout(model, x, target=0), gradient_rollout(model, x, target=1))
    assert all(p.grad is None for p in model.parameters())
    assert not x.requires_grad
    with pytest.raises(ValueError, match="target"):
        gradient_rollout(model, x, target=3)
    with torch.inference_mode(), pytest.raises(VitError, match="inference_mode"):
        gradient_rollout(model, x)


def test_gradient_rollout_works_with_frozen_parameters():
    model = tiny_vit(jitter=0.3)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    expected = gradient_rollout(model, x)
    model.requires_grad_(False)
    torch.testing.assert_close(gradient_rollout(model, x), expected)


# --- 6. the model stays fused and keeps its mode ---------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_explainers_keep_the_model_fused_and_in_its_mode(monkeypatch, training):
    model = tiny_vit(jitter=0.3, attn_drop_rate=0.5, drop_path_rate=0.5)
    model.blocks[0].train(not training)  # a mixed state must come back exactly as well
    modes = [m.training for m in model.modules()]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        model(x)  # used in fused mode first

    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    maps = [attention_rollout(model, x) for _ in range(2)]  # eval inside: dropout off
    assert torch.equal(maps[0], maps[1])
    for method in METHODS:
        explain(model, x, method=method)
    assert [m.training for m in model.modules()] == modes

    calls.clear()
    out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3)
    assert len(calls) == TINY_VIT["depth"]  # the next normal forward is fused, one call per block
    model.eval()
    torch.testing.assert_close(attention_rollout(model, x), maps[0])


def test_raw_attention_is_the_fused_cls_row_of_one_layer():
    model = tiny_vit(jitter=0.3)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        _, attentions = model(x, return_attention=True)
    torch.testing.assert_close(raw_attention(model, x, layer=0, head_fusion="max"),
                               attentions[0].amax(1)[:, 0, 1:].reshape(2, 4, 4))
    torch.testing.assert_close(raw_attention(model, x), attentions[-1].mean(1)[:, 0, 1:].reshape(2, 4, 4))
    with pytest.raises(ValueError, match="layer"):
        raw_attention(model, x, layer=2)


@pytest.mark.parametrize("method", ["rollout", "grad-rollout", "attention"])
def test_return_logits_gives_the_same_map_and_the_models_logits(method):
    model = tiny_vit(jitter=0.3)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    maps, logits = explain(model, x, method=method, return_logits=True)
    torch.testing.assert_close(maps, explain(model, x, method=method), rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(logits, model.eval()(x), atol=1e-5, rtol=1e-5)
    assert not logits.requires_grad


def test_explain_rejects_an_unknown_method():
    with pytest.raises(VitError, match=", ".join(METHODS)):
        explain(tiny_vit(jitter=0.3), torch.zeros(1, 3, 32, 32), method="grad-cam")


# --- 7. overlay ------------------------------------------------------------------------------


def jet(value: float) -> np.ndarray:
    return np.rint(np.array(matplotlib.colormaps[DEFAULT_COLORMAP](value)[:3]) * 255)


def test_overlay_shape_alpha_and_colours():
    image = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    saliency = torch.zeros(4, 6)
    saliency[1, 2] = 1.0  # the hottest cell: rows 8-15, columns 16-23
    out = overlay(image, saliency)
    assert out.shape == (32, 48, 3) and out.dtype == np.uint8
    assert np.array_equal(overlay(image, saliency, alpha=0.0), image)
    colours = overlay(image, saliency, alpha=1.0)
    # Bilinear upsampling peaks at the cell's central 2x2 pixels, which normalise to 1.
    assert np.array_equal(colours[11:13, 19:21], np.broadcast_to(jet(1.0), (2, 2, 3)))
    assert np.array_equal(colours[0, 0], jet(0.0))
    # Half-way blend of the image and the colour map, rounded.
    half = overlay(image, saliency, alpha=0.5)
    expected = np.rint(0.5 * image.astype(float) + 0.5 * colours.astype(float))
    assert np.abs(half.astype(float) - expected).max() <= 1


def test_overlay_of_a_signed_map_shows_the_evidence_for_the_class():
    """AttnLRP's maps are signed: zero and negative relevance both get the colour map's bottom,
    the largest positive its top (min-max would paint zero in the middle of the scale)."""
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    saliency = torch.tensor([[-3.0, 0.0], [0.0, 1.0]])
    colours = overlay(image, saliency, alpha=1.0)
    assert np.array_equal(colours[0, 0], jet(0.0))  # the most negative cell
    assert np.array_equal(colours[0, 15], jet(0.0)) and np.array_equal(colours[15, 0], jet(0.0))
    assert np.array_equal(colours[15, 15], jet(1.0))
    # a map without negative cells keeps min-max: its smallest value is the bottom
    shifted = overlay(image, saliency + 3.0, alpha=1.0)
    assert np.array_equal(shifted[0, 0], jet(0.0)) and not np.array_equal(shifted[0, 15], jet(0.0))


def test_overlay_constant_saliency_and_pil_input():
    image = Image.new("RGB", (40, 24), (10, 200, 30))
    out = overlay(image, np.full((3, 5), 0.37), alpha=1.0)
    assert out.shape == (24, 40, 3)
    assert np.array_equal(out, np.broadcast_to(jet(0.0), (24, 40, 3)))  # all zeros, no NaN


@pytest.mark.parametrize(
    "image, saliency, kwargs, match",
    [
        (np.zeros((8, 8, 3), np.uint8), torch.zeros(2, 2), dict(alpha=1.5), "alpha"),
        (np.zeros((8, 8, 3), np.uint8), torch.zeros(1, 2, 2), {}, "2-D"),
        (np.zeros((8, 8, 3), np.float32), torch.zeros(2, 2), {}, "uint8"),
        (np.zeros((8, 8), np.uint8), torch.zeros(2, 2), {}, "uint8"),
        (np.zeros((8, 8, 3), np.uint8), torch.zeros(2, 2), dict(colormap="nope"), "colormap"),
    ],
)
def test_overlay_rejects_bad_input(image, saliency, kwargs, match):
    with pytest.raises(VitError, match=match):
        overlay(image, saliency, **kwargs)


# --- 8. deletion and insertion ---------------------------------------------------------------


class OnePatchModel(nn.Module):
    """Two classes; class 0's logit is 20 * (mean of channel 0 in patch (1, 1) of a 2x2 grid - .5).

    A bright patch (1) gives p0 = sigmoid(10), a deleted one (0) gives sigmoid(-10).
    """

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        patch_mean = x[:, 0, h // 2:, w // 2:].mean(dim=(-2, -1))
        logit = 20 * (patch_mean - 0.5) + self.dummy
        return torch.stack([logit, torch.zeros_like(logit)], dim=1)


HIGH, LOW = 1 / (1 + math.exp(-10)), 1 / (1 + math.exp(10))


def bright_patch_images(batch: int = 2) -> torch.Tensor:
    x = torch.rand(batch, 3, 16, 16, generator=torch.Generator().manual_seed(8)) * 0.4
    x[:, 0, 8:, 8:] = 1.0
    return x


def test_deletion_and_insertion_on_a_model_with_a_known_answer():
    model, x = OnePatchModel(), bright_patch_images()
    right = torch.tensor([[0.1, 0.2], [0.3, 0.9]]).expand(2, 2, 2)  # patch (1, 1) first
    wrong = 1 - right  # patch (1, 1) last
    # 4 patches, one per step, x = 0, .25, .5, .75, 1; trapezoids of width .25:
    # deletion, right order: [H, L, L, L, L] -> .25 * (H + L) / 2 + .75 * L
    # deletion, wrong order: [H, H, H, H, L] -> .75 * H + .25 * (H + L) / 2
    expected = {
        ("del", "right"): 0.125 * (HIGH + LOW) + 0.75 * LOW,
        ("del", "wrong"): 0.75 * HIGH + 0.125 * (HIGH + LOW),
        ("ins", "right"): 0.125 * (LOW + HIGH) + 0.75 * HIGH,  # [L, H, H, H, H]
        ("ins", "wrong"): 0.75 * LOW + 0.125 * (LOW + HIGH),  # [L, L, L, L, H]
    }
    for order, saliency in (("right", right), ("wrong", wrong)):
        for kind, auc in (("del", deletion_auc), ("ins", insertion_auc)):
            out = auc(model, x, saliency, target=0, baseline="zero")
            torch.testing.assert_close(out, torch.full((2,), expected[kind, order]), atol=1e-6, rtol=0)
    assert expected["del", "right"] < 0.13 and expected["ins", "right"] > 0.87


def test_fewer_steps_and_small_batches_give_the_same_curve_points():
    model, x = OnePatchModel(), bright_patch_images(3)
    saliency = torch.tensor([[0.1, 0.2], [0.3, 0.9]]).expand(3, 2, 2)
    # steps=2: x = 0, .5, 1 with [H, L, L] -> .5 * (H + L) / 2 + .5 * L
    out = deletion_auc(model, x, saliency, target=0, steps=2, baseline="zero", batch_size=1)
    torch.testing.assert_close(out, torch.full((3,), 0.25 * (HIGH + LOW) + 0.5 * LOW), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        insertion_auc(model, x, saliency, target=0, baseline="zero", batch_size=2),
        insertion_auc(model, x, saliency, target=0, baseline="zero", batch_size=64),
    )


class ConstantModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor([0.0, math.log(3.0)]))  # softmax = [.25, .75]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], 2)


@pytest.mark.parametrize("baseline", ["blur", "mean", "zero"])
def test_constant_curve_has_that_constant_as_area(baseline):
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(11))
    saliency = random_saliency(2, (4, 4), torch.Generator().manual_seed(0))
    for auc in (deletion_auc, insertion_auc):
        out = auc(ConstantModel(), x, saliency, baseline=baseline)  # target = predicted class 1
        torch.testing.assert_close(out, torch.full((2,), 0.75))


@pytest.mark.parametrize("baseline", ["blur", "mean"])
def test_blur_and_mean_baselines_leave_a_constant_image_unchanged(baseline):
    x = torch.zeros(1, 3, 16, 16)
    x[:, 0] = 1.0  # channel 0 constant 1: every baseline except "zero" keeps the patch bright
    saliency = torch.tensor([[[0.1, 0.2], [0.3, 0.9]]])
    torch.testing.assert_close(deletion_auc(OnePatchModel(), x, saliency, baseline=baseline),
                               torch.tensor([HIGH]))


def test_random_saliency_is_reproducible():
    a = random_saliency(3, (4, 6), torch.Generator().manual_seed(0))
    b = random_saliency(3, (4, 6), torch.Generator().manual_seed(0))
    assert a.shape == (3, 4, 6) and torch.equal(a, b)


@pytest.mark.parametrize(
    "saliency, kwargs, match",
    [
        (torch.zeros(2, 3, 3), {}, "tile"),
        (torch.zeros(1, 2, 2), {}, "B = 2"),
        (torch.zeros(2, 2, 2), dict(steps=5), "steps"),
        (torch.zeros(2, 2, 2), dict(baseline="noise"), "baseline"),
    ],
)
def test_faithfulness_rejects_bad_arguments(saliency, kwargs, match):
    with pytest.raises(VitError, match=match):
        deletion_auc(OnePatchModel(), bright_patch_images(), saliency, **kwargs)


def test_faithfulness_runs_on_real_model_maps():
    """Smoke test on a real tiny ViT: the curves run end to end on both explainers' maps."""
    model = tiny_vit(jitter=0.3)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    for saliency in (attention_rollout(model, x), gradient_rollout(model, x)):
        out = deletion_auc(model, x, saliency, baseline="blur")
        assert out.shape == (2,) and torch.all((out >= 0) & (out <= 1))


@pytest.mark.parametrize("method", [attention_rollout, gradient_rollout], ids=["rollout", "gradient"])
def test_an_outer_bf16_autocast_does_not_change_the_maps(method):
    """bf16 rounding multiplied over the layers made gradient rollout 68% off on a GPU: the
    methods compute in full precision whatever autocast surrounds the call."""
    model = tiny_vit(3, jitter=0.3)
    with torch.no_grad():
        model.head.weight.normal_(0.0, 0.5)  # a zero head gives all-zero gradient maps
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    plain = method(model, images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = method(model, images)
    assert plain.abs().sum() > 0 and inside.dtype == torch.float32
    assert torch.equal(plain, inside)
