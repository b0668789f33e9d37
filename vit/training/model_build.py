"""The model a run trains: a preset of the package's ViT, pretrained weights adapted to the
classes, or a timm ViT-family model (``model.name=timm:NAME``), with or without its weights.

    model = build_model(cfg, classes=["cat", "dog"], pretrained=read_run_pretrained(cfg))
    img_size = run_img_size(cfg, pretrained)

For a timm model the ``model.*`` settings that are set (depth, embed_dim, num_heads, mlp_ratio,
patch_size, global_pool, reg_tokens, qk_norm, init_values, and the dropout rates) are passed to
``timm.create_model`` under the same names; a family that does not take one says so in one line.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from vit.config import Config, DataConfig, ModelConfig
from vit.errors import ConfigError
from vit.models.presets import create_model
from vit.models.timm_models import is_timm_name, is_timm_spec, timm_mean_std

__all__ = ["build_model", "read_run_pretrained", "run_img_size", "trains_timm_model",
           "fit_timm_normalisation"]

logger = logging.getLogger(__name__)

# model.* settings timm's ViT families take under the same name (None: the architecture's own)
TIMM_ARGS = ("patch_size", "global_pool", "reg_tokens", "qk_norm", "init_values", "embed_dim",
             "depth", "num_heads", "mlp_ratio")


def trains_timm_model(cfg: Config, pretrained: Any = None) -> bool:
    """Whether the run trains a timm model: ``model.name=timm:NAME``, or a checkpoint of one
    given as the pretrained weights."""
    return is_timm_name(cfg.model.name) or (
        pretrained is not None and is_timm_spec(pretrained.model_config))


def read_run_pretrained(cfg: Config) -> Any:
    """``train.pretrained`` read (``vit.models.pretrained.read_pretrained``), or None. With a
    timm model, ``timm:NAME`` weights stay timm's state_dict (not converted to the package's ViT)."""
    if not cfg.train.pretrained:
        return None
    from vit.models.pretrained import read_pretrained

    return read_pretrained(cfg.train.pretrained, convert=not is_timm_name(cfg.model.name))


def _timm_args(m: ModelConfig) -> dict[str, Any]:
    args = {k: getattr(m, k) for k in TIMM_ARGS if getattr(m, k) is not None}
    return {**args, "drop_rate": m.drop_rate, "drop_path_rate": m.drop_path_rate or 0.0}


def _timm_name_and_args(cfg: Config, pretrained: Any) -> tuple[str, dict[str, Any]]:
    """The timm architecture and its arguments: a checkpoint's record, else ``model.name``."""
    if pretrained is not None and is_timm_spec(pretrained.model_config):
        spec = pretrained.model_config
        if is_timm_name(cfg.model.name) and cfg.model.name != f"timm:{spec['timm_name']}":
            logger.info("using the architecture stored in %s (timm:%s); model name %s not used",
                        pretrained.description, spec["timm_name"], cfg.model.name)
        args = {k: v for k, v in spec["timm_args"].items() if k != "num_classes"}
        return spec["timm_name"], args
    return cfg.model.name, {}


def _build_timm(cfg: Config, *, classes: list[str], pretrained: Any) -> nn.Module:
    from vit.models.timm_models import create_timm_model

    name, args = _timm_name_and_args(cfg, pretrained)
    args = {**args, **_timm_args(cfg.model)}
    img_size = cfg.model.img_size or args.pop("img_size", None)
    args.pop("img_size", None)
    if pretrained is None:
        return create_timm_model(name, num_classes=len(classes), img_size=img_size, args=args)
    keep_head = None if pretrained.classes is None else list(pretrained.classes) == classes
    return create_timm_model(name, num_classes=len(classes), img_size=img_size, args=args,
                             state_dict=pretrained.state_dict, keep_head=keep_head,
                             source=pretrained.description)


def build_model(cfg: Config, *, classes: list[str], pretrained: Any = None) -> nn.Module:
    """The preset named in the config, pretrained weights adapted to these classes, or a timm
    model (``model.name=timm:NAME``; with pretrained weights, loaded through timm).

    With pretrained weights for the package's ViT the architecture comes from the file (ours
    records it; for a raw timm state_dict it is read off the tensor shapes); only the head and,
    when ``model.img_size`` differs, the position embedding adapt.
    """
    if trains_timm_model(cfg, pretrained):
        return _build_timm(cfg, classes=classes, pretrained=pretrained)
    m = cfg.model
    regularisation = dict(drop_rate=m.drop_rate, drop_path_rate=m.drop_path_rate)
    if pretrained is not None:
        from vit.models.pretrained import build_finetune_model

        model, _ = build_finetune_model(pretrained, num_classes=len(classes), classes=classes,
                                        img_size=m.img_size, overrides=regularisation)
        return model
    overrides = {k: v for k, v in dict(
        img_size=m.img_size, patch_size=m.patch_size, global_pool=m.global_pool,
        reg_tokens=m.reg_tokens, qk_norm=m.qk_norm, init_values=m.init_values,
        embed_dim=m.embed_dim, depth=m.depth, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
    ).items() if v is not None}
    try:
        return create_model(m.name, num_classes=len(classes), **overrides, **regularisation)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def run_img_size(cfg: Config, pretrained: Any) -> int:
    """The training resolution: model.img_size, else the pretrained file's, else the preset's
    (for a timm model: the architecture's, e.g. 518 for DINOv2)."""
    if cfg.model.img_size is not None:
        return cfg.model.img_size
    if trains_timm_model(cfg, pretrained):
        return _timm_img_size(cfg, pretrained)
    if pretrained is not None:
        from vit.models.pretrained import infer_config

        arch = pretrained.model_config or infer_config(pretrained.state_dict)
        return int(arch["img_size"])
    from vit.models.presets import model_config

    try:
        return model_config(cfg.model.name).img_size
    except ValueError as e:
        raise ConfigError(str(e)) from e


def _timm_img_size(cfg: Config, pretrained: Any) -> int:
    from vit.models.architecture import describe_spec

    name, args = _timm_name_and_args(cfg, pretrained)
    spec = {"timm_name": name.removeprefix("timm:"), "timm_args": {"num_classes": 0, **args}}
    return describe_spec(spec).img_size


def fit_timm_normalisation(cfg: Config, pretrained: Any) -> tuple[Config, list[tuple[int, str]]]:
    """A timm model fine-tuned from timm's weights sees images normalised as those weights were
    trained (timm's pretrained_cfg mean and std: CLIP's, SigLIP's 0.5, ImageNet's), unless
    ``data.mean`` / ``data.std`` were set."""
    defaults = DataConfig()
    if (pretrained is None or not is_timm_name(cfg.model.name)
            or pretrained.model_config is not None  # ours: its own preprocessing came along
            or (cfg.data.mean, cfg.data.std) != (defaults.mean, defaults.std)):
        return cfg, []
    mean, std = timm_mean_std(cfg.model.name)
    if [round(v, 6) for v in mean + std] == [round(v, 6) for v in defaults.mean + defaults.std]:
        return cfg, []
    from dataclasses import replace

    note = (f"data.mean {mean}, data.std {std}: the normalisation {cfg.model.name}'s timm "
            "weights were trained with (set data.mean / data.std to choose others)")
    return replace(cfg, data=replace(cfg.data, mean=mean, std=std)), [(logging.INFO, note)]
