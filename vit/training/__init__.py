"""A training run: uses models, data and inference.

    trainer      train(): a whole run, from a config to the files in the run folder (Trainer)
    setup        a run's set-up: the machine, the checks, the run folder, the model and the data
                 (RunInputs), what the epochs run on (RunParts)
    run_start    the start of a run: the defaults chosen, config.yaml and the data files, the
                 trackers, the model line
    checkpointing  what last.pt holds (gathered from every process) and best.pt's share of it
    epoch        one epoch of training (StepParts, EpochStart, EpochOptions) and one validation pass
    run_log      what a run logs: the model and processes lines, an epoch's metrics and its line
    skip_log     the files loader workers could not decode, collected into the run's data
    optim        AdamW on timm's parameter groups, warmup + cosine, freezing
    resume       exact resume: random generators, last.pt read once and put back
    run_files    metrics.jsonl, last.pt, best.pt, curves.png as epochs end; overlays and the
                 explorer page at the end
    budget       how many epochs fit in train.time_budget_min
    distributed  torchrun: process group, rank 0, all-reduce
    quickstart   the no-argument recipe and its synthetic data
    defaults     what a run leaves unset, chosen to fit the data and the machine (data.recipe)
    model_build  the model a run trains: a preset, pretrained weights adapted, or a timm model
    early_stop   early stopping (train.patience, train.monitor)
    trackers     TensorBoard, W&B and MLflow (train.report_to)
    parallel     train.strategy: DDP or FSDP2, activation checkpointing, gathered checkpoints
    faults       the faults of scale (killed worker, lost peer, full disk) as one line each; stop
                 signals (TrainingInterrupted)
    run_lock     RUN/run.lock: one run per folder
"""
