"""The model and its weights: knows nothing of data or training.

    vision_transformer  the ViT, read top to bottom
    presets             named configurations (create_model, list_models) and their FLOPs
    timm_interop        our model from timm's, and timm's pretrained weights by name
    checkpoint          our checkpoint format: make, load, rebuild the model
    pretrained          pretrained weights for fine-tuning: read, adapt, load
"""
