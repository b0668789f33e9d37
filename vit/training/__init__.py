"""A training run: uses models, data and inference.

    trainer      a whole run, from a config to the files in the run folder
    epoch        one epoch of training and one validation pass
    optim        AdamW on timm's parameter groups, warmup + cosine, freezing
    distributed  torchrun: process group, rank 0, all-reduce
    quickstart   the no-argument recipe and its synthetic data
"""
