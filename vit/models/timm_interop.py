"""timm interoperability: our model from a timm ``VisionTransformer`` (same names, same logits),
and timm's pretrained weights by name, fetched through timm or found in the local cache, with a
fast one-line failure offline."""

from __future__ import annotations

import logging
import socket
import urllib.parse
from pathlib import Path
from typing import Any

from torch import nn

from vit.errors import CheckpointError, first_line
from vit.models.vision_transformer import VisionTransformer, ViTConfig

__all__ = ["from_timm", "timm_config", "timm_architecture", "fetch_timm_model",
           "fetch_timm_state_dict",
           "TIMM_ARCHITECTURES", "ARCHITECTURE_FIELDS"]

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0
# timm architectures that a config.json may name: model_args give the rest (timm_architecture)
TIMM_ARCHITECTURES = ("vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224",
                      "vit_large_patch16_224")
# ViTConfig fields that timm's VisionTransformer takes under the same name and that shape the
# weights or the function (num_classes goes beside them in a config.json)
ARCHITECTURE_FIELDS = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads",
                       "mlp_ratio", "qkv_bias", "qk_norm", "init_values", "reg_tokens",
                       "global_pool")


def from_timm(timm_model: nn.Module) -> VisionTransformer:
    """Copy a ``timm.models.vision_transformer.VisionTransformer`` into our model, same logits.

    Supports the standard layout (class token, learned position embedding that covers the prefix
    tokens, LayerNorm, GELU, optional registers / LayerScale / qk-norm, 'token' or 'avg' pooling).
    Anything else raises a ``ValueError`` naming what differs. No conversion is needed to
    explain or fine-tune a timm model: ``vit.explain`` and ``--model timm:NAME`` take every
    timm ViT family as it is.
    """
    model = VisionTransformer(timm_config(timm_model))
    state = {k: v for k, v in timm_model.state_dict().items()}
    model.load_state_dict(state, strict=True)
    return model


def _unsupported(m: nn.Module) -> list[str]:
    """What a timm VisionTransformer has that our model does not."""
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    if not isinstance(m, TimmViT):
        return [f"the class {type(m).__name__} (only timm's plain VisionTransformer converts; "
                "vit.explain and --model timm:NAME take every ViT family as it is)"]
    unsupported = []
    if getattr(m, "dist_token", None) is not None:
        unsupported.append("a distillation token (distilled DeiT)")
    if not getattr(m, "has_class_token", True):
        unsupported.append("class_token=False")
    if getattr(m, "no_embed_class", False):
        unsupported.append("no_embed_class=True")
    if getattr(m, "global_pool", "token") not in ("token", "avg"):
        unsupported.append(f"global_pool={m.global_pool!r}")
    if getattr(m, "dynamic_img_size", False):
        unsupported.append("dynamic_img_size=True")
    if not isinstance(getattr(m, "norm_pre", nn.Identity()), nn.Identity):
        unsupported.append("pre_norm=True")
    if m.global_pool == "avg" and isinstance(m.fc_norm, nn.Identity):
        unsupported.append("avg pooling without fc_norm")
    if m.global_pool == "token" and not isinstance(m.fc_norm, nn.Identity):
        unsupported.append("fc_norm with token pooling")
    return unsupported


def timm_config(m: nn.Module) -> ViTConfig:
    """The ``ViTConfig`` of a timm ``VisionTransformer`` (``ValueError`` when ours cannot be it)."""
    unsupported = _unsupported(m)
    if unsupported:
        raise ValueError(f"cannot convert this timm model: unsupported {', '.join(unsupported)}")
    block = m.blocks[0]
    embed_dim = m.embed_dim
    img_size = m.patch_embed.img_size
    patch_size = m.patch_embed.patch_size
    if img_size[0] != img_size[1] or patch_size[0] != patch_size[1]:
        raise ValueError(f"only square images and patches are supported, got {img_size}, {patch_size}")
    has_ls = not isinstance(block.ls1, nn.Identity)
    return ViTConfig(
        img_size=img_size[0],
        patch_size=patch_size[0],
        in_chans=m.patch_embed.proj.in_channels,
        num_classes=m.num_classes,
        embed_dim=embed_dim,
        depth=len(m.blocks),
        num_heads=block.attn.num_heads,
        mlp_ratio=block.mlp.fc1.out_features / embed_dim,
        qkv_bias=block.attn.qkv.bias is not None,
        qk_norm=not isinstance(block.attn.q_norm, nn.Identity),
        init_values=(float(block.ls1.gamma.detach().flatten()[0]) or 1e-5) if has_ls else None,
        reg_tokens=getattr(m, "num_reg_tokens", 0),
        global_pool=m.global_pool,
    )


def timm_architecture(config: ViTConfig) -> tuple[str, dict[str, Any]]:
    """The timm architecture nearest to ``config`` and the ``model_args`` that make it ``config``.

    ``timm.create_model(name, num_classes=config.num_classes, **model_args)`` builds a timm
    model with our parameter names and shapes. Of ``TIMM_ARCHITECTURES``, the one with the
    fewest differing arguments wins (the first on a tie); the dropout rates are left out
    (training only, timm's default is none).
    """
    best: tuple[str, dict[str, Any]] | None = None
    for name in TIMM_ARCHITECTURES:
        defaults = _timm_default_config(name)
        args = {f: getattr(config, f) for f in ARCHITECTURE_FIELDS
                if getattr(config, f) != getattr(defaults, f)}
        if best is None or len(args) < len(best[1]):
            best = (name, args)
    assert best is not None
    return best


