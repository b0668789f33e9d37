"""vit: train Vision Transformers on image folders, classify images, explain with attention rollout.

    from vit import create_model, Classifier, attention_rollout, overlay
"""

from importlib import import_module
from typing import Any

from vit.model import VisionTransformer, ViTConfig, create_model, list_models

__version__ = "0.1.0"

# Heavier parts load on first use, so `import vit` stays fast.
_LAZY = {
    "Classifier": "vit.predict",
    "attention_rollout": "vit.explain",
    "gradient_rollout": "vit.explain",
    "overlay": "vit.explain",
    "raw_attention": "vit.explain",
    "explain": "vit.explain",
    "deletion_auc": "vit.explain",
    "insertion_auc": "vit.explain",
    "explorer_page": "vit.explorer",
    "write_explorer_page": "vit.attention_files",
    "mean_attention_distance": "vit.attention_stats",
    "attention_entropy": "vit.attention_stats",
    "load_config": "vit.config",
    "Config": "vit.config",
}

__all__ = ["VisionTransformer", "ViTConfig", "create_model", "list_models", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vit' has no attribute {name!r}")
