"""vit: train Vision Transformers on image folders, classify images, explain with attention rollout.

    from vit import create_model, Classifier, attention_rollout, overlay
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

__all__ = [*_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vit' has no attribute {name!r}")
