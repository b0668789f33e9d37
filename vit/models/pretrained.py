"""Fine-tune from pretrained weights: read them from anywhere, adapt them to the model, load.

    read_pretrained(source)             a .pt/.pth/.bin/.safetensors file, "timm:<name>" or
                                        "hf:<user>/<name>" (a model pushed to the Hub)
      -> PretrainedWeights              state_dict with timm names (+ architecture, classes if ours)
    load_pretrained_into(model, w)      adapt what can be adapted, refuse the rest, log each change
      -> LoadReport                     which parameters were loaded / adapted / left new
    build_finetune_model(source, ...)   both, with the architecture taken from the file

What is adapted (every other tensor must match exactly, else ``CheckpointError``):

    head        a fresh zero head when the classes differ; rows are kept by class name when
                both lists of names are known, so adding a class keeps the old ones
    pos_embed   timm's layout is [CLS], registers, patches. The patch grid is resampled
                bicubically to the model's grid; [CLS] keeps its position; register positions
                come along with the registers. Files without prefix positions (timm's
                no_embed_class, e.g. DeiT III) get zeros there, which computes the same function.
    reg_token   kept when the counts match; otherwise the file's are dropped and the model's
                freshly initialised registers (and their positions) are used
    patch_embed the kernel is resampled to the model's patch size with FlexiViT's pseudo-inverse
                resize (timm.layers.resample_patch_embed), which keeps the patch embedding of an
                image resized by the same factor unchanged

Files are read by ``vit.io.read_weights``, the one reader of weight files, with
``torch.load(weights_only=True)`` only: pickles that would construct arbitrary objects are refused.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from vit.errors import CheckpointError, ConfigError
from vit.io import read_weights
from vit.models.hub import CONFIG_NAME, HF_PREFIX, WEIGHTS_NAME, hub_folder
from vit.models.presets import model_config
from vit.models.timm_interop import fetch_timm_model, fetch_timm_state_dict
from vit.models.timm_models import FAMILY_MODULES, TIMM_PREFIX, is_timm_spec
from vit.models.vision_transformer import VisionTransformer, ViTConfig, config_dict

__all__ = [
    "PretrainedWeights",
    "LoadReport",
    "read_pretrained",
    "load_pretrained_into",
    "build_finetune_model",
    "infer_config",
]

logger = logging.getLogger(__name__)

# num_heads of timm's ViTs by width (head_dim 64 up to 1024, 16 heads above).
TIMM_NUM_HEADS = {192: 3, 256: 4, 320: 5, 384: 6, 512: 8, 640: 10, 768: 12, 1024: 16, 1152: 16,
                  1280: 16}

StateDict = dict[str, torch.Tensor]
# An adaptation step returns the new state_dict, notes by parameter name, and file tensors dropped.
Adapted = tuple[StateDict, dict[str, str], list[str]]


@dataclass
class PretrainedWeights:
    """Weights with timm parameter names, and what the file says about them."""

    state_dict: dict[str, torch.Tensor]
    model_config: dict[str, Any] | None = None  # ViTConfig fields, when known (ours, timm:)
    classes: list[str] | None = None  # class names in head order, when known (ours)
    description: str = ""  # where they came from, for messages


@dataclass
class LoadReport:
    """What ``load_pretrained_into`` did, by parameter name."""

    loaded: list[str] = field(default_factory=list)  # copied from the file unchanged
    adapted: dict[str, str] = field(default_factory=dict)  # name -> how it was adapted
    new: list[str] = field(default_factory=list)  # kept the model's fresh initialisation
    dropped: list[str] = field(default_factory=list)  # file tensors not used (old head, ...)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def read_pretrained(source: str | Path, *, convert: bool = True) -> PretrainedWeights:
    """Read weights from a file of ours or timm's (``vit.io.read_weights``), or fetch
    ``timm:<name>`` through timm: converted into the package's ViT (``convert``, plain ViTs
    only), or as timm's own state_dict of any ViT family (for a timm model,
    ``vit.models.timm_models``)."""
    if isinstance(source, str) and source.startswith(TIMM_PREFIX):
        if not convert:
            return _read_timm_state_dict(source[len(TIMM_PREFIX):])
        return _read_timm(source[len(TIMM_PREFIX):])
    if isinstance(source, str) and source.startswith(HF_PREFIX):
        return _read_hub(source)
    path = Path(source)
    if path.is_dir() and (path / WEIGHTS_NAME).is_file() and (path / CONFIG_NAME).is_file():
        return _read_hub(str(path))  # a folder of `vit push --to-folder`, or a Hub download
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; pass a weights file inside it (.pt, .pth, "
                              ".bin or .safetensors)")
    if not path.is_file():
        raise CheckpointError(
            f"pretrained weights not found: {path} (pass a .pt, .pth, .bin or .safetensors file, "
            f"timm:<model name> or hf:<user>/<name>)"
        )
    weights = read_weights(path)
    info = weights.info or {}
    return PretrainedWeights(state_dict=weights.state_dict, model_config=info.get("model_config"),
                             classes=info.get("classes"), description=str(path))


# --- timm:<name> ------------------------------------------------------------------------------


def _read_timm(name: str) -> PretrainedWeights:
    """Fetch timm's pretrained weights for ``name`` (from the local cache if there)."""
    model = fetch_timm_model(name)
    return PretrainedWeights(state_dict=model.state_dict(), model_config=config_dict(model),
                             description=f"timm:{name}")


