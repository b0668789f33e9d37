"""Running a model's blocks for an explanation, in memory linear in the tokens.

No method holds an N x N matrix for all layers:

- Rollout and attention rows keep each block's input (B, N, D) from one fused forward pass
  (``Adapter.trace``), then recompute a block's attention call (q, k and its bias, as the
  family computes them: ``attention_of``) and form its rows a chunk at a time (``chunks``).
- Gradient methods recompute the blocks one at a time during the backward pass, last block
  first (``backward_by_block``, activation checkpointing): a block's graph lives only while its
  gradient is taken, and the attention's gradient ``dA = dO V^T`` (O = A V) is formed in chunks.

The model stays fused (scaled_dot_product_attention); a method sees q, k, v, the bias and the
attention output through ``vit.explain.attention_calls``, and the model only through its
adapter (``vit.explain.adapters``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from vit.errors import ConfigError
from vit.explain.adapters import Adapter, Trace
from vit.explain.attention_calls import Attend, AttentionCall, fused, intercept, record
from vit.explain.inputs import resolve_target

__all__ = [
    "Visit",
    "attention_of",
    "backward_by_block",
    "chunk_rows",
    "chunks",
    "one_hot_rows",
    "target_gradient",
]


def one_hot_rows(batch: int, n: int, token: int, device: torch.device) -> torch.Tensor:
    row = torch.zeros(batch, n, device=device)
    row[:, token] = 1.0
    return row


def chunk_rows(call: AttentionCall, chunk_size: int | None) -> int:
    """Query rows per chunk: by default a chunk's (B, heads, rows, N) attention holds as many
    numbers as a (B, N, D) token tensor (rows = head_dim), so it costs one more activation."""
    if chunk_size is None:
        return max(1, call.q.shape[-1])
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1; got {chunk_size}")
    return chunk_size


def chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(start + size, n)


class _Found(Exception):
    pass


def attention_of(adapter: Adapter, index: int, tokens: torch.Tensor, kwargs: dict[str, Any]
                 ) -> AttentionCall:
    """Block ``index``'s attention call on its input ``tokens``: the block runs until its
    attention is asked for (normalisation, q/k/v, q/k norms, RoPE), then stops."""
    seen: list[AttentionCall] = []

    def stop(call: AttentionCall) -> torch.Tensor:
        seen.append(call)
        raise _Found

    try:
        with intercept(stop):
            adapter.run_block(index, tokens, kwargs)
    except _Found:
        return seen[0]
    raise ConfigError(f"block {index} of this {type(adapter.model).__name__} computes no "
                      "attention through scaled_dot_product_attention")


def target_gradient(adapter: Adapter, tokens: torch.Tensor, target: Any,
                    wrt: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """d(target logit)/d(wrt) (default: the last block's output ``tokens``), and the (B,)
    target classes. Images are independent, so one backward pass serves the batch."""
    if wrt is None:
        tokens = wrt = tokens.detach().requires_grad_(True)
    logits = adapter.logits(tokens)
    classes = resolve_target(target, logits.detach())
    (grad,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), wrt)
    return grad, classes


Visit = Callable[[int, AttentionCall, torch.Tensor], None]


def backward_by_block(
    adapter: Adapter, trace: Trace, grad: torch.Tensor, *, attend: Attend = fused,
    visit: Visit | None = None,
) -> torch.Tensor:
    """Carry ``grad`` (d score / d last block's output) back to the first block's input.

    Each block is recomputed from its stored input, last block first, its graph dropped once
    its gradient is taken; ``visit(layer, call, d_out)`` gets the attention call (q, k, v, bias)
    and the gradient of its output (B, heads, N, head_dim). ``trace.inputs`` is emptied.
    """
    for layer in reversed(range(len(trace.inputs))):
        x = trace.inputs.pop().detach().requires_grad_(True)
        seen: dict[str, Any] = {}
        with intercept(record(seen, attend)):
            out = adapter.run_block(layer, x, trace.kwargs[layer])
        grad, d_out = torch.autograd.grad(out, [x, seen["out"]], grad)
        if visit is not None:
            visit(layer, seen["call"], d_out)
    return grad
