"""The model and its weights: knows nothing of data or training.

    vision_transformer  the ViT, read top to bottom; presets; timm interop; FLOPs
    checkpoint          our checkpoint format: make, load, rebuild the model
    pretrained          pretrained weights for fine-tuning: read, adapt, load
"""