def _read_timm_state_dict(name: str) -> PretrainedWeights:
    """timm's pretrained weights for ``name`` as timm's state_dict (any ViT family)."""
    state = fetch_timm_state_dict(name, modules=FAMILY_MODULES)
    return PretrainedWeights(state_dict=state, description=f"timm:{name}")


# --- hf:<user>/<name> -------------------------------------------------------------------------


def _read_hub(source: str) -> PretrainedWeights:
    """A model pushed to the Hub (``vit push``, or any timm-format ViT repo): its
    model.safetensors through hf_hub_download; class names from config.json when the weights
    file does not carry ours."""
    folder = hub_folder(source)
    weights = read_weights(folder / WEIGHTS_NAME)
    info = weights.info or {}
    classes = info.get("classes")
    if classes is None:
        try:
            labels = json.loads((folder / CONFIG_NAME).read_text()).get("label_names")
        except (OSError, ValueError):
            labels = None
        classes = [str(c) for c in labels] if isinstance(labels, list) else None
    return PretrainedWeights(state_dict=weights.state_dict, model_config=info.get("model_config"),
                             classes=classes, description=source)


# ---------------------------------------------------------------------------------------------
# Adapting and loading
# ---------------------------------------------------------------------------------------------


def load_pretrained_into(
    model: VisionTransformer, weights: PretrainedWeights, *,
    classes: Sequence[str] | None = None, log: logging.Logger = logger,
) -> LoadReport:
    """Load ``weights`` into ``model``, adapting head, positions, registers and patch size.

    ``classes`` are the model's class names in head order; with the file's own names they let
    the head keep the rows of the classes both share. Anything else that does not fit raises
    ``CheckpointError`` naming the parameters and their shapes; the model is then unchanged.
    """
    if classes is not None and len(classes) != model.num_classes:
        raise ConfigError(f"{len(classes)} class names for a model with {model.num_classes} classes")
    source = weights.description or "the pretrained weights"
    state = dict(weights.state_dict)
    _check_is_vit(state, model, source)
    adapted: dict[str, str] = {}
    dropped: list[str] = []
    for adapt in (_adapt_head, _adapt_tokens, _adapt_patch_embed):
        state, notes, gone = adapt(
            state, model=model, old_classes=weights.classes, new_classes=classes
        )
        adapted.update(notes)
        dropped += gone

    own = model.state_dict()
    may_be_new = {"head.weight", "head.bias", "reg_token"}
    _check_fits(state, own, may_be_new, source)
    new = [name for name in own if name not in state]
    model.load_state_dict({**{name: own[name] for name in new}, **state}, strict=True)

    report = LoadReport(
        loaded=[name for name in own if name in state and name not in adapted],
        adapted=adapted, new=new, dropped=dropped,
    )
    _log_report(report, source, log)
    return report


