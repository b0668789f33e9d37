"""Saliency maps of a ViT's decision: every method behind one batched call.

    saliency(model, images, method="legrad", target=None, **options)    # (B, grid_h, grid_w)
    attention_maps(model, images, layers=None, query=None, heads=None)  # (B, layers, heads, Q, N)

``method`` is one of ``METHODS``; each function below cites its paper:

    rollout        attention rollout (Abnar & Zuidema 2020), from [CLS] or from any query token
    grad-rollout   gradient-weighted rollout (Chefer et al. 2021, ICCV)
    attention      one layer's attention row (default: the last layer's [CLS] row)
    legrad         LeGrad (Bousselham et al. 2024)
    attnlrp        AttnLRP (Achtibat et al. 2024, ICML), layer-wise relevance of the target logit
    gradcam        Grad-CAM (Selvaraju et al. 2017) on the last block's patch tokens

A map covers the patch tokens only (registers and [CLS] left out), on the grid of the input
size, which may differ from the trained size and need not be square. ``target`` (class-specific
methods: ``CLASS_SPECIFIC``) is None for the predicted class, an int, or a (B,) tensor.

The model stays as it is: fused attention (scaled_dot_product_attention) for the forward passes
here as for prediction. What a method needs it takes through the model's public pieces:
``model.embed``, ``block.attn.heads`` (q, k, v of a block) and ``block(x, attend=...)``, which
lets one call see q, k, v and the attention output. Inside, every call runs in eval mode and in
full precision, whatever autocast surrounds it (see ``vit.explain._eval_mode``).

Memory grows linearly with the number of tokens N; no N x N matrix is ever held for all layers:

- Rollout wants the query row of ``M_L ... M_1``. The forward pass keeps each block's input
  (B, N, D); then, last block first, q and k are recomputed from it and the row is multiplied by
  ``softmax(q K^T / sqrt(d))`` in chunks of query rows: ``r @ A = sum_i r_i A[i]`` needs the rows
  one chunk at a time, and going from the last layer to the first makes the product exact.
- Gradient methods recompute the blocks one at a time during the backward pass, last block
  first (activation checkpointing): a block's graph lives only while its gradient is taken.
  The attention's gradient is ``dA = dO V^T`` (O = A V), formed one chunk of rows at a time.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vit.errors import ConfigError
from vit.explain import (
    HEAD_FUSIONS,
    _check_choice,
    _check_images,
    _check_layer_index,
    _check_rollout_args,
    _eval_mode,
    _input_grid,
    _model_device,
    _patch_map,
    _resolve_target,
    fuse_heads,
)

__all__ = [
    "METHODS",
    "CLASS_SPECIFIC",
    "LRP_RULES",
    "LEGRAD_POOLS",
    "saliency",
    "attention_maps",
    "rollout",
    "grad_rollout",
    "attention",
    "legrad",
    "attnlrp",
    "gradcam",
]

CLASS_SPECIFIC = ("grad-rollout", "legrad", "attnlrp", "gradcam")
LRP_RULES = ("attnlrp", "cp")  # in the attention: the paper's rules, or CP-LRP (attention fixed)
LEGRAD_POOLS = ("mean", "model")

Query = int | tuple[int, int] | None
MLP_CHUNK = 256  # tokens per MLP call in the forward passes without a graph


# ---------------------------------------------------------------------------------------------
# Small pieces
# ---------------------------------------------------------------------------------------------


def _check_autograd(method: str) -> None:
    if torch.is_inference_mode_enabled():
        raise ConfigError(f"{method} needs autograd: call it outside torch.inference_mode()")


def _query_token(query: Query, num_prefix_tokens: int, grid: tuple[int, int]) -> int:
    """None -> 0 ([CLS]); an int -> that token; (row, col) -> that patch's token."""
    gh, gw = grid
    n = num_prefix_tokens + gh * gw
    if query is None:
        return 0
    if isinstance(query, tuple) and len(query) == 2:
        row, col = query
        if not (0 <= row < gh and 0 <= col < gw):
            raise ConfigError(f"query patch {query} is outside the {gh}x{gw} grid")
        return num_prefix_tokens + row * gw + col
    if isinstance(query, int) and not isinstance(query, bool):
        if not 0 <= query < n:
            raise ConfigError(f"query token must be in [0, {n - 1}] for {n} tokens; got {query}")
        return query
    raise ConfigError(f"query must be None, a token index or a (row, col) patch; got {query!r}")


