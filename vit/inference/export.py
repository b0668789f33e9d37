"""Export a checkpoint for deployment.

    export_checkpoint("runs/x/best.pt", "model.safetensors")  # + model.json
    export_checkpoint("runs/x/best.pt", "model.onnx")         # + model.onnx.json

``safetensors``: the weights plus a JSON sidecar (model config, class names, preprocessing);
``Classifier.from_checkpoint("model.safetensors")`` loads the pair (``vit.models.checkpoint``).

``onnx``: the model as an ONNX graph (opset >= 17), input ``images`` (N, 3, S, S) float32,
normalised as the sidecar's ``preprocess`` says, output ``logits`` (N, C); the batch axis is
dynamic, the image size is fixed at the trained size. It is written with PyTorch's TorchScript
exporter (``dynamo=False``), because the newer exporter needs the ``onnxscript`` package; a timm
model is built the way timm builds models for export (its ``exportable`` layer config: attention
without the fused kernel, which the exporter cannot trace for EVA-02 and the other RoPE ViTs).
When onnxruntime is installed the file is run once and compared with PyTorch before it is kept.
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from collections.abc import Mapping
from importlib import import_module
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from vit.errors import CheckpointError, ConfigError, VitError
from vit.io import FORMAT, FORMAT_VERSION, atomic_write, sidecar_path, write_json
from vit.models.checkpoint import load_checkpoint, model_from_checkpoint

__all__ = [
    "safetensors_export",
    "FORMATS",
    "export_safetensors",
    "ONNX_OPSET",
    "export_checkpoint",
    "export_onnx",
    "onnx_sidecar_path",
    "resolve_format",
]

logger = logging.getLogger(__name__)

FORMATS = ("safetensors", "onnx")
ONNX_OPSET = 17  # LayerNormalization became a standard op in opset 17
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
ONNX_FORMAT = "vit-onnx"
ONNX_FORMAT_VERSION = 1
_VERIFY_BATCH = 3  # differs from the export batch, so the check also proves the batch is dynamic
_VERIFY_TOLERANCE = 1e-3  # largest logit difference accepted, relative to the largest logit


def resolve_format(output: str | os.PathLike[str], fmt: str | None) -> str:
    """``fmt`` if given, else from the file extension (.safetensors or .onnx)."""
    if fmt is None:
        fmt = Path(output).suffix.lstrip(".").lower()
        if fmt not in FORMATS:
            raise ConfigError(
                f"cannot tell the export format from {output}; pass --format "
                f"{'|'.join(FORMATS)} or name the file .safetensors or .onnx")
    if fmt not in FORMATS:
        raise ConfigError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt


def onnx_sidecar_path(path: str | os.PathLike[str]) -> Path:
    """``model.onnx`` -> ``model.onnx.json`` (not ``model.json``: that is the safetensors one)."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def _metrics_summary(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    metrics = ckpt.get("metrics") or {}
    scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float | str | None)}
    return {"epoch": ckpt.get("epoch"), "step": ckpt.get("step"),
            "best_top1": ckpt.get("best_top1"), "metrics": scalars}


def safetensors_export(ckpt: Mapping[str, Any]) -> tuple[bytes, str]:
    """The bytes of the prediction weights as .safetensors, and the JSON of their sidecar.

    The JSON holds format/version, model_config, classes, preprocess, the run config and a
    metrics summary; the bytes keep the same JSON in their metadata under ``"vit"``, so the file
    alone is enough (``vit.io.read_weights``).
    """
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "vit_version": ckpt.get("vit_version"),
        "model_config": ckpt["model_config"],
        "classes": list(ckpt["classes"]),
        "preprocess": ckpt["preprocess"],
        "config": ckpt.get("config") or {},
        **_metrics_summary(ckpt),
    }
    text = json.dumps(info, indent=2)
    weights = {k: v.detach().cpu().contiguous() for k, v in ckpt["model"].items()}
    return safetensors.torch.save(weights, metadata={"vit": text}), text


