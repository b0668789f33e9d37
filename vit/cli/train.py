"""`vit train` / `python train.py`: the command-line face of ``vit.training.trainer.train``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from vit.config import Config, load_config, set_value

logger = logging.getLogger(__name__)

# the progress line of `vit train` when stderr is not a terminal (the bar's place in a log)
PROGRESS_LOG_EVERY_S = 60.0

# flag -> dotted config key
FLAG_KEYS = {
    "data": "data.root",
    "model": "model.name",
    "img_size": "model.img_size",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "precision": "train.precision",
    "device": "train.device",
    "workers": "data.workers",
    "val_fraction": "data.val_fraction",
    "seed": "train.seed",
    "output": "train.output",
    "pretrained": "train.pretrained",
    "freeze": "train.freeze",
}


def register(sub: argparse._SubParsersAction) -> None:
    from vit.cli.options import add_common_flags, add_parser

    p = add_parser(
        sub, "train", help="train on an image folder or tar shards (no arguments: the quickstart)",
        description="Train a ViT. Data inputs (--data): an image folder DIR/<class>/<image> "
        "(a stratified --val-fraction is held out); DIR/train/<class>/... plus DIR/val/<class>/"
        "... (validation as given); a label file LABELS.csv with path,label[,split] columns "
        "(paths relative to its folder; split: train, val, test); or WebDataset tar shards written by `vit shard`, as a "
        "quoted brace pattern 'OUT/train-{000000..000123}.tar' (validation: the val shards "
        "beside them, or data.val_root=DIR_OR_PATTERN). With no arguments: the quickstart on "
        "a built-in synthetic shapes dataset (configs/quickstart.yaml). Defaults below are "
        "those of a run with --data and no --config; a recipe (--config) sets its own.",
        epilog="Any config key can be set as section.key=value, e.g. train.ema=true "
        "loss.mixup_alpha=0.8 data.randaug_m=7 (sections: model, data, train, loss; see "
        "vit/config.py). `vit models` lists the model names.")
    _add_flags(p, Config())
    add_common_flags(p)
    p.set_defaults(func=run)


def _add_flags(p: argparse.ArgumentParser, d: Config) -> None:
    """The options of `vit train`; their defaults are those of ``d``."""
    from vit.cli.options import add_batch_size

    p.add_argument("--data", metavar="DIR|LABELS.csv|'SHARDS-{0..N}.tar'",
                   help="image folder (DIR/<class>/..., or DIR/train + DIR/val), a label file "
                   "(a CSV with path,label columns, paths relative to its folder; optional "
                   "split column: train, val, test) or tar shards (default: none, which runs "
                   "the quickstart)")
    p.add_argument("--config", metavar="YAML",
                   help="a recipe, e.g. configs/flowers_vit_nano_cpu.yaml (default: none)")
    p.add_argument("--model", metavar="NAME",
                   help=f"model preset, see `vit models`, or timm:NAME for a timm ViT-family "
                   f"model (docs/timm.md) (default: {d.model.name}; with --pretrained the "
                   "architecture comes from the weights, except for timm:NAME)")
    p.add_argument("--img-size", type=int, metavar="N",
                   help="training resolution in pixels (default: the model's, or the "
                   "pretrained weights')")
    p.add_argument("--epochs", type=int, metavar="N",
                   help=f"passes over the training images (default: {d.train.epochs})")
    add_batch_size(p, default=None, help="global batch per step (default: about 32 steps per "
                   "epoch, 8 to 128; a batch larger than the training images is lowered with a "
                   "warning)")
    p.add_argument("--lr", type=float, metavar="X",
                   help=f"peak learning rate of AdamW (default: {d.train.lr:g})")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                   help=f"autocast precision; auto: bf16/fp16 on a GPU, fp32 on the CPU "
                   f"(default: {d.train.precision})")
    p.add_argument("--device", metavar="auto|cpu|cuda",
                   help=f"where to train; auto picks the GPU when there is one "
                   f"(default: {d.train.device})")
    p.add_argument("--workers", type=int, metavar="N",
                   help="data loader processes (default: one fewer than the CPU cores, at "
                   "most 8)")
    p.add_argument("--val-fraction", type=float, metavar="F",
                   help=f"share of images held out for validation when there is no val/ "
                   f"folder (default: {d.data.val_fraction})")
    p.add_argument("--seed", type=int, metavar="N",
                   help=f"random seed of split, initialisation and augmentation "
                   f"(default: {d.train.seed})")
    p.add_argument("--output", metavar="RUN_DIR", help="run folder (default: runs/<time>)")
    p.add_argument("--resume", metavar="RUN_DIR_OR_CKPT",
                   help="continue an interrupted run (default: a new run)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--pretrained", metavar="SOURCE",
                   help="fine-tune from a checkpoint, a timm state_dict file, timm:NAME or "
                   "hf:USER/NAME (a model on the Hugging Face Hub, e.g. from `vit push`) "
                   "(default: none, train from scratch)")
    p.add_argument("--freeze", metavar="none|backbone|all-but-last-N",
                   help=f"parts of a pretrained model to keep fixed (default: {d.train.freeze})")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. train.ema=true (default: none)")


def check_args(args: argparse.Namespace) -> None:
    """Mistakes a newcomer makes, caught before anything loads, with the fix in the message."""
    from pathlib import Path

    from vit.errors import ConfigError

    for text in args.overrides:
        if "=" not in text and Path(text).is_dir():
            raise ConfigError(f"{text!r} is a folder, not a key=value override: did you mean "
                              f"--data {text}?")
    pretrained = args.pretrained or next(
        (t.split("=", 1)[1] for t in args.overrides if t.startswith("train.pretrained=")), None)
    if args.model is not None and pretrained and not args.model.startswith("timm:"):
        raise ConfigError(f"--model {args.model} and --pretrained {pretrained} both choose the "
                          "architecture; with --pretrained it comes from the weights, so drop "
                          "--model (or drop --pretrained to train that model from scratch; "
                          "a timm model takes both: --model timm:NAME --pretrained FILE)")


def is_quickstart(args: argparse.Namespace) -> bool:
    return args.data is None and args.config is None and args.resume is None


def resolve_config(args: argparse.Namespace,
                   resume_state: dict[str, Any] | None = None) -> Config:
    """Recipe (or the resumed run's config, from its checkpoint ``resume_state``) <- flags <-
    key=value overrides."""
    if args.resume is not None:
        from vit.config import config_from_dict

        if resume_state is None:
            raise ValueError("resolving the config of a resumed run needs its checkpoint")
        cfg = config_from_dict(resume_state.get("config"))
    elif is_quickstart(args):
        from vit.training.quickstart import quickstart_config

        cfg = quickstart_config()
    else:
        cfg = load_config(args.config)
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            set_value(cfg, key, value)
    if args.compile:
        set_value(cfg, "train.compile", True)
    for text in args.overrides:
        from vit.config import parse_override

        set_value(cfg, *parse_override(text))
    return cfg


def run(args: argparse.Namespace) -> int:
    check_args(args)  # before torch loads: a mistake answers at once
    from vit.runtime import keep_freed_memory
    from vit.training.resume import ResumePoint
    from vit.training.trainer import TrainingInterrupted, train

    keep_freed_memory()  # 5-10% faster CPU steps; changes no result
    resume = ResumePoint.load(args.resume) if args.resume is not None else None  # read once
    cfg = resolve_config(args, resume.state if resume is not None else None)
    quick = is_quickstart(args)
    if quick:
        from vit.runtime import resolve_device, resolve_precision
        from vit.training.quickstart import prepare_quickstart_data

        cfg.data.root = str(prepare_quickstart_data(cfg))
        device = resolve_device(cfg.train.device)
        print(f"quickstart: synthetic shapes in {cfg.data.root}; training {cfg.model.name} "
              f"for {cfg.train.epochs} epochs on {device} "
              f"({resolve_precision(cfg.train.precision, device)})", file=sys.stderr)
    show_progress = sys.stderr.isatty() and not args.quiet
    try:  # output to a file: a progress line every minute instead of the bar
        summary = train(cfg, resume=resume, show_progress=show_progress,
                        log_every_s=None if show_progress else PROGRESS_LOG_EVERY_S)
    except TrainingInterrupted as e:
        import signal

        print(str(e), file=sys.stderr)
        return 128 + signal.Signals[e.signal_name].value  # 130 for Ctrl-C, 143 for SIGTERM
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 reports for everyone
        return 0
    if summary.overlays is not None:
        print(f"saliency overlays ({summary.overlays_method}): {summary.overlays}",
              file=sys.stderr)
    if summary.explorer is not None:
        print(f"attention explorer: {summary.explorer} (open it in a browser: click a patch to "
              "see where it looks, layer by layer and head by head)", file=sys.stderr)
    best = f"{summary.best_top1:.2f}%" if summary.best_top1 is not None else "n/a"
    if summary.stopped_early:  # the log says why
        best += f" (stopped early after epoch {summary.epochs_done} of {cfg.train.epochs})"
    print(f"done: best val top-1 {best}; run folder {summary.run_dir} "
          f"(best.pt, last.pt, metrics.jsonl, curves.png)")
    return 0
