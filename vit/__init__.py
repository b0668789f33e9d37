"""vit: train Vision Transformers on image folders, classify images, explain them.

    from vit import create_model, Classifier, saliency, attention_maps, overlay
"""

from importlib import import_module
from typing import Any

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
    "explain": "vit.explain.saliency",
    "deletion_auc": "vit.explain.faithfulness",
    "insertion_auc": "vit.explain.faithfulness",
    "explain_bench": "vit.explain.bench",
    "run_explain_bench": "vit.inference.explain_bench",
    "explorer_page": "vit.explain.explorer",
    "write_explorer_page": "vit.inference.attention_files",
    "mean_attention_distance": "vit.explain.attention_stats",
    "attention_entropy": "vit.explain.attention_stats",
    "load_config": "vit.config",
    "Config": "vit.config",
}

__all__ = [*_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vit' has no attribute {name!r}")