def export_safetensors(ckpt: Mapping[str, Any], path: str | os.PathLike) -> tuple[Path, Path]:
    """Write the prediction weights to ``path`` (.safetensors) and the rest to ``path``.json
    (``safetensors_export``). ``load_checkpoint`` reads the pair back as a checkpoint without
    resume state.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"export path {path} must end in .safetensors")
    payload, text = safetensors_export(ckpt)
    sidecar = sidecar_path(path)
    atomic_write(path, payload)
    atomic_write(sidecar, text + "\n")
    return path, sidecar


def _onnx_info(ckpt: Mapping[str, Any], *, opset: int, max_abs_diff: float | None
               ) -> dict[str, Any]:
    from vit import __version__

    size = int(ckpt["preprocess"]["img_size"])
    return {
        "format": ONNX_FORMAT,
        "format_version": ONNX_FORMAT_VERSION,
        "vit_version": __version__,
        "classes": list(ckpt["classes"]),
        "preprocess": dict(ckpt["preprocess"]),
        "model_config": dict(ckpt["model_config"]),
        "opset": opset,
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, size, size], "dtype": "float32",
                  "layout": "NCHW RGB; resize the shorter side to floor(img_size / crop_pct), "
                            "centre-crop img_size, then (pixel / 255 - mean) / std"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(ckpt["classes"])],
                   "dtype": "float32", "meaning": "logits; softmax gives the probabilities"},
        "max_abs_diff_vs_pytorch": max_abs_diff,
    }


def _onnx_bytes(model: nn.Module, example: torch.Tensor, opset: int) -> bytes:
    """The serialised ONNX graph of ``model`` traced at ``example``, batch axis dynamic."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # Expected: the legacy exporter's deprecation notice, and tracer notes that the image
        # size is baked into the graph (only the batch axis is meant to be dynamic).
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            model, (example,), buffer, dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    return buffer.getvalue()


def _onnxruntime() -> Any | None:
    try:
        return import_module("onnxruntime")
    except ImportError:
        return None


def onnx_max_abs_diff(onnx_model: bytes, model: nn.Module, images: torch.Tensor) -> float:
    """Largest |logit difference| between onnxruntime (CPU) and PyTorch on ``images``."""
    ort = _onnxruntime()
    if ort is None:
        raise VitError("checking an ONNX file needs onnxruntime: pip install 'vit[export]'")
    session = ort.InferenceSession(onnx_model, providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})
    with torch.inference_mode():
        torch_logits = model(images)
    return float((torch.from_numpy(onnx_logits) - torch_logits).abs().max())


def _verify(onnx_model: bytes, model: nn.Module, img_size: int) -> float | None:
    if _onnxruntime() is None:
        logger.info("onnxruntime is not installed; the ONNX file was not test-run "
                    "(pip install 'vit[export]' to check it)")
        return None
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(_VERIFY_BATCH, 3, img_size, img_size, generator=generator)
    diff = onnx_max_abs_diff(onnx_model, model, images)
    with torch.inference_mode():
        scale = max(1.0, float(model(images).abs().max()))
    logger.info("onnxruntime vs PyTorch: largest logit difference %.2e", diff)
    if diff > _VERIFY_TOLERANCE * scale:
        raise VitError(f"the exported ONNX model disagrees with PyTorch (largest logit difference "
                       f"{diff:.3g}); the file was not written. Please report this")
    return diff


def export_onnx(
    ckpt: Mapping[str, Any], path: str | os.PathLike[str], *, opset: int = ONNX_OPSET,
    verify: bool = True,
) -> tuple[Path, Path]:
    """Write ``path`` (.onnx) and its sidecar ``path``.json; returns both paths.

    With ``verify`` (and onnxruntime installed) the graph is run on random images first and
    rejected when its logits differ from PyTorch's.
    """
    if opset < ONNX_OPSET:
        raise ConfigError(f"--opset must be at least {ONNX_OPSET}, got {opset}")
    path = Path(path)
    model = model_from_checkpoint(ckpt, exportable=True).float().eval()
    img_size = int(ckpt["preprocess"]["img_size"])
    example = torch.zeros(2, 3, img_size, img_size)
    onnx_model = _onnx_bytes(model, example, opset)
    max_abs_diff = _verify(onnx_model, model, img_size) if verify else None
    atomic_write(path, onnx_model)
    sidecar = onnx_sidecar_path(path)
    info = _onnx_info(ckpt, opset=opset, max_abs_diff=max_abs_diff)
    write_json(sidecar, info)
    return path, sidecar


def export_checkpoint(
    checkpoint: str | os.PathLike[str], output: str | os.PathLike[str], *,
    fmt: str | None = None, opset: int = ONNX_OPSET, verify: bool = True,
) -> tuple[Path, Path]:
    """Export ``checkpoint`` to ``output`` as ``fmt`` (default: from the extension).

    Returns the written file and its JSON sidecar.
    """
    fmt = resolve_format(output, fmt)
    ckpt = load_checkpoint(checkpoint)
    if fmt == "safetensors":
        return export_safetensors(ckpt, output)
    return export_onnx(ckpt, output, opset=opset, verify=verify)
