"""timm's ViT-family models, fine-tuned as they are: built by name, pretrained weights loaded
through timm's own builder.

    model = create_timm_model("eva02_tiny_patch14_224", num_classes=5, img_size=224)
    model = create_timm_model("vit_small_patch14_reg4_dinov2", num_classes=5, img_size=224,
                              state_dict=weights, source="dinov2.pth")
    timm_spec(model)             {"timm_name": ..., "timm_args": {...}}: what checkpoints store
    model_from_timm_spec(spec)   the same architecture, freshly initialised

The model is timm's module itself (``timm.create_model``; no copy of its code, no wrapper), so its
parameter names are timm's and a state_dict saved from it loads in timm. Pretrained weights go
through ``timm.create_model(..., pretrained=True)`` with the state_dict as the source: timm's
checkpoint filter for the family resamples what depends on the image size (the absolute position
embedding, BEiT's and the relpos ViT's relative-position tables, the patch kernel) and drops the
classifier when it does not fit the classes. Before that, the file's names are checked against
the model's, so a file of another architecture is one line, not a half-loaded model.

Distilled DeiT (``VisionTransformerDistilled``): with no teacher the model is trained as timm does
with ``distilled_training`` off. Its logits are the mean of the class-token head and the
distillation-token head, in training and in prediction; both heads are made for the classes and
both learn from the labels (``DISTILLED_HEADS``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from vit.errors import CheckpointError, ConfigError, first_line

__all__ = ["TIMM_PREFIX", "FAMILIES", "FAMILY_MODULES", "DISTILLED_HEADS", "is_timm_name",
           "timm_name", "create_timm_model", "timm_spec", "is_timm_spec", "model_from_timm_spec",
           "timm_exportable", "timm_mean_std"]

logger = logging.getLogger(__name__)

TIMM_PREFIX = "timm:"
# timm model classes fine-tuned here -> the names that build them (for messages and docs)
FAMILIES = {
    "VisionTransformer": "vit_* (plain, CLIP, SigLIP, DINOv2, registers, gap), deit_*, deit3_*",
    "VisionTransformerDistilled": "deit_*_distilled_*",
    "Eva": "eva02_*, vit_*_dinov3, vit_*_rope_*",
    "Beit": "beit_*, beitv2_*",
    "VisionTransformerRelPos": "vit_relpos_*, vit_srelpos_*",
}
# the timm modules that register them (where timm:NAME weights may come from)
FAMILY_MODULES = ("vision_transformer", "deit", "eva", "beit", "vision_transformer_relpos")
DISTILLED_HEADS = ("distilled DeiT: the logits are the mean of the class-token and the "
                   "distillation-token heads (timm with distilled_training off); both heads are "
                   "new for these classes and both learn from the labels (no teacher)")
SPEC_NAME, SPEC_ARGS = "timm_name", "timm_args"
LIST_NAMES = "python -c \"import timm; print(timm.list_models('vit_*'))\""


def _supported() -> str:
    return "; ".join(f"{cls} ({names})" for cls, names in FAMILIES.items())


def is_timm_name(name: str | None) -> bool:
    """Whether a model name (``model.name``, ``--model``) names a timm model: ``timm:NAME``."""
    return isinstance(name, str) and name.startswith(TIMM_PREFIX)


def timm_name(name: str) -> str:
    """``timm:NAME`` -> ``NAME``, checked to be a model timm knows (``ConfigError`` if not)."""
    import timm  # takes seconds to import; only needed here

    bare = name[len(TIMM_PREFIX):] if is_timm_name(name) else name
    if not bare or not timm.is_model(bare):
        raise ConfigError(f"unknown timm model {bare!r}; the ViT families fine-tuned here: "
                          f"{_supported()}; list the names with {LIST_NAMES}")
    return bare


def _create(name: str, kwargs: Mapping[str, Any], **pretrained: Any) -> nn.Module:
    """``timm.create_model`` with the mistakes a config can make as one ``ConfigError`` line."""
    import timm

    try:
        return timm.create_model(name, **pretrained, **kwargs)
    except TypeError as err:  # an argument this family does not take
        raise ConfigError(f"timm:{name} ({_family_of(name)}) cannot be built with "
                          f"{dict(kwargs)}: {first_line(err)}; drop that model.* setting") from err
    except (AssertionError, ValueError) as err:  # sizes that do not fit together
        raise ConfigError(f"timm:{name} cannot be built with {dict(kwargs)}: "
                          f"{first_line(err)}") from err


def _family_of(name: str) -> str:
    import timm

    with torch.device("meta"):
        try:
            return type(timm.create_model(name, pretrained=False)).__name__
        except Exception:
            return "timm model"


def _check_family(model: nn.Module, name: str) -> None:
    cls = type(model)
    if cls.__name__ not in FAMILIES or not cls.__module__.startswith("timm."):
        raise ConfigError(f"timm:{name} is a {cls.__name__}, which is not fine-tuned here; the "
                          f"ViT families that are: {_supported()}; list the names with "
                          f"{LIST_NAMES}")


def create_timm_model(
    name: str, *, num_classes: int, img_size: int | None = None,
    args: Mapping[str, Any] | None = None, state_dict: Mapping[str, torch.Tensor] | None = None,
    keep_head: bool | None = None, source: str = "the pretrained weights",
) -> nn.Module:
    """timm's model ``name`` (``timm:`` prefix optional) for ``num_classes`` classes.

    ``args`` are more ``timm.create_model`` arguments (depth, embed_dim, drop_path_rate, ...).
    With ``state_dict`` (timm's names, e.g. ``timm.create_model(NAME, pretrained=True)
    .state_dict()``) the weights are loaded through timm, resampled to ``img_size``; the
    classifier is kept when it has ``num_classes`` rows (``keep_head=False``: never).
    """
    name = timm_name(name)
    kwargs = {"num_classes": num_classes, **({"img_size": img_size} if img_size else {}),
              **dict(args or {})}
    with torch.device("meta"):  # cheap: the family and the names, before any memory is used
        shape = _create(name, kwargs, pretrained=False)
    _check_family(shape, name)
    if state_dict is None:
        model = _create(name, kwargs, pretrained=False)
    else:
        model = _load_through_timm(name, kwargs, shape=shape, state_dict=state_dict,
                                   keep_head=keep_head, source=source)
    model.vit_timm_spec = {SPEC_NAME: name, SPEC_ARGS: kwargs}  # read back by timm_spec
    return model


def _classifier_names(model: nn.Module) -> tuple[str, ...]:
    names = model.pretrained_cfg.get("classifier") or "head"
    return (names,) if isinstance(names, str) else tuple(names)


def _load_through_timm(name: str, kwargs: Mapping[str, Any], *, shape: nn.Module,
                       state_dict: Mapping[str, torch.Tensor], keep_head: bool | None,
                       source: str) -> nn.Module:
    heads = _classifier_names(shape)
    _check_names(name, shape, state_dict, heads=heads, source=source)
    head_weight = state_dict.get(f"{heads[0]}.weight")
    file_classes = 0 if head_weight is None else int(head_weight.shape[0])
    # timm drops the classifier when the file's class count (this) differs from the model's
    overlay = {"state_dict": dict(state_dict),
               "num_classes": file_classes if keep_head is not False else -1}
    try:
        model = _create(name, kwargs, pretrained=True, pretrained_cfg_overlay=overlay)
    except RuntimeError as err:  # load_state_dict: a size mismatch
        raise CheckpointError(f"cannot load {source} into timm:{name} with {dict(kwargs)}: "
                              f"{_size_mismatch(err)}; build the model the file was saved "
                              f"from (its depth, width, patch size)") from err
    # timm's record of the weights, without the state_dict the overlay left in it
    model.pretrained_cfg = model.default_cfg = shape.pretrained_cfg
    kept = file_classes == kwargs["num_classes"] and keep_head is not False
    _log_load(source, name, shape=shape, state_dict=state_dict, heads=heads, kept=kept)
    return model


def _check_names(name: str, model: nn.Module, state_dict: Mapping[str, torch.Tensor], *,
                 heads: Sequence[str], source: str) -> None:
    """The file holds the model's tensors by timm's names (the classifier may differ)."""
    def body(names):
        return {n for n in names if not n.startswith(tuple(f"{h}." for h in heads))}

    own, found = body(model.state_dict()), body(state_dict)
    missing, unexpected = sorted(own - found), sorted(found - own)
    if missing or unexpected:
        parts = [f"{what} {names[:4]}{' ...' if len(names) > 4 else ''}"
                 for what, names in (("missing", missing), ("not in the model", unexpected))
                 if names]
        raise CheckpointError(
            f"{source} is not a timm state_dict of timm:{name}: {'; '.join(parts)}; make one "
            f"on a machine with internet with python -c \"import timm, torch; torch.save("
            f"timm.create_model('{name}', pretrained=True).state_dict(), 'weights.pth')\"")


def _size_mismatch(err: RuntimeError) -> str:
    lines = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]
    return "; ".join(lines[:3]) if lines else first_line(err)


def _log_load(source: str, name: str, *, shape: nn.Module, state_dict: Mapping[str, Any],
              heads: Sequence[str], kept: bool) -> None:
    own = shape.state_dict()
    logger.info("loaded %s into timm:%s through timm's checkpoint filter", source, name)
    resampled = [k for k, v in state_dict.items() if k in own and not k.startswith(
        tuple(f"{h}." for h in heads)) and tuple(v.shape) != tuple(own[k].shape)]
    for key in resampled:
        logger.info("adapted %s: %s -> %s (resampled by timm for the model's size)", key,
                    tuple(state_dict[key].shape), tuple(own[key].shape))
    logger.info("classifier %s: %s", "/".join(heads), "kept from the file (same classes)"
                if kept else "new for these classes")


# --- the record in a checkpoint ---------------------------------------------------------------


def is_timm_spec(spec: Mapping[str, Any] | None) -> bool:
    """Whether a checkpoint's ``model_config`` describes a timm model (``timm_spec``)."""
    return isinstance(spec, Mapping) and SPEC_NAME in spec


