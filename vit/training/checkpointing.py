"""What a run's checkpoints hold: last.pt, everything a resume needs, gathered from every
process (``run_checkpoint``); best.pt, its share that predicts (``best_checkpoint``)."""

from __future__ import annotations

from typing import Any

from vit.config import Config, to_dict
from vit.models.checkpoint import RESUME_KEYS, TrainingState, make_checkpoint
from vit.training.parallel import full_model_state, full_optimizer_state, is_sharded
from vit.training.resume import ResumeAt, capture_rng_state
from vit.training.setup import RunParts

__all__ = ["run_checkpoint", "best_checkpoint"]


def run_checkpoint(parts: RunParts, *, config: Config, at: ResumeAt, metrics: dict[str, Any],
                   is_main: bool) -> dict[str, Any] | None:
    """What last.pt holds when the run stands at ``at`` (epochs finished, batches of the next
    done, optimizer steps, best top-1, early stopping), ``metrics`` those of the last epoch.

    Every process calls it: the full model (FSDP) and optimizer state are gathered from all
    of them onto rank 0, the only one that gets a checkpoint (None elsewhere)."""
    model, steps = parts.model, parts.steps
    gathered = full_model_state(model) if is_sharded(model) else None
    optimizer_state = full_optimizer_state(model, steps.optimizer)
    if not is_main:
        return None
    ema = steps.ema
    training = TrainingState(
        optimizer=steps.optimizer, scaler=steps.scaler,
        ema_model=ema.module if ema is not None else None,
        train_model=model if ema is not None else None,
        extra={"batches_done": at.batches_done, "rng": capture_rng_state(),
               "early_stop": at.early_stop},
        optimizer_state=optimizer_state)
    return make_checkpoint(
        model=parts.eval_model, classes=parts.data.classes, preprocess=parts.preprocess,
        config=to_dict(config), epoch=at.epoch, step=at.step, best_top1=at.best_top1,
        metrics=metrics, training=training, model_state=gathered)


def best_checkpoint(last: dict[str, Any]) -> dict[str, Any]:
    """best.pt's share of a last.pt: the weights to predict with, without the resume state."""
    return {k: v for k, v in last.items() if k not in RESUME_KEYS}
