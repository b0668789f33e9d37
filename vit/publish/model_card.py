"""The model card (``README.md``) of a model pushed to the Hub, through ``huggingface_hub``'s
``ModelCard`` and ``ModelCardData``: metadata the Hub reads (library timm, task, tags, the
validation accuracy as an eval result) above a page with the classes, the metrics, how to load
the model, the training config, the curves and the saliency overlays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from vit.models.hub import import_hub

__all__ = ["model_card", "CARD_TAGS", "MAX_LISTED_CLASSES"]

CARD_TAGS = ["image-classification", "timm", "vit", "vision-transformer"]
MAX_LISTED_CLASSES = 100


def model_card(ckpt: Mapping[str, Any], *, repo_id: str, images: Mapping[str, str],
               demo: bool = False) -> Any:
    """A ``huggingface_hub.ModelCard`` for checkpoint ``ckpt`` pushed as ``repo_id``;
    ``images`` maps a caption to a path inside the repository (curves, overlays)."""
    import_hub()
    from huggingface_hub import ModelCard, ModelCardData

    name = repo_id.rsplit("/", 1)[-1]
    # with the demo, the same README.md also tells a Space how to run app.py
    space = {"sdk": "gradio", "app_file": "app.py"} if demo else {}
    data = ModelCardData(library_name="timm", pipeline_tag="image-classification",
                         tags=list(CARD_TAGS), model_name=name,
                         eval_results=_eval_results(ckpt) or None, **space)
    sections = [_summary(ckpt, name), _classes(ckpt["classes"]), _metrics(ckpt),
                _usage(repo_id), _figures(images), _demo() if demo else "", _config(ckpt)]
    body = "\n\n".join(s for s in sections if s)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


def _data_name(ckpt: Mapping[str, Any]) -> str:
    root = ((ckpt.get("config") or {}).get("data") or {}).get("root")
    return Path(str(root)).name if root else "images"


def _eval_results(ckpt: Mapping[str, Any]) -> list[Any]:
    from huggingface_hub import EvalResult

    metrics = ckpt.get("metrics") or {}
    found = [("val_top1", "validation top-1 accuracy (%)"),
             ("val_top5", "validation top-5 accuracy (%)")]
    return [EvalResult(task_type="image-classification", dataset_type="imagefolder",
                       dataset_name=_data_name(ckpt), dataset_split="validation",
                       metric_type="accuracy", metric_name=label,
                       metric_value=round(float(metrics[key]), 4))
            for key, label in found if isinstance(metrics.get(key), int | float)]


def _summary(ckpt: Mapping[str, Any], name: str) -> str:
    from vit.models.architecture import describe_spec

    m = describe_spec(ckpt["model_config"])
    params = sum(t.numel() for t in ckpt["model"].values())
    kind = "" if m.name == "vit" else f" (timm's `{m.name.removeprefix('timm:')}`, {m.family})"
    return (f"# {name}\n\nA Vision Transformer{kind} trained with `vit` to tell "
            f"{len(ckpt['classes'])} classes apart: {params / 1e6:.2f}M parameters, "
            f"{m.img_size} px images cut into {m.patch_size} px patches, {m.depth} "
            f"blocks of width {m.embed_dim} with {m.num_heads} heads. Its weights load in "
            "timm as they are (`model.safetensors`, `config.json`).")


def _classes(classes: Sequence[str]) -> str:
    rows = [f"| {i} | {c} |" for i, c in enumerate(classes[:MAX_LISTED_CLASSES])]
    more = len(classes) - MAX_LISTED_CLASSES
    tail = f"\n\n... and {more} more (all in `config.json`, `label_names`)" if more > 0 else ""
    return "## Classes\n\n| index | class |\n| --- | --- |\n" + "\n".join(rows) + tail


def _metrics(ckpt: Mapping[str, Any]) -> str:
    metrics = ckpt.get("metrics") or {}
    names = {"val_top1": "validation top-1 (%)", "val_top5": "validation top-5 (%)",
             "val_loss": "validation loss", "train_loss": "training loss", "epoch": "epoch"}
    rows = [f"| {label} | {_number(metrics[key])} |" for key, label in names.items()
            if isinstance(metrics.get(key), int | float)]
    if not rows:
        return ""
    return ("## Metrics\n\nOn the images the training run held out for validation, at the "
            "epoch they chose (so slightly optimistic; `vit evaluate` on a test folder gives the "
            "honest score).\n\n| metric | value |\n| --- | --- |\n" + "\n".join(rows))


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def _usage(repo_id: str) -> str:
    return f"""## Use it

With timm:

```python
import timm
from PIL import Image

model = timm.create_model("hf_hub:{repo_id}", pretrained=True).eval()
transform = timm.data.create_transform(**timm.data.resolve_data_config({{}}, model=model))
logits = model(transform(Image.open("image.jpg").convert("RGB"))[None])
print(model.pretrained_cfg["label_names"][int(logits.argmax())])
```

With vit (`pip install 'vit[hub]'`), which also explains the prediction:

```python
from vit import Classifier

clf = Classifier.from_pretrained("{repo_id}")
print(clf.predict("image.jpg", topk=3))
```

Fine-tune it on your own classes: `vit train --data DIR --pretrained hf:{repo_id}`."""


def _figures(images: Mapping[str, str]) -> str:
    return "\n\n".join(f"## {caption}\n\n![{caption}]({path})" for caption, path in images.items())


def _demo() -> str:
    return ("## Demo\n\n`app.py` runs a Gradio app on this model: drop an image, get the top "
            "classes and where the model looks, by the saliency method of your choice. Locally: "
            "`pip install -r requirements.txt && python app.py`; as a Hugging Face Space: create "
            "a Gradio Space and upload this repository's files to it.")


def _config(ckpt: Mapping[str, Any]) -> str:
    config = ckpt.get("config") or {}
    if not config:
        return ""
    text = yaml.safe_dump(dict(config), sort_keys=False)
    return ("## Training config\n\nThe resolved config of the run (`python train.py --config "
            f"config.yaml` repeats it on the same data):\n\n```yaml\n{text}```")
