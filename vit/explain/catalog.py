"""The saliency methods, listed once: a new method is its module in ``vit/explain/`` and one entry
in ``CATALOG``. No torch here, so that ``vit --help`` can name the methods without loading them.

What reads the list: ``vit.explain.saliency`` (``METHODS``, ``CLASS_SPECIFIC``, the function
behind each name), the explorer page (each method's label), the help of ``vit explain`` and
``vit explain-bench`` (the names), and through ``METHODS`` everything else (explain-bench, the
overlays, the demo).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Method", "CATALOG", "DEFAULT_METHOD"]


@dataclass(frozen=True)
class Method:
    """One saliency method.

    name            its key: ``saliency(model, images, method=name)``, ``vit explain --method``
    label           what the explorer page calls it
    about           what it computes, and its paper
    class_specific  whether its map is for a class (it takes ``target=``)
    function        its implementation, ``module:function`` of a module of ``vit/explain/``
    """

    name: str
    label: str
    about: str
    class_specific: bool
    function: str


# In the order the methods are listed, tried and drawn everywhere.
CATALOG: tuple[Method, ...] = (
    Method("rollout", "attention rollout from [CLS] (Abnar & Zuidema 2020)",
           "attention rollout (Abnar & Zuidema 2020), from [CLS] or any query token",
           False, "rollout:rollout"),
    Method("grad-rollout", "gradient rollout (Chefer et al. 2021)",
           "gradient-weighted rollout (Chefer et al. 2021, ICCV)",
           True, "grad_rollout:grad_rollout"),
    Method("attention", "last-layer attention of [CLS]",
           "one layer's attention row (default: the last layer's [CLS] row)",
           False, "rollout:attention"),
    Method("legrad", "LeGrad (Bousselham et al. 2024)",
           "LeGrad (Bousselham et al. 2024)",
           True, "legrad:legrad"),
    Method("attnlrp", "AttnLRP (Achtibat et al. 2024)",
           "AttnLRP (Achtibat et al. 2024, ICML), layer-wise relevance of the target logit",
           True, "lrp:attnlrp"),
    Method("gradcam", "Grad-CAM (Selvaraju et al. 2017)",
           "Grad-CAM (Selvaraju et al. 2017) on the last block's patch tokens",
           True, "gradcam:gradcam"),
)

# The default where explain-bench recorded no recommendation for the model: the best across the
# seven models measured by explain-bench's rule (recommended on 5 of them; docs/explanations.md,
# "Which method, across models"); rollout fails the randomisation check on every one.
DEFAULT_METHOD = "attnlrp"
