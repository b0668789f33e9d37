"""`vit demo`: a Gradio app on a classifier. Drop an image, get the top classes and an overlay
of where the model looks, by the saliency method chosen in a list (``vit.explain.METHODS``).

    app = build_demo(Classifier.from_checkpoint("runs/x/best.pt"))
    app.launch(server_name="127.0.0.1", server_port=7860)

The app answers one API call, ``/predict`` (image, method) -> (top classes, overlay), which
``gradio_client`` calls too. Gradio is an optional extra: ``pip install 'vit[demo]'``; without
it ``build_demo`` raises one line that says so. The same app runs as a Hugging Face Space
(``vit push --demo``, ``vit.publish.space``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from vit.errors import VitError
from vit.explain.overlay import overlay
from vit.explain.saliency import DEFAULT_METHOD, METHODS, saliency
from vit.inference.classifier import Classifier, top_labels

__all__ = ["DEMO_INSTALL", "DEFAULT_METHOD", "import_gradio", "explain_image", "build_demo"]

DEMO_INSTALL = "pip install 'vit[demo]'"

logger = logging.getLogger(__name__)


def import_gradio() -> Any:
    """``gradio``, or one line that names the install command."""
    try:
        import gradio
    except ImportError as err:
        raise VitError(f"the demo app needs gradio: {DEMO_INSTALL}") from err
    return gradio


def explain_image(classifier: Classifier, image: Any, *, method: str = DEFAULT_METHOD,
                  topk: int = 5) -> tuple[list[tuple[str, float]], np.ndarray]:
    """The ``topk`` (label, probability) of one image and the overlay of ``method``'s map for
    the predicted class on the image as the model saw it (HxWx3 uint8)."""
    views = classifier.view([image])
    batch = classifier.normalise(views)
    top = top_labels(classifier.probabilities(batch), classifier.classes, topk)[0]
    maps = saliency(classifier.model, batch.to(classifier.device), method=method)
    return top, overlay(views[0], maps[0].detach().float().cpu())


def build_demo(classifier: Classifier, *, topk: int = 5, title: str | None = None,
               method: str = DEFAULT_METHOD) -> Any:
    """The Gradio app (a ``gradio.Interface``) on ``classifier``; call ``.launch()`` on it.
    ``method``: the saliency method selected when the page opens (`vit demo`: the one
    explain-bench recommended for the model, ``vit.explain.recommend.choose_method(...).method``,
    else the default)."""
    from vit.explain.saliency import zero_head_warning

    if method not in METHODS:
        raise VitError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    gr = import_gradio()
    warning = zero_head_warning(classifier.model, METHODS)
    if warning:
        logger.warning("%s", warning)

    def predict(image: np.ndarray | None, method: str) -> tuple[dict[str, float], np.ndarray]:
        if image is None:
            raise gr.Error("drop an image first")
        top, picture = explain_image(classifier, image, method=method, topk=topk)
        return dict(top), picture

    classes = ", ".join(classifier.classes[:12]) + (", ..." if len(classifier.classes) > 12
                                                     else "")
    return gr.Interface(
        fn=predict,
        inputs=[gr.Image(type="numpy", image_mode="RGB", label="image"),
                gr.Dropdown(list(METHODS), value=method, label="saliency method")],
        outputs=[gr.Label(num_top_classes=topk, label="top classes"),
                 gr.Image(type="numpy", label="where the model looks (predicted class)")],
        title=title or "Vision Transformer: what it sees and where it looks",
        description=f"{len(classifier.classes)} classes ({classes}); {classifier.img_size} px. "
                    "The overlay shows the chosen saliency map for the predicted class.",
        api_name="predict",
        flagging_mode="never",
    )
