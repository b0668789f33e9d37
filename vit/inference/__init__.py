"""Using a trained checkpoint: uses models, data and explain.

    classifier  Classifier: images in any form -> class probabilities
    evaluate    evaluate_folder: report.json, predictions.csv and plots for a labelled folder
    metrics     the one top-k count, accuracy in percent, the evaluation metrics (torchmetrics)
    export      safetensors and ONNX files for deployment
    overlays    explanation overlays for image files (vit explain, the end of a run)
"""
