"""The demo app as a Hugging Face Space (``vit push --demo``): ``app.py``, ``requirements.txt``
and a copy of this ``vit`` package, beside the model files.

``app.py`` runs the app of ``vit demo`` (``vit.publish.demo.build_demo``) on the model in its
own folder, or, in a Space that holds only the app, on the model repository it names.
"""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path

from vit.errors import OutputError
from vit.io import atomic_write

__all__ = ["write_space_files", "space_requirements", "APP_PY"]

APP_PY = '''"""The vit demo of {repo_id}: a Gradio app (Hugging Face Spaces run this file).

Locally: pip install -r requirements.txt && python app.py
"""

from pathlib import Path

from vit.inference.classifier import Classifier
from vit.publish.demo import build_demo

HERE = Path(__file__).resolve().parent
# The model beside this file, or the model repository when this folder holds only the app.
SOURCE = HERE if (HERE / "model.safetensors").is_file() else "{repo_id}"

demo = build_demo(Classifier.from_pretrained(SOURCE), title="{name}")

if __name__ == "__main__":
    demo.launch()
'''

# What the app needs beyond vit's own dependencies.
EXTRA_REQUIREMENTS = ["huggingface_hub>=0.25", "gradio>=5"]
# vit's dependencies, for when its metadata cannot be read (a source tree that is not installed)
FALLBACK_REQUIREMENTS = ["torch>=2.4", "torchvision>=0.19", "timm>=1.0", "albumentations>=1.4",
                         "torchmetrics>=1.3", "matplotlib>=3.7", "tqdm>=4.60", "pyyaml>=6.0",
                         "safetensors>=0.4", "numpy>=1.24", "pillow>=10.0"]


def space_requirements() -> list[str]:
    """vit's own dependencies (from its installed metadata), plus the Hub and gradio."""
    try:
        declared = importlib.metadata.requires("vit") or []
    except importlib.metadata.PackageNotFoundError:
        declared = []
    base = [r for r in declared if "extra ==" not in r] or FALLBACK_REQUIREMENTS
    return base + EXTRA_REQUIREMENTS


def write_space_files(folder: Path, *, repo_id: str) -> list[Path]:
    """Write ``app.py``, ``requirements.txt`` and ``vit/`` (a copy of this package) into
    ``folder``; returns what was written."""
    import vit

    name = repo_id.rsplit("/", 1)[-1]
    app = atomic_write(folder / "app.py", APP_PY.format(repo_id=repo_id, name=name))
    requirements = atomic_write(folder / "requirements.txt",
                                "\n".join(space_requirements()) + "\n")
    package = folder / "vit"
    try:
        shutil.copytree(Path(vit.__file__).resolve().parent, package, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    except OSError as err:
        raise OutputError(f"cannot copy the vit package into {package}: {err}") from err
    return [app, requirements, package]
