"""vit: train Vision Transformers on image folders, classify images, explain them.

    import vit
    clf = vit.Classifier.from_checkpoint("runs/quickstart/best.pt")
    maps = vit.saliency(clf.model, clf.transform(["photo.jpg"]), method="attnlrp")

Models
    VisionTransformer, ViTConfig   the model and its configuration
    create_model, list_models      the named presets (``vit models``)
Classify
    Classifier                     a checkpoint (or a Hub model) and images -> probabilities
Explain (all of it, and more, in the subpackage ``vit.explain``)
    saliency                       every saliency method behind one call
    attention_maps                 chosen layers', heads' and query rows' attention
    overlay                        a map drawn over its image
    attention_rollout, gradient_rollout, raw_attention   one method each
    deletion_auc, insertion_auc    faithfulness of a map
    explain_bench, run_explain_bench   which map to believe, on a batch / on a checkpoint
    BenchSettings                  what they measure and how (methods, steps, the checks)
    explorer_page, write_explorer_page the attention explorer page
    mean_attention_distance, attention_entropy   attention statistics per layer and head
Configuration
    Config, load_config            a run's settings, from YAML and ``key=value`` overrides

``vit.explain`` is the subpackage (``vit.explain.saliency``, ``vit.explain.explain``, ...).
Calling it as a function, ``vit.explain(model, images)``, still works with a
DeprecationWarning; use ``vit.saliency`` or ``vit.explain.explain``.
"""

from importlib import import_module as _import_module
from typing import Any as _Any

__version__ = "0.1.0"

# Everything loads on first use, so `import vit` (and `vit --help`) never waits for torch.
_LAZY = {
    "VisionTransformer": "vit.models.vision_transformer",
    "ViTConfig": "vit.models.vision_transformer",
    "create_model": "vit.models.presets",
    "list_models": "vit.models.presets",
    "Classifier": "vit.inference.classifier",
    "saliency": "vit.explain.saliency",
    "attention_maps": "vit.explain.attention_maps",
    "attention_rollout": "vit.explain.saliency",
    "gradient_rollout": "vit.explain.saliency",
    "overlay": "vit.explain.overlay",
    "raw_attention": "vit.explain.saliency",
    "deletion_auc": "vit.explain.faithfulness",
    "insertion_auc": "vit.explain.faithfulness",
    "explain_bench": "vit.bench.measures",
    "run_explain_bench": "vit.bench.run",
    "BenchSettings": "vit.bench.measures",
    "explorer_page": "vit.explain.explorer",
    "write_explorer_page": "vit.figures.attention_files",
    "mean_attention_distance": "vit.explain.attention_stats",
    "attention_entropy": "vit.explain.attention_stats",
    "load_config": "vit.config",
    "Config": "vit.config",
}
# Subpackages reached as attributes (``vit.explain.saliency`` after a plain ``import vit``).
_SUBPACKAGES = ("explain",)

__all__ = [*_LAZY, *_SUBPACKAGES]


def __getattr__(name: str) -> _Any:
    if name in _LAZY:
        return getattr(_import_module(_LAZY[name]), name)
    if name in _SUBPACKAGES:
        return _import_module(f"vit.{name}")
    raise AttributeError(f"module 'vit' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names (``dir(vit)``, ``help(vit)``), loaded or not, and the module's own."""
    return sorted({*(n for n in globals() if n.startswith("__")), *__all__})
