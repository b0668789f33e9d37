"""vit: train Vision Transformers on image folders, classify images, explain with attention rollout.

    from vit import create_model, Classifier, attention_rollout, overlay
"""

from importlib import import_module
from typing import Any

from vit.models.presets import create_model, list_models
from vit.models.vision_transformer import VisionTransformer, ViTConfig

__version__ = "0.1.0"

# Heavier parts load on first use, so `import vit` stays fast.
_LAZY = {
    "Classifier": "vit.inference.classifier",
    "attention_rollout": "vit.explain.rollout",
    "gradient_rollout": "vit.explain.rollout",
    "overlay": "vit.explain.overlay",
    "raw_attention": "vit.explain.rollout",
    "explain": "vit.explain.rollout",
    "deletion_auc": "vit.explain.faithfulness",
    "insertion_auc": "vit.explain.faithfulness",
    "explorer_page": "vit.explain.explorer",
    "write_explorer_page": "vit.inference.attention_files",
    "mean_attention_distance": "vit.explain.attention_stats",
    "attention_entropy": "vit.explain.attention_stats",
    "load_config": "vit.config",
    "Config": "vit.config",
}

__all__ = ["VisionTransformer", "ViTConfig", "create_model", "list_models", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vit' has no attribute {name!r}")