def _check_is_vit(state: StateDict, model: VisionTransformer, source: str) -> None:
    """The tensors every adaptation relies on exist and have the model's width."""
    required = ("cls_token", "pos_embed", "patch_embed.proj.weight")
    missing = [name for name in required if name not in state]
    if missing:
        found = ", ".join(list(state)[:6])
        raise CheckpointError(
            f"{source} is not a VisionTransformer state_dict with timm names: no "
            f"{', '.join(missing)} (its first keys: {found})"
        )
    if state["cls_token"].shape != model.cls_token.shape:
        raise CheckpointError(
            f"cannot load {source}: cls_token has shape {_shape(state['cls_token'])} in the file "
            f"but {_shape(model.cls_token)} in the model (a different embed_dim); build the model "
            f"with the file's architecture"
        )


def _adapt_head(
    state: StateDict, *, model: VisionTransformer, old_classes: Sequence[str] | None,
    new_classes: Sequence[str] | None,
) -> Adapted:
    """Keep the head when the classes match, keep rows by class name, or drop it."""
    if "head.weight" not in state or "head.bias" not in state:
        return state, {}, []  # nothing to adapt; _check_fits names what is odd
    weight, bias = state["head.weight"], state["head.bias"]
    state = {k: v for k, v in state.items() if k not in ("head.weight", "head.bias")}
    gone = ["head.weight", "head.bias"]
    if model.num_classes == 0:
        return state, {}, gone
    if old_classes is not None and new_classes is not None:
        if list(old_classes) == list(new_classes):
            return {**state, "head.weight": weight, "head.bias": bias}, {}, []
        shared = [c for c in new_classes if c in old_classes]
        if not shared:
            return state, {}, gone
        new_weight, new_bias = _head_rows_by_name(
            weight, bias, model=model, old_classes=old_classes, new_classes=new_classes
        )
        note = (f"kept the rows of {len(shared)} classes by name ({_some(shared)}), "
                f"{len(new_classes) - len(shared)} new class(es) start from the model's init")
        notes = {"head.weight": note, "head.bias": note}
        return {**state, "head.weight": new_weight, "head.bias": new_bias}, notes, []
    if weight.shape[0] == model.num_classes:
        return {**state, "head.weight": weight, "head.bias": bias}, {}, []
    return state, {}, gone


