"""Removing patch tokens from the sequence: the ViT-native deletion and insertion curves.

Pixels replaced by a baseline make images the model never saw; dropping a patch's token from
the sequence removes its content without adding any. Tokens keep their position embedding, so
what remains is the same image with holes, not a shifted one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from vit.explain.adapters import Adapter, Trace, adapter_for
from vit.explain.attention_calls import fused, intercept, restricted

__all__ = ["token_drop_curves", "token_drop_curve", "token_drop_auc"]


def _target_probability(adapter: Adapter, trace: Trace, keep: torch.Tensor,
                        classes: torch.Tensor) -> torch.Tensor:
    """Class probability (B,) with only the patch tokens ``keep`` (B, K) in the sequence.
    Block keywords (RoPE) and biases over the whole sequence (relative positions) are cut to
    the kept tokens, so each keeps its own position."""
    tokens, prefix = trace.inputs[0], adapter.num_prefix_tokens
    patches = tokens[:, prefix:]
    kept = patches.gather(1, keep[..., None].expand(-1, -1, patches.shape[-1]))  # (B, K, D)
    sequence = torch.cat([tokens[:, :prefix], kept], dim=1)  # (B, prefix + K, D)
    index = torch.cat([torch.arange(prefix, device=keep.device).expand(keep.shape[0], prefix),
                       keep + prefix], dim=1)  # the tokens' places in the whole sequence
    with intercept(fused, shape=restricted(index)):
        for layer, kwargs in enumerate(trace.kwargs):
            sequence = adapter.run_block(layer, sequence, adapter.keep_kwargs(kwargs, keep))
    probs = adapter.logits(sequence).float().softmax(dim=-1)
    return probs.gather(1, classes[:, None])[:, 0]


def _probabilities(adapter: Adapter, trace: Trace, kept: Sequence[torch.Tensor],
                   classes: torch.Tensor) -> list[torch.Tensor]:
    """The class probability (B,) for each set of kept patches (B, K); sets of the same length
    share one forward pass."""
    by_length: dict[int, list[int]] = {}
    for i, keep in enumerate(kept):
        by_length.setdefault(keep.shape[1], []).append(i)
    out: list[torch.Tensor] = [classes] * len(kept)
    b = trace.inputs[0].shape[0]
    for members in by_length.values():
        keep = torch.cat([kept[i] for i in members])  # (len(members) * B, K)
        repeated = Trace([trace.inputs[0].repeat(len(members), 1, 1)], trace.kwargs)
        probs = _target_probability(adapter, repeated, keep, classes.repeat(len(members)))
        for j, i in enumerate(members):
            out[i] = probs[j * b:(j + 1) * b]
    return out


def token_drop_curves(
    model: nn.Module, images: torch.Tensor, orders: Mapping[str, tuple[torch.Tensor, bool]],
    classes: torch.Tensor, *, steps: int,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """For each ``name: (saliency_map, insert)``, the class probability (B, steps + 1) as patch
    tokens leave (deletion) or join (insertion) the sequence, most salient first, and the
    fraction of patches moved at each point.

    Tokens keep their position embedding, so what remains is the same image with holes, not a
    shifted one. A model pooling the patches (mean, attention pool) needs at least one patch:
    its curves stop one patch short of the empty sequence.
    """
    adapter = adapter_for(model)
    least = 0 if adapter.pool in ("token", "distilled") else 1
    kept, points = [], {}
    for name, (saliency_map, insert) in orders.items():
        num_patches = saliency_map[0].numel()
        order = saliency_map.flatten(1).argsort(dim=1, descending=True, stable=True)  # (B, P)
        counts = torch.linspace(0, num_patches - least, steps + 1).round().long()
        points[name] = (len(kept), counts.float() / num_patches)
        for count in counts.tolist():
            keep = order[:, :count + least] if insert else order[:, count:]
            kept.append(keep.sort(dim=1).values.to(images.device))
    with adapter.session(), torch.no_grad():
        trace = adapter.trace(images, output=False)
        del trace.inputs[1:]  # the first block's input and every block's keywords are enough
        probs = _probabilities(adapter, trace, kept, classes)
    return {name: (torch.stack(probs[first:first + steps + 1], dim=1), x)
            for name, (first, x) in points.items()}


def token_drop_curve(
    model: nn.Module, images: torch.Tensor, saliency_map: torch.Tensor, classes: torch.Tensor,
    *, insert: bool, steps: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One curve of ``token_drop_curves``: (B, steps + 1) probabilities, fractions moved."""
    return token_drop_curves(model, images, {"curve": (saliency_map, insert)}, classes,
                             steps=steps)["curve"]


def token_drop_auc(
    model: nn.Module, images: torch.Tensor, saliency_map: torch.Tensor, classes: torch.Tensor,
    *, insert: bool, steps: int = 32,
) -> torch.Tensor:
    """Area (B,) under ``token_drop_curve``: lower for deletion, higher for insertion is better."""
    curve, x = token_drop_curve(model, images, saliency_map, classes, insert=insert, steps=steps)
    return torch.trapezoid(curve, x.to(curve), dim=1)

