"""explain-bench, in one place: which saliency map to believe for a model. Uses explain (the
methods and measures) and inference (the checkpoint's Classifier).

    measures    every measure for every method on a batch (explain_bench), on tensors
    report      the Markdown report of those measures and the recommendation
    figure      its figure: deletion against insertion, and the randomisation cascade
    run         vit explain-bench: a checkpoint and held-out images in, .md, .json and .png out
"""
