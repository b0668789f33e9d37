"""Each subpackage's docstring lists its modules, one line each, and docs/layout.md names only
paths that exist and every module of vit/ (a folder row such as `vit/cli/` covers its files)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VIT = ROOT / "vit"
PACKAGES = sorted(p.parent for p in VIT.glob("*/__init__.py"))


def modules_of(package: Path) -> set[str]:
    """The modules and subpackages of a package, by name."""
    return ({p.stem for p in package.glob("*.py") if p.stem != "__init__"}
            | {p.name for p in package.iterdir() if (p / "__init__.py").is_file()})


def listed_in_docstring(package: Path) -> set[str]:
    """The names that begin an indented line of the package's docstring (``    name  what``)."""
    docstring = ast.get_docstring(ast.parse((package / "__init__.py").read_text()), clean=False) or ""
    return set(re.findall(r"^ {4}([a-z_][a-z0-9_]*)\b", docstring, flags=re.M))


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_the_package_docstring_lists_every_module(package):
    missing = sorted(modules_of(package) - listed_in_docstring(package))
    assert not missing, (f"vit/{package.name}/__init__.py's docstring does not list {missing}: "
                         f"add one line each ('    name  what it holds')")


def layout_paths() -> list[str]:
    return re.findall(r"`((?:vit|configs|benchmarks|tests|docs)/[^`\s]*)`",
                      (ROOT / "docs" / "layout.md").read_text())


def test_every_path_in_the_layout_exists():
    gone = [p for p in layout_paths() if not (ROOT / p).exists()]
    assert not gone, f"docs/layout.md names paths that do not exist: {gone}"


def test_the_layout_names_every_module():
    named = set(layout_paths())
    folders = tuple(p for p in named if p.endswith("/") and p != "vit/")  # a folder row
    modules = [str(p.relative_to(ROOT)) for p in sorted(VIT.rglob("*.py"))
               if p.name not in ("__init__.py", "__main__.py") and "__pycache__" not in p.parts]
    unnamed = [m for m in modules if m not in named and not m.startswith(folders)]
    assert not unnamed, f"docs/layout.md has no row for {unnamed}"