def _timm_default_config(name: str) -> ViTConfig:
    """timm's own configuration of architecture ``name``, read off a model on the meta device."""
    import timm  # takes seconds to import; only needed here
    import torch

    with torch.device("meta"):
        return timm_config(timm.create_model(name, pretrained=False))


def fetch_timm_model(name: str) -> VisionTransformer:
    """timm's pretrained model ``name`` as ours (from the local Hugging Face cache when it is
    there); one ``CheckpointError`` line when it cannot be had, saying how to get the file."""
    timm_model = _pretrained_timm_model(name, modules=("vision_transformer",))
    try:
        model = from_timm(timm_model)
    except ValueError as err:
        raise CheckpointError(f"timm:{name}: {err}; fine-tune it as timm's own model with "
                              f"--model timm:{name} --pretrained timm:{name}") from err
    return model


def fetch_timm_state_dict(name: str, *, modules: tuple[str, ...]) -> dict[str, Any]:
    """timm's pretrained weights ``name`` as timm's state_dict, for a model registered in one of
    timm's ``modules`` (cache, download and the one-line failure as ``fetch_timm_model``)."""
    return _pretrained_timm_model(name, modules=modules).state_dict()


def _pretrained_timm_model(name: str, *, modules: tuple[str, ...]) -> nn.Module:
    """timm's model ``name`` with its pretrained weights, from the cache or downloaded."""
    import timm  # takes seconds to import; only needed here

    pretrained_cfg = _timm_pretrained_cfg(name, modules)
    cached = _cached_hub_file(pretrained_cfg)
    if cached is not None:
        logger.info("timm:%s: using the cached file %s", name, cached)
        overlay = {"file": str(cached), "custom_load": False}
        create = dict(pretrained=True, pretrained_cfg_overlay=overlay)
    else:
        _require_reachable(name, pretrained_cfg)
        create = dict(pretrained=True)
    try:
        return timm.create_model(name, **create)
    except Exception as err:  # network and hub errors come in many types
        raise CheckpointError(_offline_advice(name, pretrained_cfg, reason=first_line(err))) from err


def _timm_pretrained_cfg(name: str, modules: tuple[str, ...]) -> Any:
    """timm's record of where the weights of ``name`` live; CheckpointError if it has none."""
    import timm

    pretrained_cfg = None
    registered = {n for module in modules for n in timm.list_models(module=module)}
    if timm.models.get_arch_name(name) in registered:
        try:
            pretrained_cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=False)
        except RuntimeError:  # an unknown tag
            pretrained_cfg = None
    if pretrained_cfg is None or not (pretrained_cfg.hf_hub_id or pretrained_cfg.url):
        _refuse_other_family(name, modules)
        what = ("VisionTransformer" if modules == ("vision_transformer",)
                else f"ViT-family ({', '.join(modules)})")
        examples = ", ".join(timm.list_pretrained("vit_small_patch16_224*")[:2])
        raise CheckpointError(
            f"timm has no pretrained {what} weights named {name!r}; pick one from "
            f"timm.list_pretrained('vit_*'), e.g. {examples}"
        )
    return pretrained_cfg


def _refuse_other_family(name: str, modules: tuple[str, ...]) -> None:
    """A timm ViT family the package's ViT cannot hold: say how to fine-tune it as timm's."""
    import timm

    from vit.models.timm_models import FAMILY_MODULES

    arch = timm.models.get_arch_name(name)
    for module in set(FAMILY_MODULES) - set(modules):
        if arch in timm.list_models(module=module):
            raise CheckpointError(
                f"timm:{name} is one of timm's {module} models, which the package's ViT cannot "
                f"hold; fine-tune it as timm's own model with --model timm:{name} --pretrained "
                f"timm:{name} (docs/timm.md)")


def _cached_hub_file(pretrained_cfg: Any) -> Path | None:
    """The weights file of these timm weights in the local Hugging Face cache, if it is there."""
    from huggingface_hub import try_to_load_from_cache

    if not pretrained_cfg.hf_hub_id:
        return None
    repo_id, _, revision = pretrained_cfg.hf_hub_id.partition("@")
    names = [pretrained_cfg.hf_hub_filename or "model.safetensors", "pytorch_model.bin"]
    for filename in names:
        found = try_to_load_from_cache(repo_id, filename, revision=revision or None)
        if isinstance(found, str):
            return Path(found)
    return None


def _require_reachable(name: str, pretrained_cfg: Any) -> None:
    """Fail fast, in one line, when the weights cannot be downloaded (instead of long retries)."""
    from huggingface_hub import constants

    if pretrained_cfg.hf_hub_id:
        if constants.is_offline_mode():
            raise CheckpointError(_offline_advice(name, pretrained_cfg, reason="HF_HUB_OFFLINE is set"))
        url = constants.ENDPOINT
    else:
        url = pretrained_cfg.url
    if not _reachable(url):
        reason = f"{urllib.parse.urlsplit(url).hostname} is unreachable"
        raise CheckpointError(_offline_advice(name, pretrained_cfg, reason=reason))


def _reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the host of ``url`` opens within ``timeout`` seconds."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _offline_advice(name: str, pretrained_cfg: Any, *, reason: str) -> str:
    where = (
        f"download model.safetensors from https://huggingface.co/{pretrained_cfg.hf_hub_id}"
        if pretrained_cfg.hf_hub_id else f"download {pretrained_cfg.url}"
    )
    return (
        f"cannot download the timm weights {name!r} ({reason}): on a machine with internet, "
        f"{where} or run "
        f"python -c \"import timm, torch; torch.save(timm.create_model('{name}', "
        f"pretrained=True).state_dict(), 'weights.pth')\", copy the file here and pass its path "
        f"instead of timm:{name}"
    )
