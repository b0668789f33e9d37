"""`vit demo` and the Space of `vit push --demo`: the Gradio app started on 127.0.0.1 and called
with gradio_client, as a browser or a script would; its top-k must be Classifier.predict's."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.images import COLOURS, colour_image
from helpers.models import save_checkpoint, tiny_vit
from helpers.processes import ask, free_port, needs_gradio
from PIL import Image

from vit.cli import main
from vit.inference.classifier import Classifier

CLASSES = list(COLOURS)
# gradio's queue calls pandas options that pandas 3 deprecates: gradio's business, not ours
pytestmark = pytest.mark.filterwarnings("ignore:::gradio")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("demo") / "best.pt", tiny_vit(head_std=2.0), CLASSES)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, rgb in enumerate(COLOURS.values()):
        paths.append(folder / f"{i}.png")
        Image.fromarray(colour_image(rgb, size=(40 + 4 * i, 36), seed=i)).save(paths[-1])
    return paths


def test_the_app_answers_like_classifier_predict(checkpoint, images, monkeypatch):
    gradio_client = needs_gradio()
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    from vit.publish.demo import build_demo

    clf = Classifier.from_checkpoint(checkpoint, device="cpu")
    app = build_demo(clf, topk=2)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        expected = clf.predict(images, topk=2)
        for image, method, want in zip(images, ["rollout", "attnlrp", "gradcam"], expected,
                                       strict=True):
            labels, picture = ask(gradio_client, f"http://127.0.0.1:{port}/", image, method)
            assert labels == [label for label, _ in want]
            assert picture.ndim == 3 and picture.shape[2] in (3, 4)
    finally:
        app.close()


@pytest.mark.slow
def test_the_space_app_runs_the_same_app(checkpoint, images, tmp_path):
    """`vit push --demo` writes app.py, requirements.txt and vit/; `python app.py` in that
    folder (what a Space runs) serves the model of the folder."""
    gradio_client = needs_gradio()
    folder = tmp_path / "space"
    assert main(["push", str(checkpoint), "--to-folder", str(folder), "--demo"]) == 0
    assert (folder / "vit" / "publish" / "demo.py").is_file()
    requirements = (folder / "requirements.txt").read_text().split()
    assert any(r.startswith("gradio") for r in requirements)
    assert any(r.startswith("torch") for r in requirements)
    from huggingface_hub import ModelCard

    card = ModelCard.load(folder / "README.md")  # a Space reads its sdk and app from here
    assert (card.data.sdk, card.data.app_file) == ("gradio", "app.py")

    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
               GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH="")
    server = subprocess.Popen([sys.executable, "app.py"], cwd=folder, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(port, server)
        labels, _ = ask(gradio_client, f"http://127.0.0.1:{port}/", images[0], "rollout")
        clf = Classifier.from_checkpoint(checkpoint, device="cpu")
        assert labels == [label for label, _ in clf.predict(images[0], topk=5)[0]]
    finally:
        server.terminate()
        server.wait(timeout=30)



def _wait_for(port: int, server: subprocess.Popen, limit_s: float = 180.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"app.py exited with {server.returncode}: {server.stdout.read()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    pytest.fail(f"app.py did not listen on port {port} within {limit_s:.0f} s")


def test_a_missing_gradio_names_the_install_command(checkpoint, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import fails
    assert main(["demo", str(checkpoint), "--port", str(free_port())]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: the demo app needs gradio: pip install 'vit[demo]'")
