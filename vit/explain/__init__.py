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
    catalog         the saliency methods, listed once (name, label, paper, the function); no torch

    from vit.explain import saliency, attention_maps, overlay, deletion_auc

Every name loads on first use: ``import vit.explain`` (and ``vit.explain.catalog``, which the
command line's help reads) loads no torch.

``vit.explain`` is this package. Code written when ``vit.explain`` was a function may still call
it, ``vit.explain(model, images, ...)``: that works and warns (DeprecationWarning); the
function is ``vit.explain.explain``.
"""

import sys
from importlib import import_module
from importlib.util import find_spec
from types import ModuleType
from typing import Any
from warnings import warn

# Each public name and the module of this package that defines it, in the order of __all__.
_LAZY = {
    "METHODS": "saliency",
    "CLASS_SPECIFIC": "saliency",
    "DEFAULT_METHOD": "catalog",
    "HEAD_FUSIONS": "rollout",
    "LEGRAD_POOLS": "legrad",
    "LRP_RULES": "lrp",
    "BASELINES": "faithfulness",
    "saliency": "saliency",
    "attention_maps": "attention_maps",
    "grad_rollout": "grad_rollout",
    "legrad": "legrad",
    "attnlrp": "lrp",
    "gradcam": "gradcam",
    "attention_rollout": "saliency",
    "gradient_rollout": "saliency",
    "raw_attention": "saliency",
    "explain": "saliency",
    "rollout_rows": "rollout",
    "fuse_heads": "rollout",
    "discard_lowest": "rollout",
    "overlay": "overlay",
    "deletion_auc": "faithfulness",
    "insertion_auc": "faithfulness",
    "random_saliency": "faithfulness",
    "make_baseline": "faithfulness",
    "token_drop_auc": "token_drop",
    "token_drop_curves": "token_drop",
    "occlusion": "occlusion",
    "spearman": "sanity",
    "randomised_cascade": "sanity",
    "mean_attention_distance": "attention_stats",
    "attention_entropy": "attention_stats",
    "explorer_page": "explorer",
    "PageOptions": "explorer",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    """A public name, loaded from its module on first use; or a submodule
    (``vit.explain.rollout``), as when this package imported them all."""
    if name in _LAZY:
        value = getattr(import_module(f"vit.explain.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    if not name.startswith("_") and find_spec(f"vit.explain.{name}") is not None:
        return import_module(f"vit.explain.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names, loaded or not, and what the package holds already."""
    return sorted({*globals(), *__all__})


class _CallablePackage(ModuleType):
    """``vit.explain(...)``, the function this name once was: ``explain``, with a warning."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        warn("calling vit.explain(...) is deprecated: vit.explain is the subpackage; "
             "call vit.explain.explain(...) or vit.saliency(...)", DeprecationWarning,
             stacklevel=2)
        return import_module("vit.explain.saliency").explain(*args, **kwargs)

    def __setattr__(self, name: str, value: Any) -> None:
        # Importing a submodule binds it on this package. Where a public function has the
        # submodule's name (saliency, overlay, legrad, ...), the name stays the function.
        if isinstance(value, ModuleType) and _LAZY.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _CallablePackage
