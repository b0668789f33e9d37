"""Servers and launches on this machine: a fresh interpreter, a free port, torchrun over
loopback, the demo app."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .training import ROOT

# one machine: gloo over loopback, whatever the host name resolves to
DIST_ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
            "GLOO_SOCKET_IFNAME": "lo"}


def fresh_python(code: str, *, timeout: float = 120) -> str:
    """Run ``python -c code`` in a new interpreter in the repository (nothing imported yet) and
    return its stdout; fails the test with the end of its stderr when it exits non-zero."""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], *, nnodes: int = 1, nproc: int = 2, port: int | None = None,
             run_id: str = "vit-test") -> list[str]:
    """The command line of ``torchrun train.py ARGS`` (c10d rendezvous on 127.0.0.1)."""
    endpoint = f"127.0.0.1:{port if port is not None else 0}"
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}",
            f"--nproc_per_node={nproc}", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}",
            f"--rdzv-id={run_id}", str(ROOT / "train.py"), *args]


def needs_gradio():
    """gradio_client, or skip the test when gradio is not installed."""
    pytest.importorskip("gradio", reason="the demo needs gradio: pip install -e '.[demo]'")
    return pytest.importorskip("gradio_client", reason="gradio_client comes with gradio")


def ask(gradio_client, url: str, image: Path, method: str) -> tuple[list[str], np.ndarray]:
    """The demo app's answer for one image: its top labels in order, and the overlay picture."""
    client = gradio_client.Client(url, verbose=False)
    label, picture = client.predict(gradio_client.handle_file(str(image)), method,
                                    api_name="/predict")
    labels = [c["label"] for c in label["confidences"]]
    return labels, np.asarray(Image.open(picture))
