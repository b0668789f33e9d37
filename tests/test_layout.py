"""The package's shape: folders are layers, a lower layer never imports a higher one, and no
function is longer than a screen."""

import ast
from pathlib import Path

import pytest

VIT = Path(__file__).resolve().parent.parent / "vit"

# The layers, lowest first. A module may import its own package (a folder or a top-level
# module) and anything in a lower layer; packages that share a layer know nothing of each other.
LAYERS = {
    "errors": 0, "text": 0,
    "config": 1, "runtime": 1, "io": 1,
    "plots": 2,
    "models": 3, "data": 3,
    "explain": 4,
    "inference": 5,
    "bench": 6, "figures": 6, "publish": 6,
    "training": 7,
    "cli": 8,
}
MAX_FUNCTION_LINES = 60


def modules() -> list[Path]:
    return sorted(p for p in VIT.rglob("*.py") if p.parent != VIT or p.stem not in
                  ("__init__", "__main__"))  # the package root is the public face: it may import anything


def package_of(path: Path) -> str:
    return path.relative_to(VIT).parts[0].removesuffix(".py")


def imported_packages(path: Path) -> set[str]:
    """The vit packages a module imports, lazily inside functions included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if node.module != "vit" else [
                f"vit.{a.name}" for a in node.names if a.name != "__version__"]
        else:
            continue
        found |= {name.split(".")[1] for name in names
                  if name.startswith("vit.") and name.count(".") >= 1}
    return found


def test_every_module_is_in_a_layer():
    assert {package_of(p) for p in modules()} == set(LAYERS)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(VIT)))
def test_lower_layers_never_import_higher_ones(path):
    own = package_of(path)
    for other in imported_packages(path) - {own}:
        assert LAYERS[other] < LAYERS[own], f"{own} (layer {LAYERS[own]}) imports {other} " \
                                            f"(layer {LAYERS[other]})"


def test_no_function_is_longer_than_a_screen():
    long = []
    for path in modules() + [VIT / "__init__.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = min([d.lineno for d in node.decorator_list] + [node.lineno])
                if node.end_lineno - start + 1 > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(VIT)}:{node.name} "
                                f"({node.end_lineno - start + 1} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_no_source_file_is_git_ignored():
    """A pattern like `data/` in .gitignore once hid vit/data/*.py from every fresh clone."""
    import shutil
    import subprocess

    root = VIT.parent
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    sources = [str(p.relative_to(root)) for p in sorted(VIT.rglob("*.py")) +
               sorted((root / "tests").rglob("*.py")) if "__pycache__" not in p.parts]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=root,
                             input="\n".join(sources), capture_output=True, text=True).stdout
    assert not ignored.split(), f"git ignores these source files: {ignored.split()}"
