"""Each block's attention as its family computes it, seen where every family computes it.

Every ViT family the explainers support (ours, and timm's ViT, DeiT, EVA, BEiT, rel-pos ViT,
NaFlexViT, the attention-pool head of SigLIP) ends its attention in one call,
``F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=...)``, with q and k already
normalised and rotated (RoPE) and the relative-position bias in ``attn_mask``. ``intercept``
catches that call for the duration of a ``with`` block (a ``TorchFunctionMode``: nothing of
the model or of torch is patched) and hands it to ``attend(call)``, so a method sees exactly
the family's q, k, v and bias, and may replace the attention (recording it, or with AttnLRP's
rules), without copying any of the family's code.

    with intercept(record(seen)):
        out = block(x, **kwargs)      # seen["call"]: q, k, v, bias, scale; seen["out"] in the graph
    seen["call"].probabilities(0, 8)  # rows 0..7 of softmax(q k^T * scale + bias): (B, H, 8, N)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from vit.errors import ConfigError

__all__ = ["AttentionCall", "Attend", "intercept", "fused", "record", "restricted"]


@dataclass
class AttentionCall:
    """One attention as the model asked for it: q (B, H, Nq, d), k and v (B, H, N, d), the
    additive bias broadcastable to (B, H, Nq, N) or None, and the scale of q k^T."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    bias: torch.Tensor | None
    scale: float

    def bias_rows(self, start: int, stop: int) -> torch.Tensor | None:
        if self.bias is None or self.bias.shape[-2] == 1:
            return self.bias
        return self.bias[..., start:stop, :]

    def probabilities(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Query rows start:stop of the attention, (B, H, stop - start, N), as the model."""
        stop = self.q.shape[2] if stop is None else stop
        scores = (self.q[:, :, start:stop] * self.scale) @ self.k.transpose(-2, -1)
        bias = self.bias_rows(start, stop)
        return (scores if bias is None else scores + bias).softmax(dim=-1)

    def attend(self, q: torch.Tensor | None = None, k: torch.Tensor | None = None,
               v: torch.Tensor | None = None) -> torch.Tensor:
        """The fused attention of this call, with q, k or v replaced where given."""
        return _SDPA(
            self.q if q is None else q, self.k if k is None else k, self.v if v is None else v,
            attn_mask=self.bias, scale=self.scale)


Attend = Callable[[AttentionCall], torch.Tensor]


def _call_of(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
             attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
             is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False,
             ) -> AttentionCall:
    """The arguments of ``F.scaled_dot_product_attention`` as an ``AttentionCall``."""
    if is_causal or enable_gqa:
        raise ConfigError("explanations support bidirectional attention with as many key as "
                          "query heads; this model asked for causal or grouped-query attention")
    del dropout_p  # explanations run in eval mode: the models pass 0
    bias = attn_mask
    if bias is not None and bias.dtype == torch.bool:  # True: may attend
        bias = torch.zeros(bias.shape, dtype=query.dtype, device=query.device).masked_fill(
            ~bias, float("-inf"))
    return AttentionCall(query, key, value, bias,
                         query.shape[-1] ** -0.5 if scale is None else float(scale))


_SDPA = F.scaled_dot_product_attention  # as imported: a later wrapper still reaches this one


class _Intercept(TorchFunctionMode):
    def __init__(self, attend: Attend, shape: Callable[[AttentionCall], AttentionCall] | None):
        super().__init__()
        self.attend, self.shape = attend, shape

    def __torch_function__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        if func is _SDPA:
            call = _call_of(*args, **(kwargs or {}))
            return self.attend(call if self.shape is None else self.shape(call))
        return func(*args, **(kwargs or {}))


@contextmanager
def intercept(attend: Attend, *, shape: Callable[[AttentionCall], AttentionCall] | None = None
              ) -> Iterator[None]:
    """Inside, every ``F.scaled_dot_product_attention`` returns ``attend(call)`` instead
    (``shape``, when given, first adjusts the call, e.g. ``restricted`` for dropped tokens)."""
    with _Intercept(attend, shape):
        yield


def fused(call: AttentionCall) -> torch.Tensor:
    """The model's own attention, unchanged."""
    return call.attend()


def record(seen: dict[str, Any], attend: Attend = fused) -> Attend:
    """``attend`` that also keeps the call (q, k, v detached) and its output (in the graph) in
    ``seen``; a second attention in the same block is refused (no family has one)."""

    def recording(call: AttentionCall) -> torch.Tensor:
        if "call" in seen:
            raise ConfigError("this model's block computes more than one attention (parallel or "
                              "differential attention); the explanations need one per block")
        seen["call"] = AttentionCall(call.q.detach(), call.k.detach(), call.v.detach(),
                                     call.bias, call.scale)
        seen["out"] = attend(call)
        return seen["out"]

    return recording


def restricted(tokens: torch.Tensor) -> Callable[[AttentionCall], AttentionCall]:
    """For a sequence cut down to the token indices ``tokens`` (B, K): a bias the family built
    for the whole sequence (relative positions) keeps only the kept rows and columns."""

    def shape(call: AttentionCall) -> AttentionCall:
        bias, n = call.bias, call.k.shape[-2]
        if bias is None or bias.shape[-1] == n:
            return call
        b, heads, full = tokens.shape[0], bias.shape[1], bias.shape[-1]
        bias = bias.expand(b, heads, full, full)
        rows = tokens[:, None, :, None].expand(b, heads, n, full)
        bias = bias.gather(2, rows).gather(3, tokens[:, None, None, :].expand(b, heads, n, n))
        return AttentionCall(call.q, call.k, call.v, bias, call.scale)

    return shape
