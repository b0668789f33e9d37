"""The tests' own shape: what several test files share lives in ``tests/helpers/`` or
``tests/conftest.py``; no test file imports another test file (nor conftest.py, whose fixtures
pytest hands out by name)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def every_test_file() -> list[Path]:
    return sorted(TESTS.rglob("test_*.py"))


def imports_of_test_files(source: str, test_modules: set[str]) -> list[str]:
    """The modules among ``test_modules`` (and conftest) that ``source`` imports: ``import X``,
    ``from X import ...``, ``from tests.X import ...``, lazily inside functions too, and
    ``importlib.import_module("X")``."""
    forbidden = test_modules | {"conftest"}
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", ""))
              in ("import_module", "__import__") and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names = [node.args[0].value]
        else:
            continue
        for name in names:
            parts = name.split(".")
            parts = parts[1:] if parts[0] == "tests" else parts
            if parts and parts[0] in forbidden:
                found.append(name)
    return found


def test_the_checker_sees_every_way_of_importing_a_test_file():
    modules = {"test_train", "test_predict"}
    source = ("import os\nfrom test_train import make_folder\nimport test_predict\n"
              "from tests.test_train import tiny_config\nfrom tests import test_predict\n"
              "def f():\n    from test_predict import save_checkpoint\n"
              "importlib.import_module('test_train')\nfrom conftest import shapes_dataset\n"
              "from helpers.models import tiny_vit\nfrom vit.cli import main\n")
    assert sorted(imports_of_test_files(source, modules)) == sorted([
        "test_train", "test_train.make_folder", "test_predict", "tests.test_train",
        "tests.test_train.tiny_config", "tests.test_predict", "test_predict",
        "test_predict.save_checkpoint", "test_train", "conftest", "conftest.shapes_dataset"])


def test_no_test_file_imports_another():
    files = every_test_file()
    assert len(files) > 40, "the test files were not found"
    modules = {path.stem for path in files}
    shared = sorted((TESTS / "helpers").glob("*.py")) + [TESTS / "conftest.py"]
    offenders = {str(path.relative_to(TESTS)): found for path in files + shared
                 if (found := imports_of_test_files(path.read_text(), modules))}
    assert offenders == {}, ("share through tests/helpers/ or a conftest.py fixture, not by "
                             f"importing a test file: {offenders}")