def _one_hot_rows(batch: int, n: int, token: int, device: torch.device) -> torch.Tensor:
    row = torch.zeros(batch, n, device=device)
    row[:, token] = 1.0
    return row


def _chunk_rows(model: nn.Module, chunk_size: int | None) -> int:
    """Query rows per chunk: by default a chunk's (B, heads, rows, N) attention holds as many
    numbers as a (B, N, D) token tensor, so it costs one more activation, whatever N."""
    if chunk_size is None:
        return max(1, model.embed_dim // model.blocks[0].attn.num_heads)
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1; got {chunk_size}")
    return chunk_size


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(start + size, n)


def _attention_rows(q: torch.Tensor, k: torch.Tensor, scale: float, start: int, stop: int
                    ) -> torch.Tensor:
    """Rows start:stop of softmax(q k^T * scale): (B, heads, stop - start, N), as the model."""
    return ((q[:, :, start:stop] * scale) @ k.transpose(-2, -1)).softmax(dim=-1)


def _layer_inputs(model: nn.Module, tokens: torch.Tensor, first: int, last: int
                  ) -> list[torch.Tensor]:
    """The inputs (B, N, D) of blocks first..last; runs blocks 0..last-1, fused, the MLPs
    ``MLP_CHUNK`` tokens at a time (the kept inputs plus one block's work stay small)."""
    inputs = []
    for index in range(last + 1):
        if index >= first:
            inputs.append(tokens)
        if index < last:
            tokens, _ = model.blocks[index](tokens, mlp_chunk=MLP_CHUNK)
    return inputs


def _forward_keeping_inputs(model: nn.Module, tokens: torch.Tensor
                            ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every block's input and the last block's output, fused and without a graph."""
    inputs = _layer_inputs(model, tokens, 0, len(model.blocks) - 1)
    output, _ = model.blocks[-1](inputs[-1], mlp_chunk=MLP_CHUNK)
    return inputs, output


def _target_gradient(model: nn.Module, tokens: torch.Tensor, target: Any
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """d(target logit)/d(last block's output tokens), and the (B,) target classes."""
    tokens = tokens.detach().requires_grad_(True)
    logits = model.forward_head(model.norm(tokens))
    classes = _resolve_target(target, logits.detach())
    score = logits.gather(1, classes[:, None]).sum()  # images are independent: one backward
    (grad,) = torch.autograd.grad(score, tokens)
    return grad, classes


def _fused_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v)


def _recording(attend: Callable, seen: dict[str, torch.Tensor]) -> Callable:
    """``attend`` that also keeps q, k, v (detached) and its output (in the graph) in ``seen``."""

    def wrapped(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        seen.update(q=q.detach(), k=k.detach(), v=v.detach())
        seen["out"] = attend(q, k, v)
        return seen["out"]

    return wrapped


Visit = Callable[[int, dict[str, torch.Tensor], torch.Tensor], None]


def _backward_by_block(
    model: nn.Module, inputs: list[torch.Tensor], grad: torch.Tensor, *, attend: Callable,
    visit: Visit | None = None,
) -> torch.Tensor:
    """Carry ``grad`` (d score / d last block's output) back to the first block's input.

    Each block is recomputed from its stored input, last block first, its graph dropped once
    its gradient is taken; ``visit(layer, seen, d_out)`` gets q, k, v and the gradient of the
    attention output (B, heads, N, head_dim). ``inputs`` is emptied on the way.
    """
    for layer in reversed(range(len(inputs))):
        x = inputs.pop().detach().requires_grad_(True)
        seen: dict[str, torch.Tensor] = {}
        out, _ = model.blocks[layer](x, attend=_recording(attend, seen))
        grad, d_out = torch.autograd.grad(out, [x, seen["out"]], grad)
        if visit is not None:
            visit(layer, seen, d_out)
    return grad


# ---------------------------------------------------------------------------------------------
# Attention rows and rollout (no gradients)
# ---------------------------------------------------------------------------------------------


def _discard_lowest_rows(fused: torch.Tensor, k: int, first_row: int) -> torch.Tensor:
    """Zero the k smallest entries of each row of a (B, C, N) chunk whose rows are the tokens
    first_row, first_row + 1, ...; a row's own token (the diagonal) is never zeroed."""
    if k == 0:
        return fused
    c, n = fused.shape[-2:]
    rows = torch.arange(first_row, first_row + c, device=fused.device)
    diagonal = rows[:, None] == torch.arange(n, device=fused.device)[None, :]  # (C, N)
    lowest = fused.masked_fill(diagonal, float("inf")).topk(k, dim=-1, largest=False).indices
    return fused.scatter(-1, lowest, 0.0)


def _rollout_step(
    row: torch.Tensor, q: torch.Tensor, k: torch.Tensor, scale: float, *, head_fusion: str,
    discard_ratio: float, chunk: int,
) -> torch.Tensor:
    """``row @ M`` for one block's ``M = rownorm(0.5 * F + 0.5 * I)``, F the fused, thinned
    attention, formed ``chunk`` rows at a time. With ``w = row / rowsum(0.5 F + 0.5 I)``:
    ``row @ M = 0.5 * w @ F + 0.5 * w``; rows where ``row`` is 0 are skipped."""
    n = q.shape[2]
    discard = int(n * discard_ratio)
    w = torch.zeros_like(row)
    w_times_f = torch.zeros_like(row)
    for start, stop in _chunks(n, chunk):
        if not row[:, start:stop].any():
            continue
        fused = fuse_heads(_attention_rows(q, k, scale, start, stop), head_fusion)  # (B, C, N)
        fused = _discard_lowest_rows(fused, discard, start)
        w[:, start:stop] = row[:, start:stop] / (0.5 * fused.sum(dim=-1) + 0.5)
        w_times_f += (w[:, None, start:stop] @ fused)[:, 0]
    return 0.5 * w_times_f + 0.5 * w


def rollout(
    model: nn.Module, images: torch.Tensor, *, query: Query = None, head_fusion: str = "mean",
    discard_ratio: float = 0.0, start_layer: int = 0, chunk_size: int | None = None,
) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers").

    Per block from ``start_layer`` on: heads fused (mean, max or min), optionally the
    ``int(N * discard_ratio)`` smallest entries of each row zeroed (never the diagonal; as in
    jacobgil/vit-explain), ``0.5 * A + 0.5 * I``, rows renormalised; the blocks' matrices are
    multiplied in forward order, ``R = M_L ... M_start``, and the map is R's row of ``query``
    ([CLS] by default; any token index or (row, col) patch) on the patch tokens.
    It does not depend on the class. Cost: one forward pass plus q K^T once per block.
    """
    _check_images(images)
    depth = len(model.blocks)
    _check_rollout_args(head_fusion, discard_ratio, start_layer, depth)
    chunk = _chunk_rows(model, chunk_size)
    x = images.to(_model_device(model, images.device))
    grid = _input_grid(model, x)
    token = _query_token(query, model.num_prefix_tokens, grid)
    with _eval_mode(model), torch.no_grad():
        tokens = model.embed(x)  # (B, N, D)
        inputs = _layer_inputs(model, tokens, start_layer, depth - 1)  # last block: not run
        row = _one_hot_rows(x.shape[0], tokens.shape[1], token, tokens.device)
        for layer in reversed(range(start_layer, depth)):  # e_q^T M_L first, then M_(L-1), ...
            block = model.blocks[layer]
            q, k, _ = block.attn.heads(block.norm1(inputs.pop()))
            row = _rollout_step(row, q, k, block.attn.scale, head_fusion=head_fusion,
                                discard_ratio=discard_ratio, chunk=chunk)
        return _patch_map(row, model.num_prefix_tokens, grid)


def attention(
    model: nn.Module, images: torch.Tensor, *, layer: int = -1, head_fusion: str = "mean",
    query: Query = None,
) -> torch.Tensor:
    """One layer's attention row of ``query`` ([CLS] by default), heads fused, on the patches.

    The raw-attention baseline of the rollout literature (e.g. Abnar & Zuidema 2020): only one
    row of one layer is computed, after a fused forward pass up to that layer.
    """
    _check_images(images)
    _check_choice("head_fusion", head_fusion, HEAD_FUSIONS)
    depth = len(model.blocks)
    _check_layer_index("layer", layer, depth, allow_negative=True)
    layer = layer % depth
    x = images.to(_model_device(model, images.device))
    grid = _input_grid(model, x)
    token = _query_token(query, model.num_prefix_tokens, grid)
    with _eval_mode(model), torch.no_grad():
        (tokens,) = _layer_inputs(model, model.embed(x), layer, layer)
        block = model.blocks[layer]
        q, k, _ = block.attn.heads(block.norm1(tokens))
        rows = _attention_rows(q, k, block.attn.scale, token, token + 1)[:, :, 0]  # (B, heads, N)
        return _patch_map(fuse_heads(rows, head_fusion), model.num_prefix_tokens, grid)


def _query_tokens(query: Query | Sequence[Query], num_prefix_tokens: int,
                  grid: tuple[int, int]) -> list[int] | None:
    if query is None:
        return None
    queries = query if isinstance(query, list) else [query]
    return [_query_token(q, num_prefix_tokens, grid) for q in queries]


def _layer_list(layers: int | Sequence[int] | None, depth: int) -> list[int]:
    chosen = range(depth) if layers is None else [layers] if isinstance(layers, int) else layers
    for layer in chosen:
        _check_layer_index("layer", layer, depth, allow_negative=True)
    if len(chosen) == 0:
        raise ConfigError("layers must name at least one layer; None means all")
    return [layer % depth for layer in chosen]


def attention_maps(
    model: nn.Module, images: torch.Tensor, layers: int | Sequence[int] | None = None,
    query: Query | list[Query] = None, heads: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """Attention weights of chosen layers and heads: (B, len(layers), len(heads), Q, N).

    ``layers`` and ``heads``: an index, a list of them, or None for all. ``query``: None for
    every row (Q = N: the full N x N matrices of the chosen layers), or a token index, a
    (row, col) patch, or a list of these (only those rows are computed). Tokens are ordered
    [CLS], registers, then the patches row by row. The forward pass stops at the last layer asked.
    """
    _check_images(images)
    depth = len(model.blocks)
    layer_list = _layer_list(layers, depth)
    num_heads = model.blocks[0].attn.num_heads
    head_list = list(range(num_heads)) if heads is None else [heads] if isinstance(heads, int) \
        else list(heads)
    if not head_list or any(not 0 <= h < num_heads for h in head_list):
        raise ConfigError(f"heads must be indices in [0, {num_heads - 1}]; got {heads!r}")
    x = images.to(_model_device(model, images.device))
    tokens_asked = _query_tokens(query, model.num_prefix_tokens, _input_grid(model, x))
    found: dict[int, torch.Tensor] = {}
    with _eval_mode(model), torch.no_grad():
        tokens = model.embed(x)
        for index in range(max(layer_list) + 1):
            block = model.blocks[index]
            if index in layer_list:
                q, k, _ = block.attn.heads(block.norm1(tokens))
                q = q if tokens_asked is None else q[:, :, tokens_asked]  # (B, heads, Q, hd)
                found[index] = _attention_rows(q, k, block.attn.scale, 0, q.shape[2])[:, head_list]
            if index < max(layer_list):
                tokens, _ = block(tokens)
    return torch.stack([found[layer] for layer in layer_list], dim=1)


# ---------------------------------------------------------------------------------------------
# Gradient methods
# ---------------------------------------------------------------------------------------------


def _grad_rollout_step(row: torch.Tensor, seen: dict[str, torch.Tensor], d_out: torch.Tensor,
                       scale: float, chunk: int) -> torch.Tensor:
    """``row + row @ mean_heads(relu(dA * A))`` with ``dA = dO V^T``, ``chunk`` rows at a time."""
    q, k, v = seen["q"], seen["k"], seen["v"]
    update = torch.zeros_like(row)
    for start, stop in _chunks(q.shape[2], chunk):
        if not row[:, start:stop].any():
            continue
        a = _attention_rows(q, k, scale, start, stop)  # (B, heads, C, N)
        grad_a = d_out[:, :, start:stop] @ v.transpose(-2, -1)  # (B, heads, C, N)
        relevance = (grad_a * a).clamp(min=0).mean(dim=1)  # (B, C, N)
        update += (row[:, None, start:stop] @ relevance)[:, 0]
    return row + update


def grad_rollout(
    model: nn.Module, images: torch.Tensor, *, target: Any = None, chunk_size: int | None = None
) -> torch.Tensor:
    """Gradient-weighted attention rollout: Chefer, Gur & Wolf 2021, "Generic
    Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers"
    (ICCV), for self-attention: ``A_bar_l = mean_heads(relu(dA_l * A_l))``, ``R <- R + A_bar_l R``
    from ``R = I``; the [CLS] row of R on the patches. dA_l is the gradient of the target logit
    with respect to layer l's attention, each layer paired with its own gradient.

    One forward pass (block inputs kept) and one backward pass recomputed block by block.
    """
    _check_images(images)
    _check_autograd("grad-rollout")
    chunk = _chunk_rows(model, chunk_size)
    x = images.detach().to(_model_device(model, images.device))
    grid = _input_grid(model, x)
    with _eval_mode(model):
        with torch.no_grad():
            inputs, output = _forward_keeping_inputs(model, model.embed(x))
        row = _one_hot_rows(x.shape[0], output.shape[1], 0, output.device)

        def visit(layer: int, seen: dict[str, torch.Tensor], d_out: torch.Tensor) -> None:
            nonlocal row  # the [CLS] row, right to left: e_0^T (I + A_bar_L) ... (I + A_bar_l)
            with torch.no_grad():
                row = _grad_rollout_step(row, seen, d_out, model.blocks[layer].attn.scale, chunk)

        with torch.enable_grad():
            grad, _ = _target_gradient(model, output, target)
            _backward_by_block(model, inputs, grad, attend=_fused_attend, visit=visit)
        return _patch_map(row, model.num_prefix_tokens, grid)


def _layer_score(model: nn.Module, tokens: torch.Tensor, classes: torch.Tensor, pool: str
                 ) -> torch.Tensor:
    """The target logit read from one layer's output tokens (B, N, D), summed over images."""
    if pool == "mean":  # mean of all tokens, then the final norm and the head
        logits = model.head(model.fc_norm(model.norm(tokens.mean(dim=1))))
    else:  # the model's own pooling ([CLS] or the patch mean)
        logits = model.forward_head(model.norm(tokens))
    return logits.gather(1, classes[:, None]).sum()


def _positive_gradient_columns(seen: dict[str, torch.Tensor], d_out: torch.Tensor, chunk: int
                               ) -> torch.Tensor:
    """``sum over heads and rows of relu(dA)``, dA = dO V^T, ``chunk`` rows at a time: (B, N)."""
    v = seen["v"]
    total = v.new_zeros(v.shape[0], v.shape[2])
    for start, stop in _chunks(v.shape[2], chunk):
        grad_a = d_out[:, :, start:stop] @ v.transpose(-2, -1)  # (B, heads, C, N)
        total += grad_a.clamp(min=0).sum(dim=(1, 2))
    return total


def legrad(
    model: nn.Module, images: torch.Tensor, *, target: Any = None, start_layer: int = 0,
    pool: str = "mean", chunk_size: int | None = None,
) -> torch.Tensor:
    """LeGrad: Bousselham, Boggust, Chaybouti, Strobelt & Kuehne 2024, "LeGrad: An
    Explainability Method for Vision Transformers via Feature Formation Sensitivity".

    For each layer l from ``start_layer``: read the target score ``s_l`` off that layer's output
    tokens with the model's final norm and head, take the gradient of ``s_l`` with respect to
    layer l's own attention map, ``relu``, and average over heads and query rows; the map is the
    mean over layers, on the patch columns. ``pool="mean"`` pools the layer's tokens by their
    mean before the norm and head, as the authors' code does (WalBouss/LeGrad,
    ``compute_legrad_clip``); ``"model"`` uses the model's own pooling. The authors' wrapper
    starts at the second-to-last layer by default; the paper aggregates all layers (our default).

    ``s_l`` depends on layer l's attention only through block l, so each block runs once, fused,
    with its input detached, and one backward pass per block through that block and the head.
    """
    _check_images(images)
    _check_autograd("legrad")
    depth = len(model.blocks)
    _check_layer_index("start_layer", start_layer, depth, allow_negative=False)
    _check_choice("pool", pool, LEGRAD_POOLS)
    chunk = _chunk_rows(model, chunk_size)
    x = images.detach().to(_model_device(model, images.device))
    grid = _input_grid(model, x)
    with _eval_mode(model):
        with torch.no_grad():
            tokens = model.embed(x)
            logits = model(x) if target is None else x.new_zeros(x.shape[0], model.num_classes)
            classes = _resolve_target(target, logits)
        total = tokens.new_zeros(tokens.shape[:2])  # (B, N)
        for layer in range(depth):
            block = model.blocks[layer]
            if layer < start_layer:
                with torch.no_grad():
                    tokens, _ = block(tokens)
                continue
            seen: dict[str, torch.Tensor] = {}
            with torch.enable_grad():
                out, _ = block(tokens.detach().requires_grad_(True),
                               attend=_recording(_fused_attend, seen))
                score = _layer_score(model, out, classes, pool)
                (d_out,) = torch.autograd.grad(score, seen["out"])
            with torch.no_grad():
                heads, n = d_out.shape[1], d_out.shape[2]
                total += _positive_gradient_columns(seen, d_out, chunk) / (heads * n)
            tokens = out.detach()
        return _patch_map(total / (depth - start_layer), model.num_prefix_tokens, grid)


# --- AttnLRP ------------------------------------------------------------------------------------


def _scale_grad(t: torch.Tensor, factor: float) -> torch.Tensor:
    """``t`` in the forward pass, ``factor`` times the gradient in the backward pass."""
    return t.detach() + factor * (t - t.detach())


def _attnlrp_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v with AttnLRP's rules in gradient x input form: the uniform
    rule halves the relevance at each of the two matrix products (q and k: 1/4, v: 1/2); the
    softmax keeps its own gradient, which is the paper's Proposition 3.1 rule."""
    return F.scaled_dot_product_attention(_scale_grad(q, 0.25), _scale_grad(k, 0.25),
                                          _scale_grad(v, 0.5))


def _cp_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """CP-LRP (Ali et al. 2022): the attention weights are held fixed, relevance flows via v."""
    return F.scaled_dot_product_attention(q.detach(), k.detach(), v)


def _layer_norm_identity(module: nn.LayerNorm, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """LayerNorm with the standard deviation held fixed (identity rule on the division)."""
    x = args[0]
    centred = x - x.mean(dim=-1, keepdim=True)
    std = (centred.pow(2).mean(dim=-1, keepdim=True) + module.eps).sqrt()
    y = centred / std.detach()
    if module.weight is not None:
        y = y * module.weight
    return y + module.bias if module.bias is not None else y


def _elementwise_identity(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """Identity rule: the output's value, with gradient ``f(x) / x`` so relevance passes through."""
    x = args[0]
    ratio = torch.where(x == 0, torch.full_like(x, 0.5), output / x).detach()  # gelu(x)/x -> 1/2
    return output.detach() + (x - x.detach()) * ratio


@contextmanager
def _lrp_rules(model: nn.Module) -> Iterator[None]:
    """AttnLRP's rules for LayerNorm and GELU on this model, for the duration of the block."""
    handles = []
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            handles.append(module.register_forward_hook(_layer_norm_identity))
        elif isinstance(module, nn.GELU):
            handles.append(module.register_forward_hook(_elementwise_identity))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def attnlrp(
    model: nn.Module, images: torch.Tensor, *, target: Any = None, rule: str = "attnlrp"
) -> torch.Tensor:
    """AttnLRP: Achtibat, Hatefi, Dreyer, Jain, Wiegand, Lapuschkin & Samek 2024,
    "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for Transformers" (ICML).

    Relevance of the target logit on each patch: the sum over its pixels and channels of
    ``x * dlogit/dx`` with a modified backward pass that realises the paper's rules (as its
    ``lxt`` library does): linear maps and additions keep their gradient (epsilon rule), GELU
    passes relevance unchanged (identity rule), LayerNorm holds its standard deviation fixed,
    the matrix products in the attention split relevance evenly between their factors (uniform
    rule), and the softmax keeps its gradient (Proposition 3.1). ``rule="cp"`` instead holds the
    attention weights fixed (CP-LRP, Ali et al. 2022), the variant ``lxt`` applies to
    torchvision's ViT. Relevance is conserved from the logit down to the pixels except what the
    biases (linear layers, LayerNorm, position embedding, [CLS]) and the softmax absorb.
    The map is signed: negative patches speak against the class.
    """
    _check_images(images)
    _check_autograd("attnlrp")
    _check_choice("rule", rule, LRP_RULES)
    x = images.detach().to(_model_device(model, images.device))
    gh, gw = _input_grid(model, x)
    with _eval_mode(model):
        with torch.no_grad():
            inputs, output = _forward_keeping_inputs(model, model.embed(x))
        with torch.enable_grad(), _lrp_rules(model):
            grad, _ = _target_gradient(model, output, target)
            attend = _attnlrp_attend if rule == "attnlrp" else _cp_attend
            grad = _backward_by_block(model, inputs, grad, attend=attend)
            pixels = x.clone().requires_grad_(True)
            (grad_pixels,) = torch.autograd.grad(model.embed(pixels), pixels, grad)
        relevance = (x * grad_pixels).sum(dim=1)  # (B, H, W)
        b, h, w = relevance.shape
        return relevance.reshape(b, gh, h // gh, gw, w // gw).sum(dim=(2, 4))  # per patch


# --- Grad-CAM ----------------------------------------------------------------------------------


def gradcam(
    model: nn.Module, images: torch.Tensor, *, target: Any = None, layer: int = -1
) -> torch.Tensor:
    """Grad-CAM: Selvaraju, Cogswell, Das, Vedantam, Parikh & Batra 2017, "Grad-CAM: Visual
    Explanations from Deep Networks via Gradient-based Localization" (ICCV).

    On the tokens leaving block ``layer``'s first LayerNorm (``blocks[-1].norm1`` by default,
    the layer pytorch-grad-cam's ViT example uses: the last block's own output reaches the logit
    only through [CLS]), with the patch tokens laid out as a grid like its ``reshape_transform``:
    channel weights = the gradient of the target logit averaged over the patches, map =
    ``relu(sum_c weight_c * activation_c)``.
    """
    _check_images(images)
    _check_autograd("gradcam")
    depth = len(model.blocks)
    _check_layer_index("layer", layer, depth, allow_negative=True)
    layer = layer % depth
    x = images.detach().to(_model_device(model, images.device))
    grid = _input_grid(model, x)
    prefix = model.num_prefix_tokens
    seen: list[torch.Tensor] = []
    with _eval_mode(model):
        with torch.no_grad():
            (tokens,) = _layer_inputs(model, model.embed(x), layer, layer)
        handle = model.blocks[layer].norm1.register_forward_hook(
            lambda module, args, out: seen.append(out))
        try:
            with torch.enable_grad():
                tokens = tokens.requires_grad_(True)
                for block in model.blocks[layer:]:
                    tokens, _ = block(tokens)
                grad, _ = _target_gradient_from(model, tokens, target, seen[0])
        finally:
            handle.remove()
        activations = seen[0].detach()[:, prefix:]  # (B, P, D)
        weights = grad[:, prefix:].mean(dim=1)  # (B, D): gradient averaged over the patches
        cam = (activations * weights[:, None, :]).sum(dim=-1).clamp(min=0)  # (B, P)
        return cam.reshape(-1, *grid)


def _target_gradient_from(model: nn.Module, tokens: torch.Tensor, target: Any,
                          wrt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d(target logit)/d(wrt) from the last block's output tokens (in the graph)."""
    logits = model.forward_head(model.norm(tokens))
    classes = _resolve_target(target, logits.detach())
    (grad,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), wrt)
    return grad, classes


# ---------------------------------------------------------------------------------------------
# One entry point
# ---------------------------------------------------------------------------------------------

_REGISTRY: dict[str, Callable[..., torch.Tensor]] = {
    "rollout": rollout,
    "grad-rollout": grad_rollout,
    "attention": attention,
    "legrad": legrad,
    "attnlrp": attnlrp,
    "gradcam": gradcam,
}
METHODS = tuple(_REGISTRY)


def _check_options(method: str, options: dict[str, Any]) -> None:
    accepted = [name for name, p in inspect.signature(_REGISTRY[method]).parameters.items()
                if p.kind == p.KEYWORD_ONLY and name != "target"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"{method} takes no option {', '.join(unknown)}; its options: "
                          f"{', '.join(accepted) or 'none'}")


def saliency(
    model: nn.Module, images: torch.Tensor, method: str = "rollout", target: Any = None,
    **options: Any,
) -> torch.Tensor:
    """Saliency maps (B, grid_h, grid_w) of a batch by ``method`` (one of ``METHODS``).

    ``target``: the class to explain for the class-specific methods (None: the predicted
    class; an int; or a (B,) tensor); rollout and attention do not depend on it and ignore it.
    ``options`` go to the method (e.g. ``head_fusion`` for rollout, ``rule`` for attnlrp).
    """
    _check_choice("method", method, METHODS)
    _check_options(method, options)
    if method in CLASS_SPECIFIC:
        return _REGISTRY[method](model, images, target=target, **options)
    return _REGISTRY[method](model, images, **options)
