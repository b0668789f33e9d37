"""The model and its weights: knows nothing of data or training.

    vision_transformer  the ViT, read top to bottom
    presets             named configurations (create_model, list_models) and their FLOPs
    timm_interop        our model from timm's, and timm's pretrained weights by name
    timm_models         timm's ViT families as they are (timm:NAME): build, load weights through timm
    architecture        what a model is, either kind: its record in checkpoints, rebuild, describe
    checkpoint          our checkpoint format: make, load, rebuild the model
    pretrained          pretrained weights for fine-tuning: read, adapt, load
    hub                 a Hub repository or a pushed folder as local files (hf_hub_download)
"""