def _head_rows_by_name(
    weight: torch.Tensor, bias: torch.Tensor, *, model: VisionTransformer,
    old_classes: Sequence[str], new_classes: Sequence[str],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Head whose row for each class shared with the file is the file's row; others the model's."""
    new_weight = model.head.weight.detach().clone()
    new_bias = model.head.bias.detach().clone()
    for row, name in enumerate(new_classes):
        if name in old_classes:
            new_weight[row] = weight[old_classes.index(name)]
            new_bias[row] = bias[old_classes.index(name)]
    return new_weight, new_bias


def _adapt_tokens(state: StateDict, *, model: VisionTransformer, **_: Any) -> Adapted:
    """Registers and position embedding, in timm's layout [CLS], registers, patches."""
    notes: dict[str, str] = {}
    gone: list[str] = []
    file_regs = state["reg_token"].shape[1] if "reg_token" in state else 0
    cls_pos, reg_pos, patch_pos, layout_note = _split_pos_embed(
        state["pos_embed"], num_reg_tokens=file_regs
    )
    if layout_note:
        notes["pos_embed"] = layout_note
    if file_regs != model.num_reg_tokens:
        if file_regs:
            state = {k: v for k, v in state.items() if k != "reg_token"}
            gone.append("reg_token")
        # the model's own register positions: fresh, like its registers
        reg_pos = model.pos_embed.detach()[:, 1:model.num_prefix_tokens]
        notes["pos_embed"] = _join(
            notes.get("pos_embed"),
            f"{file_regs} register(s) in the file, {model.num_reg_tokens} in the model: "
            f"register positions start from the model's init",
        )
    old_grid = _square_grid(patch_pos.shape[1])
    new_grid = tuple(model.patch_embed.grid_size)
    if old_grid != new_grid:
        from timm.layers import resample_abs_pos_embed  # timm takes seconds to import

        patch_pos = resample_abs_pos_embed(patch_pos, new_size=list(new_grid),
                                           old_size=list(old_grid), num_prefix_tokens=0)
        notes["pos_embed"] = _join(
            notes.get("pos_embed"),
            f"patch grid resampled bicubically {_grid(old_grid)} -> {_grid(new_grid)}",
        )
    pos_embed = torch.cat([cls_pos, reg_pos.to(cls_pos.dtype), patch_pos], dim=1)
    return {**state, "pos_embed": pos_embed}, notes, gone


def _split_pos_embed(
    pos_embed: torch.Tensor, *, num_reg_tokens: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str | None]:
    """(cls, registers, patches) positions, and a note when the file had no prefix positions."""
    num_prefix = 1 + num_reg_tokens
    length = pos_embed.shape[1]
    if length > num_prefix and _is_square(length - num_prefix):
        return (pos_embed[:, :1], pos_embed[:, 1:num_prefix], pos_embed[:, num_prefix:], None)
    if _is_square(length):  # timm's no_embed_class=True: [CLS] and registers get no position
        zeros = pos_embed.new_zeros(1, num_prefix, pos_embed.shape[-1])
        note = ("no positions for [CLS]/registers in the file (timm no_embed_class): "
                "zeros there, which computes the same function")
        return zeros[:, :1], zeros[:, 1:], pos_embed, note
    raise CheckpointError(
        f"pos_embed of shape {_shape(pos_embed)} is not {num_prefix} prefix token(s) plus a "
        f"square grid of patches; only square grids are supported"
    )


def _adapt_patch_embed(state: StateDict, *, model: VisionTransformer, **_: Any) -> Adapted:
    """Resample the patch kernel to the model's patch size (FlexiViT's pseudo-inverse resize)."""
    weight = state["patch_embed.proj.weight"]
    old_size, new_size = tuple(weight.shape[-2:]), tuple(model.patch_embed.patch_size)
    fits = weight.ndim == 4 and weight.shape[:2] == model.patch_embed.proj.weight.shape[:2]
    if old_size == new_size or not fits:  # a wrong channel count is reported by _check_fits
        return state, {}, []
    from timm.layers import resample_patch_embed  # timm takes seconds to import

    resampled = resample_patch_embed(weight, list(new_size), interpolation="bicubic", antialias=True)
    note = f"patch kernel resampled {_grid(old_size)} -> {_grid(new_size)} (pseudo-inverse resize)"
    return {**state, "patch_embed.proj.weight": resampled}, {"patch_embed.proj.weight": note}, []


def _check_fits(state: StateDict, own: StateDict, may_be_new: set[str], source: str) -> None:
    """Every tensor has the model's shape, none is unexpected, none the model needs is missing."""
    problems = [
        f"{name} has shape {_shape(state[name])} in the file but {_shape(own[name])} in the model"
        for name in own if name in state and state[name].shape != own[name].shape
    ]
    missing = [name for name in own if name not in state and name not in may_be_new]
    unexpected = [name for name in state if name not in own]
    if missing:
        problems.append(f"missing from the file: {_some(missing)}")
    if unexpected:
        problems.append(f"not in the model: {_some(unexpected)}")
    if problems:
        raise CheckpointError(
            f"cannot load {source} into this model: {'; '.join(problems[:4])}"
            f"{f' (and {len(problems) - 4} more)' if len(problems) > 4 else ''}; build the model "
            f"with the file's architecture (build_finetune_model infers it)"
        )


def _log_report(report: LoadReport, source: str, log: logging.Logger) -> None:
    log.info("loaded %d tensors from %s", len(report.loaded), source)
    for name, note in report.adapted.items():
        log.info("adapted %s: %s", name, note)
    if report.dropped:
        log.info("not used from the file: %s", ", ".join(report.dropped))
    if report.new:
        log.info("freshly initialised: %s", ", ".join(report.new))


# ---------------------------------------------------------------------------------------------
# Building the model to fine-tune
# ---------------------------------------------------------------------------------------------


def build_finetune_model(
    source: str | Path | PretrainedWeights, *, num_classes: int, model_name: str | None = None,
    img_size: int | None = None, classes: Sequence[str] | None = None,
    overrides: dict[str, Any] | None = None, log: logging.Logger = logger,
) -> tuple[VisionTransformer, LoadReport]:
    """A model for ``num_classes`` classes at ``img_size`` with the pretrained weights loaded.

    The architecture is the file's own when it records one (ours, ``timm:<name>``), else the
    preset ``model_name``, else inferred from the tensor shapes. ``overrides`` are ViTConfig
    fields (e.g. ``drop_path_rate``, ``reg_tokens``).
    """
    weights = source if isinstance(source, PretrainedWeights) else read_pretrained(source)
    overrides = dict(overrides or {})
    architecture = _architecture(weights, model_name=model_name, overrides=overrides, log=log)
    changes = {"num_classes": num_classes}
    if img_size is not None:
        changes["img_size"] = img_size
    try:
        config = ViTConfig.from_dict({**architecture, **changes, **overrides})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"cannot build the model to fine-tune: {err}") from err
    model = VisionTransformer(config)
    report = load_pretrained_into(model, weights, classes=classes, log=log)
    return model, report


