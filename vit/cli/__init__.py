"""The `vit` command: one module per command; argparse and printing live only here.

    main             the parser (a static registry of the commands), logging set-up, and
                     errors turned into one line and an exit code
    options          the options several commands share, declared once (--checkpoint,
                     --batch-size, --device, --tta, --debug/--quiet), and the help formatter
    train            vit train: a run, or the quickstart with no arguments
    evaluate         vit evaluate: a checkpoint on a labelled folder or label file
    predict          vit predict: top-k classes of images
    explain          vit explain: saliency overlays, grid pages, the explorer page
    explain_bench    vit explain-bench: which saliency map to believe for a checkpoint
    export           vit export: safetensors or ONNX
    attention_stats  vit attention-stats: attention distance and entropy per layer and head
    check            vit check: every image of a folder decoded
    shard            vit shard: an image folder as WebDataset tar shards
    models           vit models: the presets
    push             vit push: a run to the Hub or a folder (and its demo Space)
    demo             vit demo: the Gradio app
"""

from vit.cli.main import main, run

__all__ = ["main", "run"]
