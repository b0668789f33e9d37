"""Training for a wall-clock budget (``train.time_budget_min``): how many epochs fit."""

from __future__ import annotations

import math

from vit.errors import ConfigError

__all__ = ["fit_epochs_to_budget", "recent_pace", "TimeBudget"]


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


class TimeBudget:
    """``train.time_budget_min`` as the run goes: from the second epoch of a fresh run on, the
    number of epochs that fit (``None`` when no budget applies, or before it can tell)."""

    def __init__(self, budget_min: float | None, *, max_epochs: int, fresh: bool):
        self.budget_min, self.max_epochs, self.fresh = budget_min, max_epochs, fresh
        self.epoch_ends: list[float] = []

    def epochs_after(self, epoch: int, elapsed_s: float) -> int | None:
        """After epoch ``epoch`` (from 0) ended ``elapsed_s`` into the run."""
        self.epoch_ends.append(elapsed_s)
        if self.budget_min is None or not self.fresh or epoch < 1:
            return None
        return fit_epochs_to_budget(
            budget_s=60 * self.budget_min, elapsed_s=elapsed_s,
            epoch_s=recent_pace(self.epoch_ends), epochs_done=epoch + 1,
            max_epochs=self.max_epochs)
