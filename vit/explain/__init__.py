"""Where the model looks, and whether to believe it. Uses the model (and images) only.

    saliency        every method behind one batched call: saliency(model, images, method=...)
    rollout         attention rollout from any query token (the one implementation; every
                    token's at once for the explorer), one layer's attention row
    grad_rollout    gradient-weighted rollout (Chefer et al. 2021)
    legrad          LeGrad (Bousselham et al. 2024)
    lrp             AttnLRP (Achtibat et al. 2024) and CP-LRP
    gradcam         Grad-CAM (Selvaraju et al. 2017) on a block's patch tokens
    attention_maps  chosen layers', heads' and query rows' attention
    adapters        what the methods know of a model: one adapter per ViT family (this
                    package's, timm's ViT/DeiT/EVA/BEiT/relpos/NaFlexViT), the only way in
    attention_calls each block's attention as its family computes it (seen in SDPA)
    recompute       running the blocks in memory linear in the tokens (shared by the methods)
    overlay         a map over the image, as RGB
    faithfulness    deletion / insertion AUC with pixels replaced, and the random baseline
    token_drop      deletion / insertion with patch tokens dropped from the sequence
    occlusion       the occlusion oracle
    sanity          the model-randomisation check (Spearman, the cascade)
    inputs          argument checks; running the model in eval mode and full precision
    attention_stats mean attention distance and entropy per layer and head
    explorer        the attention explorer page: what it shows of each image
    explorer_html   the page's compact encoding and its HTML
    object_boxes    a known object's box on the patch grid after the evaluation crop
    recommend       which method to believe: explain-bench's rule, the recorded choice

    from vit.explain import saliency, attention_maps, overlay, deletion_auc

``vit.explain`` is this package. Code written when ``vit.explain`` was a function may still call
it, ``vit.explain(model, images, ...)``: that works and warns (DeprecationWarning); the
function is ``vit.explain.explain``.
"""

import sys
import types
import warnings

from vit.explain.attention_maps import attention_maps
from vit.explain.attention_stats import attention_entropy, mean_attention_distance
from vit.explain.explorer import PageOptions, explorer_page
from vit.explain.faithfulness import (
    BASELINES,
    deletion_auc,
    insertion_auc,
    make_baseline,
    random_saliency,
)
from vit.explain.grad_rollout import grad_rollout
from vit.explain.gradcam import gradcam
from vit.explain.legrad import LEGRAD_POOLS, legrad
from vit.explain.lrp import LRP_RULES, attnlrp
from vit.explain.occlusion import occlusion
from vit.explain.overlay import overlay
from vit.explain.rollout import HEAD_FUSIONS, discard_lowest, fuse_heads, rollout_rows
from vit.explain.saliency import (
    CLASS_SPECIFIC,
    DEFAULT_METHOD,
    METHODS,
    attention_rollout,
    explain,
    gradient_rollout,
    raw_attention,
    saliency,
)
from vit.explain.sanity import randomised_cascade, spearman
from vit.explain.token_drop import token_drop_auc, token_drop_curves

__all__ = [
    "METHODS",
    "CLASS_SPECIFIC",
    "DEFAULT_METHOD",
    "HEAD_FUSIONS",
    "LEGRAD_POOLS",
    "LRP_RULES",
    "BASELINES",
    "saliency",
    "attention_maps",
    "grad_rollout",
    "legrad",
    "attnlrp",
    "gradcam",
    "attention_rollout",
    "gradient_rollout",
    "raw_attention",
    "explain",
    "rollout_rows",
    "fuse_heads",
    "discard_lowest",
    "overlay",
    "deletion_auc",
    "insertion_auc",
    "random_saliency",
    "make_baseline",
    "token_drop_auc",
    "token_drop_curves",
    "occlusion",
    "spearman",
    "randomised_cascade",
    "mean_attention_distance",
    "attention_entropy",
    "explorer_page",
    "PageOptions",
]


class _CallablePackage(types.ModuleType):
    """``vit.explain(...)``, the function this name once was: ``explain``, with a warning."""

    def __call__(self, *args, **kwargs):
        warnings.warn("calling vit.explain(...) is deprecated: vit.explain is the subpackage; "
                      "call vit.explain.explain(...) or vit.saliency(...)", DeprecationWarning,
                      stacklevel=2)
        return explain(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
