"""The installed package imports from anywhere, also from the folder that holds a clone named
`vit` (issue 25: a script there met "cannot import name 'Classifier' from 'vit' (unknown
location)"): the editable install is a path entry (setup.cfg), which a namespace folder of the
same name cannot shadow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from site import getsitepackages

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = "from vit import Classifier\nimport vit\nprint(vit.__file__)\n"


def _clone(parent: Path) -> Path:
    """What `git clone` leaves in PARENT/vit, as far as the build needs it."""
    clone = parent / "vit"
    clone.mkdir(parents=True)
    for name in ("pyproject.toml", "setup.cfg", "README.md"):
        shutil.copy(ROOT / name, clone / name)
    shutil.copytree(ROOT / "vit", clone / "vit", ignore=shutil.ignore_patterns("__pycache__"))
    return clone


def _editable_install(clone: Path, site: Path) -> None:
    """`pip install -e CLONE`, offline: setuptools' PEP 660 hook builds the editable wheel,
    whose files are unpacked into SITE (a site directory of its own)."""
    build = subprocess.run(
        [sys.executable, "-c", "import sys; from setuptools import build_meta as b; "
         "print(b.build_editable(sys.argv[1]))", str(site.parent / "wheel")],
        cwd=clone, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = site.parent / "wheel" / build.stdout.split()[-1]
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)


def test_a_script_beside_a_clone_named_vit_imports_the_installed_package(tmp_path):
    parent = tmp_path / "code"
    clone = _clone(parent)
    site = tmp_path / "site"
    _editable_install(clone, site)
    (parent / "my_script.py").write_text(SCRIPT)
    # The script's folder first (as Python puts it), then the environment's packages (torch,
    # ...) without their .pth files (this checkout's own install must not help), then SITE
    # with its .pth, as site-packages would be read.
    run = ("import runpy, site, sys; sys.path[:0] = ['']; sys.path.extend(sys.argv[2:]); "
           "site.addsitedir(sys.argv[1]); runpy.run_path('my_script.py', run_name='__main__')")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-S", "-c", run, str(site), *getsitepackages()],
                          cwd=parent, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert Path(proc.stdout.strip()) == clone / "vit" / "__init__.py"
