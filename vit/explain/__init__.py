"""Where the model looks: attention rollout, gradient rollout, raw attention, overlays, and
faithfulness (deletion / insertion AUC). Uses the model only.

    from vit.explain import attention_rollout, overlay, deletion_auc
"""

from vit.explain.rollout import (
    BASELINES,
    HEAD_FUSIONS,
    METHODS,
    attention_rollout,
    deletion_auc,
    discard_lowest,
    explain,
    fuse_heads,
    grad_rollout_from_attentions,
    gradient_rollout,
    insertion_auc,
    make_baseline,
    overlay,
    random_saliency,
    raw_attention,
    rollout_from_attentions,
)

__all__ = [
    "HEAD_FUSIONS",
    "METHODS",
    "BASELINES",
    "attention_rollout",
    "gradient_rollout",
    "raw_attention",
    "explain",
    "rollout_from_attentions",
    "grad_rollout_from_attentions",
    "fuse_heads",
    "discard_lowest",
    "overlay",
    "deletion_auc",
    "insertion_auc",
    "random_saliency",
    "make_baseline",
]
