"""Where the model looks, and whether to believe it. Uses the model only.

    rollout       attention rollout, gradient rollout, raw attention (the maps)
    overlay       a map over the image, as RGB
    faithfulness  deletion / insertion AUC and the random baseline
    inputs        argument checks; running the model in eval mode and full precision
    attention_stats  mean attention distance and entropy per layer and head
    explorer      the attention explorer page (explorer_html: its encoding and HTML)

    from vit.explain import attention_rollout, overlay, deletion_auc
"""

from vit.explain.attention_stats import attention_entropy, mean_attention_distance
from vit.explain.explorer import PageOptions, explorer_page
from vit.explain.faithfulness import (
    BASELINES,
    deletion_auc,
    insertion_auc,
    make_baseline,
    random_saliency,
)
from vit.explain.overlay import overlay
from vit.explain.rollout import (
    HEAD_FUSIONS,
    METHODS,
    attention_rollout,
    discard_lowest,
    explain,
    fuse_heads,
    grad_rollout_from_attentions,
    gradient_rollout,
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
    "mean_attention_distance",
    "attention_entropy",
    "explorer_page",
    "PageOptions",
]
