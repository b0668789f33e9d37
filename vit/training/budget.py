"""Training for a wall-clock budget (``train.time_budget_min``): how many epochs fit."""

from __future__ import annotations

import math

from vit.errors import ConfigError

__all__ = ["fit_epochs_to_budget", "recent_pace"]


def fit_epochs_to_budget(*, budget_s: float, elapsed_s: float, epoch_s: float, epochs_done: int,
                        max_epochs: int, margin: float = 0.05) -> int:
    """How many epochs in all end within ``budget_s``, given that ``epochs_done`` took
    ``elapsed_s`` and the latest took ``epoch_s``; at least ``epochs_done``, at most ``max_epochs``.
    ``margin`` keeps a share of the remaining time free for noise between epochs."""
    if budget_s <= 0:
        raise ConfigError(f"train.time_budget_min must be positive, got {budget_s / 60:g}")
    more = math.floor((budget_s - elapsed_s) * (1.0 - margin) / max(epoch_s, 1e-9))
    return int(min(max_epochs, epochs_done + max(more, 0)))


def recent_pace(epoch_ends: list[float], *, window: int = 5) -> float:
    """Seconds per epoch from the wall-clock times at which epochs ended: the slower of the mean
    since the first epoch (which carries start-up costs, so it is left out) and the mean of the
    last ``window`` epochs, so a machine that slows down mid-run still ends within budget."""
    if len(epoch_ends) < 2:
        raise ValueError("the pace needs at least two epochs")
    overall = (epoch_ends[-1] - epoch_ends[0]) / (len(epoch_ends) - 1)
    recent = epoch_ends[-min(window, len(epoch_ends) - 1) - 1:]
    return max(overall, (recent[-1] - recent[0]) / (len(recent) - 1))
