"""Running a model's blocks for an explanation, in memory linear in the tokens.

No method holds an N x N matrix for all layers:

- Rollout and attention rows keep each block's input (B, N, D) from one fused forward pass
  (``layer_inputs``), then recompute q and k of a block and form ``softmax(q K^T / sqrt(d))`` a
  chunk of query rows at a time (``attention_rows``, ``chunks``).
- Gradient methods recompute the blocks one at a time during the backward pass, last block
  first (``backward_by_block``, activation checkpointing): a block's graph lives only while its
  gradient is taken, and the attention's gradient ``dA = dO V^T`` (O = A V) is formed in chunks.

The model stays fused (scaled_dot_product_attention): a method sees q, k, v and the attention
output through the model's public pieces, ``model.embed``, ``block.attn.heads`` and
``block(x, attend=...)`` (``recording``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vit.errors import ConfigError
from vit.explain.inputs import resolve_target

__all__ = [
    "MLP_CHUNK",
    "Visit",
    "attention_rows",
    "backward_by_block",
    "chunk_rows",
    "chunks",
    "forward_keeping_inputs",
    "fused_attend",
    "layer_inputs",
    "one_hot_rows",
    "recording",
    "target_gradient",
    "target_gradient_from",
]

MLP_CHUNK = 256  # tokens per MLP call in the forward passes without a graph


def one_hot_rows(batch: int, n: int, token: int, device: torch.device) -> torch.Tensor:
    row = torch.zeros(batch, n, device=device)
    row[:, token] = 1.0
    return row


def chunk_rows(model: nn.Module, chunk_size: int | None) -> int:
    """Query rows per chunk: by default a chunk's (B, heads, rows, N) attention holds as many
    numbers as a (B, N, D) token tensor, so it costs one more activation, whatever N."""
    if chunk_size is None:
        return max(1, model.embed_dim // model.blocks[0].attn.num_heads)
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1; got {chunk_size}")
    return chunk_size


def chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(start + size, n)


def attention_rows(q: torch.Tensor, k: torch.Tensor, scale: float, start: int, stop: int
                    ) -> torch.Tensor:
    """Rows start:stop of softmax(q k^T * scale): (B, heads, stop - start, N), as the model."""
    return ((q[:, :, start:stop] * scale) @ k.transpose(-2, -1)).softmax(dim=-1)


def layer_inputs(model: nn.Module, tokens: torch.Tensor, first: int, last: int
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


def forward_keeping_inputs(model: nn.Module, tokens: torch.Tensor
                            ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every block's input and the last block's output, fused and without a graph."""
    inputs = layer_inputs(model, tokens, 0, len(model.blocks) - 1)
    output, _ = model.blocks[-1](inputs[-1], mlp_chunk=MLP_CHUNK)
    return inputs, output


def target_gradient(model: nn.Module, tokens: torch.Tensor, target: Any
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """d(target logit)/d(last block's output tokens), and the (B,) target classes."""
    tokens = tokens.detach().requires_grad_(True)
    logits = model.forward_head(model.norm(tokens))
    classes = resolve_target(target, logits.detach())
    score = logits.gather(1, classes[:, None]).sum()  # images are independent: one backward
    (grad,) = torch.autograd.grad(score, tokens)
    return grad, classes


def target_gradient_from(model: nn.Module, tokens: torch.Tensor, target: Any,
                          wrt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d(target logit)/d(wrt) from the last block's output tokens (in the graph)."""
    logits = model.forward_head(model.norm(tokens))
    classes = resolve_target(target, logits.detach())
    (grad,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), wrt)
    return grad, classes


def fused_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v)


def recording(attend: Callable, seen: dict[str, torch.Tensor]) -> Callable:
    """``attend`` that also keeps q, k, v (detached) and its output (in the graph) in ``seen``."""

    def wrapped(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        seen.update(q=q.detach(), k=k.detach(), v=v.detach())
        seen["out"] = attend(q, k, v)
        return seen["out"]

    return wrapped


Visit = Callable[[int, dict[str, torch.Tensor], torch.Tensor], None]


def backward_by_block(
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
        out, _ = model.blocks[layer](x, attend=recording(attend, seen))
        grad, d_out = torch.autograd.grad(out, [x, seen["out"]], grad)
        if visit is not None:
            visit(layer, seen, d_out)
    return grad