def timm_spec(model: nn.Module) -> dict[str, Any]:
    """The architecture name and ``create_model`` arguments of a model ``create_timm_model``
    built (``TypeError`` for one built otherwise)."""
    spec = getattr(model, "vit_timm_spec", None)
    if spec is None:
        raise TypeError(f"this {type(model).__name__} was not built by "
                        "vit.models.timm_models.create_timm_model, so its arguments are unknown")
    return {SPEC_NAME: spec[SPEC_NAME], SPEC_ARGS: dict(spec[SPEC_ARGS])}


def model_from_timm_spec(spec: Mapping[str, Any]) -> nn.Module:
    """The model ``timm_spec`` describes, freshly initialised (random weights)."""
    args = dict(spec[SPEC_ARGS])
    num_classes = args.pop("num_classes")
    img_size = args.pop("img_size", None)
    return create_timm_model(spec[SPEC_NAME], num_classes=num_classes, img_size=img_size,
                             args=args)


def timm_exportable() -> Any:
    """A context in which timm builds its models for export (timm's ``exportable`` layer
    config: attention without the fused kernel, which the ONNX exporter cannot trace for the
    RoPE families)."""
    from timm.layers import set_layer_config

    return set_layer_config(exportable=True)


def timm_mean_std(name: str) -> tuple[list[float], list[float]]:
    """The normalisation timm's pretrained weights of ``name`` were trained with."""
    import timm

    cfg = timm.models.get_pretrained_cfg(timm_name(name)) or {}
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    return [float(v) for v in cfg["mean"]], [float(v) for v in cfg["std"]]
