"""The model-randomisation sanity check (Adebayo et al. 2018, "Sanity Checks for Saliency
Maps"): re-initialise the model from the top down and compare maps by rank correlation."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["spearman", "randomised_cascade", "half_stage"]


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """(B, P) -> each row's ranks 0..P-1, tied values sharing their mean rank."""
    ranks = torch.empty(values.shape, dtype=torch.float64)
    for i, row in enumerate(values.detach().cpu()):
        _, inverse, counts = torch.unique(row, return_inverse=True, return_counts=True)
        first = torch.cumsum(counts, 0) - counts  # rank of each group's first member
        ranks[i] = (first + (counts - 1) / 2).double()[inverse]
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation (B,) of each pair of maps; 0 where a map is constant."""
    ra, rb = _average_ranks(a.flatten(1)), _average_ranks(b.flatten(1))
    ra, rb = ra - ra.mean(dim=1, keepdim=True), rb - rb.mean(dim=1, keepdim=True)
    denominator = (ra.norm(dim=1) * rb.norm(dim=1)).clamp(min=1e-12)
    return ((ra * rb).sum(dim=1) / denominator).float()


def _reinitialise(module: nn.Module, generator: torch.Generator, init_values: float | None
                  ) -> None:
    """Fresh weights as at construction (trunc-normal 0.02 linears, unit norms, LayerScale at
    ``init_values``); the head too, but not zero: a zero head gives zero gradients, empty maps.
    Norms of any family (LayerNorm, timm's RmsNorm, ...) are known by their class name."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02, generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) or "Norm" in type(m).__name__:
            for name, value in (("weight", 1.0), ("bias", 0.0)):
                if isinstance(getattr(m, name, None), nn.Parameter):
                    nn.init.constant_(getattr(m, name), value)
        elif isinstance(getattr(m, "gamma", None), nn.Parameter):  # LayerScale
            nn.init.constant_(m.gamma, init_values or 1.0)


def randomised_cascade(model: nn.Module, seed: int) -> Iterator[tuple[int, nn.Module]]:
    """Adebayo et al. 2018's cascading randomisation: a copy of the model whose head (with the
    final norm; an attention pool and a distillation head too) is re-initialised, yielded as
    stage 0; then stage k with the top k blocks re-initialised as well, down to every block.
    The same copy is changed between yields."""
    from vit.explain.adapters import adapter_for

    randomised = copy.deepcopy(model).eval()
    adapter = adapter_for(randomised)
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    init_values = getattr(getattr(model, "config", None), "init_values", None)
    with torch.no_grad():
        for top in adapter.head_modules():
            _reinitialise(top, generator, init_values)
    yield 0, randomised
    for k, block in enumerate(reversed(adapter.blocks), start=1):
        with torch.no_grad():
            _reinitialise(block, generator, init_values)
        yield k, randomised


def half_stage(depth: int) -> int:
    """The stage at which half the blocks (rounded up) are random."""
    return (depth + 1) // 2

