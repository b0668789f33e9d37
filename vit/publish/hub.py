"""`vit push`: a training run as a Hugging Face Hub model repository, written to a folder and
uploaded with ``huggingface_hub``.

    write_hub_folder("runs/photos", "hub/photos")          # what would be uploaded
    push_to_hub("runs/photos", "user/photos", private=True) # the same folder, uploaded

The folder holds

    model.safetensors  the weights with timm's names (our model config, classes and
                       preprocessing ride along in its metadata, as in `vit export`)
    config.json        timm's format: ``architecture`` (the nearest timm ViT), ``model_args``
                       (what differs from it), ``num_classes``, ``label_names`` and a
                       ``pretrained_cfg`` with the preprocessing, so that
                       ``timm.create_model("hf_hub:user/name", pretrained=True)`` loads it
    README.md          the model card (``vit.publish.model_card``)
    images/            the run's curves and saliency overlays, shown by the card
    app.py, requirements.txt, vit/   with ``demo=True``: the Gradio demo as a Space
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vit import run_folder
from vit.data.transforms import resolve_crop_pct
from vit.errors import CheckpointError, OutputError, VitError, first_line
from vit.io import atomic_write, make_output_dir, write_json
from vit.models.checkpoint import load_checkpoint
from vit.models.hub import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    hub_host,
    hub_reachable,
    import_hub,
    network_errors,
)
from vit.models.timm_interop import timm_architecture
from vit.models.vision_transformer import ViTConfig

__all__ = ["resolve_run", "timm_hub_config", "write_hub_folder", "push_to_hub", "RUN_IMAGES"]

logger = logging.getLogger(__name__)

# Figures of a run folder that the card shows: run path -> (path in the repo, caption)
RUN_IMAGES = {
    run_folder.CURVES: ("images/curves.png", "Training curves"),
    "overlays/grid.png": ("images/overlays.png", "What the prediction rests on (AttnLRP, "
                                                 "held-out images)"),
}


def resolve_run(run: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(checkpoint, run folder) of a run folder (its ``best.pt``) or of a checkpoint file."""
    path = Path(run)
    if path.is_dir():
        if not (path / run_folder.BEST).is_file():
            raise CheckpointError(f"{path} holds no best.pt; pass a run folder written by "
                                  "`vit train`, or a checkpoint file")
        return path / run_folder.BEST, path
    if path.is_file():
        return path, path.parent
    raise CheckpointError(f"{path} does not exist; pass a run folder (runs/NAME) or a checkpoint")