def _architecture(
    weights: PretrainedWeights, *, model_name: str | None, overrides: dict[str, Any],
    log: logging.Logger,
) -> dict[str, Any]:
    if is_timm_spec(weights.model_config):
        raise ConfigError(f"{weights.description} holds a timm model "
                          f"(timm:{weights.model_config['timm_name']}), not the package's ViT; "
                          "fine-tune it with vit train --pretrained FILE, which builds timm's "
                          "model (vit.training.model_build)")
    if weights.model_config is not None:
        if model_name is not None:
            log.info("using the architecture stored in %s; model name %s not used",
                     weights.description, model_name)
        return dict(weights.model_config)
    if model_name is not None:
        try:
            return asdict(model_config(model_name))
        except ValueError as err:
            raise ConfigError(str(err)) from err
    return infer_config(weights.state_dict, num_heads=overrides.get("num_heads"), log=log)


def infer_config(
    state_dict: StateDict, *, num_heads: int | None = None,
    log: logging.Logger = logger,
) -> dict[str, Any]:
    """ViTConfig fields read off a timm-format state_dict's names and shapes.

    Everything but the number of heads shows in the shapes; without qk-norm (whose weight has
    head_dim entries) it comes from ``num_heads`` or timm's convention for the width.
    """
    for name in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight"):
        if name not in state_dict:
            raise CheckpointError(f"cannot infer the architecture: the weights have no {name}")
    embed_dim = state_dict["cls_token"].shape[-1]
    patch = state_dict["patch_embed.proj.weight"]
    reg_tokens = state_dict["reg_token"].shape[1] if "reg_token" in state_dict else 0
    _, _, patches, _ = _split_pos_embed(state_dict["pos_embed"], num_reg_tokens=reg_tokens)
    grid = _square_grid(patches.shape[1])
    if patch.shape[-1] != patch.shape[-2]:
        raise CheckpointError(f"only square patches are supported, got {_shape(patch)}")
    config = dict(
        img_size=grid[0] * patch.shape[-1],
        patch_size=patch.shape[-1],
        in_chans=patch.shape[1],
        num_classes=state_dict["head.weight"].shape[0] if "head.weight" in state_dict else 0,
        embed_dim=embed_dim,
        depth=1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks.")),
        num_heads=num_heads or _infer_num_heads(state_dict, embed_dim, log),
        mlp_ratio=state_dict["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
        qkv_bias="blocks.0.attn.qkv.bias" in state_dict,
        qk_norm="blocks.0.attn.q_norm.weight" in state_dict,
        init_values=1e-5 if "blocks.0.ls1.gamma" in state_dict else None,  # gammas are loaded
        reg_tokens=reg_tokens,
        global_pool="avg" if "fc_norm.weight" in state_dict else "token",
    )
    log.info("architecture inferred from the weights: %s", config)
    return config


def _infer_num_heads(state_dict: StateDict, embed_dim: int, log: logging.Logger) -> int:
    if "blocks.0.attn.q_norm.weight" in state_dict:
        return embed_dim // state_dict["blocks.0.attn.q_norm.weight"].shape[0]
    if embed_dim not in TIMM_NUM_HEADS:
        raise ConfigError(
            f"cannot infer num_heads for embed_dim {embed_dim} from the weights: pass a model "
            f"name with this architecture or num_heads in the model overrides"
        )
    heads = TIMM_NUM_HEADS[embed_dim]
    log.warning("assuming num_heads=%d (timm's convention for embed_dim %d); pass num_heads if "
                "the weights were trained with another", heads, embed_dim)
    return heads


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def _square_grid(num_patches: int) -> tuple[int, int]:
    side = math.isqrt(num_patches)  # _split_pos_embed checked that it is a square
    return side, side


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _grid(size: Sequence[int]) -> str:
    return "x".join(str(s) for s in size)


def _some(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _join(first: str | None, second: str) -> str:
    return f"{first}; {second}" if first else second
