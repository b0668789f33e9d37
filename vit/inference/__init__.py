"""Using a trained checkpoint on images: uses models, data and explain.

    classifier  Classifier: images in any form -> class probabilities
    tta         test-time augmentation: the views whose probabilities are averaged
    evaluate    evaluate_folder: report.json, predictions.csv and plots for a labelled folder
    accuracy    the one top-k count and accuracy in percent (plain torch: training uses it too)
    metrics     the evaluation metrics (torchmetrics)
    export      safetensors and ONNX files for deployment
"""
