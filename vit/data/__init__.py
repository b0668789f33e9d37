"""Images to batches: knows nothing of models or training.

    folders     the folder layout, scanning by class, the files/folders/globs a command is given
    images      decoding that survives bad files
    check       the cheap pre-flight check and its per-folder cache; the full check (vit check)
    splits      stratified split, class counts and weights, the data report
    augmentation the training augmentation declared once (crop defaults, the RandAugment table)
    transforms  albumentations: training augmentation, the evaluation crop, normalisation
    dataset     the training Dataset
    loader      the sampler that makes resume exact, and the DataLoader around it
    memory      data.pipeline=memory: decode once into a uint8 tensor, augment batches on the device
    synthetic   the built-in shapes dataset with object boxes
    squares     coloured squares: one per training image, two per test image (objects.json)
    labels      label files: a CSV of path,label[,split], read and checked
    shards      WebDataset tar shards: writing them (vit shard), the streaming ShardDataset
    sources     where a run's images come from: the DataSource interface, open_source, and the
                folder, label-file, shard and synthetic sources
"""