def _timm_architecture(spec: Mapping[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(architecture, model_args, timm's pretrained_cfg entries) for a checkpoint's model: the
    timm model it is, or the timm ViT nearest to the package's ViT."""
    import torch

    from vit.models.architecture import is_timm_spec, model_from_spec

    if not is_timm_spec(spec):
        architecture, model_args = timm_architecture(ViTConfig.from_dict(dict(spec)))
        return architecture, model_args, {"first_conv": "patch_embed.proj", "classifier": "head"}
    import timm

    with torch.device("meta"):
        model = model_from_spec(spec)
    # training-only rates stay out: whoever loads the model chooses their own
    model_args = {k: v for k, v in spec["timm_args"].items()
                  if k != "num_classes" and not (k.startswith("drop") or k.endswith("drop_rate"))}
    return timm.models.get_arch_name(spec["timm_name"]), model_args, {
        "first_conv": model.pretrained_cfg["first_conv"],
        "classifier": model.pretrained_cfg["classifier"]}


def timm_hub_config(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """timm's ``config.json`` for a checkpoint (the layout of timm's save_for_hf)."""
    from vit.models.architecture import describe_spec

    spec = ckpt["model_config"]
    architecture, model_args, layers = _timm_architecture(spec)
    info = describe_spec(spec)
    pre = ckpt["preprocess"]
    size = int(pre["img_size"])
    return {
        "architecture": architecture,
        "num_classes": info.num_classes,
        "num_features": info.embed_dim,
        "global_pool": info.global_pool,
        "label_names": [str(c) for c in ckpt["classes"]],
        "model_args": model_args,
        "pretrained_cfg": {
            "custom_load": False,
            "input_size": [info.in_chans, size, size],
            "fixed_input_size": True,
            "interpolation": "bilinear",  # albumentations' default, what vit.data.transforms uses
            "crop_pct": resolve_crop_pct(size, pre["crop_pct"]),
            "crop_mode": "center",
            "mean": [float(v) for v in pre["mean"]],
            "std": [float(v) for v in pre["std"]],
            "num_classes": info.num_classes,
            "pool_size": None,
            **layers,
        },
    }


def write_hub_folder(run: str | os.PathLike[str], folder: str | os.PathLike[str], *,
                     repo_id: str | None = None, demo: bool = False) -> Path:
    """Write the repository of ``run`` (a run folder or a checkpoint) into ``folder``."""
    from vit.inference.export import safetensors_export
    from vit.publish.model_card import model_card

    checkpoint, run_dir = resolve_run(run)
    ckpt = load_checkpoint(checkpoint)
    folder = make_output_dir(folder)
    repo_id = repo_id or f"user/{folder.resolve().name}"
    payload, _ = safetensors_export(ckpt)
    atomic_write(folder / WEIGHTS_NAME, payload)
    write_json(folder / CONFIG_NAME, timm_hub_config(ckpt))
    images = _copy_images(run_dir, folder)
    card = model_card(ckpt, repo_id=repo_id, images=images, demo=demo)
    atomic_write(folder / "README.md", str(card))
    if demo:
        from vit.publish.space import write_space_files

        write_space_files(folder, repo_id=repo_id)
    logger.debug("wrote %s (%s)", folder, ", ".join(sorted(p.name for p in folder.iterdir())))
    return folder


def _copy_images(run_dir: Path, folder: Path) -> dict[str, str]:
    """Copy the run's figures into ``folder``; caption -> path in the repository."""
    shown = {}
    for source, (target, caption) in RUN_IMAGES.items():
        if (run_dir / source).is_file():
            atomic_write(folder / target, (run_dir / source).read_bytes())
            shown[caption] = target
        else:
            logger.info("%s has no %s; the card goes without it", run_dir, source)
    return shown


def push_to_hub(run: str | os.PathLike[str], repo_id: str, *, private: bool = False,
                demo: bool = False, token: str | None = None) -> str:
    """Write the repository of ``run`` to a temporary folder and upload it to ``repo_id``
    (created when missing, ``private`` then); returns the URL of the commit."""
    hub = import_hub()
    from huggingface_hub import errors

    if not hub_reachable():
        raise OutputError(f"cannot push to {repo_id}: {hub_host()} is unreachable; `vit push RUN "
                          "--to-folder DIR` writes the same files without uploading")
    with tempfile.TemporaryDirectory(prefix="vit-push-") as tmp:
        folder = write_hub_folder(run, Path(tmp) / "repo", repo_id=repo_id, demo=demo)
        api = hub.HfApi(token=token)
        try:
            api.create_repo(repo_id, private=private or None, exist_ok=True, repo_type="model")
            commit = api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="model",
                                       commit_message=f"vit push {Path(run).name}")
        except (errors.HfHubHTTPError, errors.LocalTokenNotFoundError) as err:
            raise VitError(_push_refused(repo_id, err)) from err
        except network_errors() as err:
            raise OutputError(
                f"cannot push to {repo_id}: {hub_host()} is unreachable ({first_line(err)}); "
                "`vit push RUN --to-folder DIR` writes the same files without uploading") from err
    return str(getattr(commit, "commit_url", commit))


def _push_refused(repo_id: str, err: Exception) -> str:
    from huggingface_hub import errors

    status = getattr(getattr(err, "response", None), "status_code", None)
    if status in (401, 403) or not isinstance(err, errors.HfHubHTTPError):
        return (f"the Hub refused the push to {repo_id} ({first_line(err)}): log in with "
                "`hf auth login` or set HF_TOKEN to a token that may write there")
    return f"the Hub refused the push to {repo_id}: {first_line(err)}"

