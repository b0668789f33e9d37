"""Early stopping: which epoch is the best, and whether ``train.patience`` epochs have passed
without improving on it.

    stopper = EarlyStopping(monitor="val_loss", patience=5)
    improved = stopper.update(epoch=3, metrics={"val_loss": 0.42, ...})  # best.pt when True
    if stopper.should_stop: logger.info("%s", stopper.reason())

The state (best value, its epoch, epochs without improvement) travels in last.pt, so a resumed
run counts on from where it stopped.
"""

from __future__ import annotations

import math
from typing import Any

from vit.errors import ConfigError
from vit.text import plural

__all__ = ["EarlyStopping", "MONITORS"]

MONITORS = {"val_top1": "max", "val_loss": "min"}  # the metric -> which way is better


class EarlyStopping:
    """The best epoch by ``monitor`` and the patience count; ``patience`` None or 0: never stop."""

    def __init__(self, *, monitor: str = "val_top1", patience: int | None = None):
        if monitor not in MONITORS:
            raise ConfigError(f"train.monitor must be one of {list(MONITORS)}, got {monitor!r}")
        if patience is not None and patience < 0:
            raise ConfigError(f"train.patience must be >= 0 (0 or null: off), got {patience}")
        self.monitor, self.patience = monitor, patience or 0
        self.best: float | None = None
        self.best_epoch = 0  # 1-based; 0: none yet
        self.bad_epochs = 0  # epochs since the best one

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if MONITORS[self.monitor] == "max" else value < self.best

    def update(self, *, epoch: int, metrics: dict[str, Any]) -> bool:
        """Record epoch ``epoch`` (1-based); returns whether it is the best so far."""
        value = metrics.get(self.monitor)
        if value is None or not math.isfinite(value):
            value = -math.inf if MONITORS[self.monitor] == "max" else math.inf
        if self._better(value):
            self.best, self.best_epoch, self.bad_epochs = float(value), epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    def reason(self) -> str:
        return (f"early stopping: {self.monitor} has not improved for "
                f"{plural(self.bad_epochs, 'epoch')} "
                f"(train.patience={self.patience}); best {self.monitor} {self.best:.4g} at epoch "
                f"{self.best_epoch}, which best.pt holds")

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "best": self.best, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any] | None, *, best_top1: float | None = None,
                        epoch: int = 0) -> None:
        """Put a resumed run's count back. A checkpoint without it (written before early
        stopping existed, or by a run that monitored another metric) starts the count at 0,
        from the run's best top-1 when that is the metric."""
        if state and state.get("monitor") == self.monitor:
            self.best, self.best_epoch = state["best"], int(state["best_epoch"])
            self.bad_epochs = int(state["bad_epochs"])
        elif self.monitor == "val_top1" and best_top1 is not None:
            self.best, self.best_epoch, self.bad_epochs = float(best_top1), epoch, 0
