"""Run configuration: dataclasses, loaded from YAML and overridden by dotted ``key=value`` pairs.

    cfg = load_config("configs/cifar10_vit_tiny.yaml", ["train.epochs=5", "model.name=vit_small_patch4_32"])

Unknown keys and wrongly typed values raise a ``ConfigError`` naming the key and the valid ones.
``to_yaml(cfg)`` writes the resolved config; loading it back gives an equal ``Config``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from vit.errors import ConfigError


@dataclass
class ModelConfig:
    """Which architecture to build. ``None`` keeps the preset's value."""

    name: str = "vit_tiny_patch4_32"
    img_size: int | None = None
    patch_size: int | None = None
    global_pool: str | None = None  # "token" or "avg"
    reg_tokens: int | None = None
    qk_norm: bool | None = None
    init_values: float | None = None  # LayerScale init (None: preset's, i.e. off)
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float | None = None
    drop_rate: float = 0.0
    drop_path_rate: float | None = None  # None: from the data (vit/training/defaults.py)


@dataclass
class DataConfig:
    """Where the images are and how they become tensors."""

    # DIR/<class>/..., DIR/train/<class>/... (+ DIR/val/...), or tar shards written by
    # `vit shard`: 'OUT/train-{000000..000123}.tar'
    root: str | None = None
    # validation for shards: a folder or a shard pattern (default: the val shards in _info.json)
    val_root: str | None = None
    shuffle_buffer: int = 2048  # shards: samples mixed in each loader worker's buffer
    val_fraction: float = 0.1  # held out (stratified) when there is no val/ folder
    workers: int | None = None  # None: one fewer than the CPU cores, at most 8
    # before training, check every file cheaply (header, end marker; vit/data/check.py) and
    # skip the unreadable; `vit check DIR` decodes everything
    preflight: bool = True
    cache: bool = True  # remember the check per folder in $VIT_CACHE_DIR (~/.cache/vit)
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    crop_pct: float | None = None  # eval centre crop; None: 0.875 at >= 128 px, 1.0 below
    # Augmentation. None: chosen from the image size, the number of images and the epochs
    # (vit/training/defaults.py), or from the named recipe light|medium|strong; logged.
    recipe: str | None = None
    scale: list[float] | None = None  # RandomResizedCrop area, e.g. [0.35, 1.0]
    ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333333])
    hflip: float = 0.5
    randaug_n: int | None = None  # RandAugment-style ops per image (0: off)
    randaug_m: int | None = None  # their strength, 0..10
    sampler: str = "random"  # "random" or "weighted" (inverse class frequency)
    # "albumentations": decode + augment per image in loader workers (any data set);
    # "memory": decode once into a uint8 tensor on the device, augment batches there
    # (small images; see vit/data/memory.py)
    pipeline: str = "albumentations"
    aug_batches: int = 1  # memory pipeline: augment this many batches per call (fewer launches)


@dataclass
class LossConfig:
    label_smoothing: float = 0.1
    mixup_alpha: float = 0.0  # timm Mixup; 0 disables
    cutmix_alpha: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    class_weights: str = "none"  # "none" or "balanced"


