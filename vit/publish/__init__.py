"""A trained run shown to others: the Hub repository, its model card, the demo and its Space.
Uses models, explain and inference.

    hub         vit push: a run as a Hub repository (weights, timm config.json, images)
    model_card  the repository's README.md
    demo        vit demo: the Gradio app (prediction and saliency overlay)
    space       vit push --demo: the same app as a Hugging Face Space
"""