@dataclass
class TrainConfig:
    epochs: int = 10
    # early stopping: stop after `patience` epochs without a better `monitor` (null or 0: off);
    # `monitor` (val_top1 or val_loss) also picks the epoch best.pt holds
    patience: int | None = None
    monitor: str = "val_top1"
    # experiment trackers, any of [tensorboard, wandb, mlflow] (optional extras of the same
    # names; vit/training/trackers.py says where each writes); none by default
    report_to: list[str] = field(default_factory=list)
    # global batch per optimizer step = batch_size * accum_steps; None: about 32 steps per epoch
    # (8 to 128); a batch larger than the training images is lowered with a warning
    batch_size: int | None = None
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    clip_grad: float | None = 1.0
    accum_steps: int = 1
    ema: bool = False
    ema_decay: float = 0.999
    layer_decay: float | None = None  # e.g. 0.75 for fine-tuning (BEiT/MAE style)
    pretrained: str | None = None
    freeze: str = "none"  # "none", "backbone", or "all-but-last-N"
    precision: str = "auto"  # auto, fp32, bf16, fp16
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    compile: bool = False
    # torch.compile's mode when compile is on: "default", "reduce-overhead" (CUDA graphs),
    # "max-autotune", "max-autotune-no-cudagraphs"
    compile_mode: str = "default"
    # How several processes (torchrun) share the model: "ddp" (a whole copy each) or "fsdp"
    # (FSDP2: weights, gradients and AdamW state sharded per block; fp32 or bf16)
    strategy: str = "ddp"
    # Recompute each block's activations in the backward pass instead of keeping them
    activation_checkpointing: bool = False
    seed: int = 0
    output: str | None = None  # run folder; default runs/<timestamp>
    # Wall-clock budget in minutes (set-up and evaluation included). After every epoch from the
    # second on (the first carries start-up costs such as torch.compile), `epochs` is set to the
    # number of whole epochs that fit at the recent pace, and the learning-rate schedule ends
    # with them; `epochs` is the ceiling. A resumed run keeps the count it was saved with.
    time_budget_min: float | None = None
    # Write last.pt, best.pt and curves.png at most every this many seconds (0: every epoch).
    # The final epoch and an interruption always write; metrics.jsonl gets every epoch.
    save_every_s: float = 0.0
    explain_samples: int = 8  # saliency overlays (AttnLRP) written at the end (0: none)
    # the attention explorer page of the overlays' images, RUN/explorer.html, written last
    explorer_page: bool = False


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)


_CHOICES = {
    "model.global_pool": (None, "token", "avg"),
    "data.sampler": ("random", "weighted"),
    "data.recipe": (None, "light", "medium", "strong"),
    "data.pipeline": ("albumentations", "memory"),
    "loss.class_weights": ("none", "balanced"),
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
    "train.strategy": ("ddp", "fsdp"),
    "train.monitor": ("val_top1", "val_loss"),
    "train.compile_mode": ("default", "reduce-overhead", "max-autotune",
                           "max-autotune-no-cudagraphs"),
}


# --- type checking of values -------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Return ``value`` as type ``tp`` or raise ConfigError. Only lossless conversions."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover


def _section_types(section: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(section))


def set_value(cfg: Config, dotted_key: str, value: Any) -> None:
    """Set ``section.key`` to ``value`` after checking the key exists and the type fits."""
    parts = dotted_key.split(".")
    sections = [f.name for f in dataclasses.fields(Config)]
    if len(parts) != 2 or parts[0] not in sections:
        raise ConfigError(
            f"unknown config key {dotted_key!r}: keys look like SECTION.KEY with SECTION one of "
            f"{', '.join(sections)}"
        )
    section_name, key = parts
    section = getattr(cfg, section_name)
    hints = _section_types(section)
    if key not in hints:
        elsewhere = [name for name in sections if name != section_name
                     and key in _section_types(getattr(cfg, name))]
        if elsewhere:
            raise ConfigError(f"unknown config key {dotted_key!r}: {key} is in the "
                              f"{elsewhere[0]} section, use {elsewhere[0]}.{key}")
        raise ConfigError(
            f"unknown config key {dotted_key!r}; valid keys in {section_name}: "
            f"{', '.join(sorted(hints))}"
        )
    if dotted_key == "train.report_to" and isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]  # report_to=tensorboard
    value = _coerce(dotted_key, value, hints[key])
    choices = _CHOICES.get(dotted_key)
    if choices is not None and value not in choices:
        raise ConfigError(f"{dotted_key}: must be one of {choices}, got {value!r}")
    setattr(section, key, value)


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.epochs=5"`` -> ``("train.epochs", 5)``; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: cannot parse value ({e})") from e
    if isinstance(value, str) and value.lower() in ("none", "null"):
        value = None
    return key.strip(), value


def config_from_dict(d: dict[str, Any] | None) -> Config:
    cfg = Config()
    for section_name, section_values in (d or {}).items():
        if not isinstance(section_values, dict):
            raise ConfigError(f"config section {section_name!r} must be a mapping")
        for key, value in section_values.items():
            set_value(cfg, f"{section_name}.{key}", value)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file (if given) <- ``key=value`` overrides, all checked."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (model, data, train, loss)")
    cfg = config_from_dict(data)
    for text in overrides or []:
        set_value(cfg, *parse_override(text))
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
