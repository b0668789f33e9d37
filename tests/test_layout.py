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
    "plots": 2, "run_folder": 2,
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


def imported_modules(path: Path) -> set[str]:
    """The vit modules a module imports (``vit.x.y``, or ``vit.x.y.NAME`` where NAME may be a
    module), lazily inside functions included, and those named to ``import_module``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if node.module != "vit" else [
                f"vit.{a.name}" for a in node.names if a.name != "__version__"]
            if node.module != "vit":
                names += [f"{node.module}.{a.name}" for a in node.names]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(
                node.func, "id", None)) == "import_module" and node.args
                and isinstance(node.args[0], ast.Constant | ast.JoinedStr)):
            first = node.args[0]
            names = [first.value if isinstance(first, ast.Constant) else
                     "".join(v.value for v in first.values if isinstance(v, ast.Constant))]
        else:
            continue
        found |= {name for name in names if name.startswith("vit.")}
    return found


def imported_packages(path: Path) -> set[str]:
    """The vit packages a module imports, lazily inside functions and by ``import_module``
    included."""
    return {name.split(".")[1] for name in imported_modules(path) if name.split(".")[1]}


def test_every_module_is_in_a_layer():
    assert {package_of(p) for p in modules()} == set(LAYERS)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(VIT)))
def test_lower_layers_never_import_higher_ones(path):
    own = package_of(path)
    for other in imported_packages(path) - {own}:
        assert LAYERS[other] < LAYERS[own], f"{own} (layer {LAYERS[own]}) imports {other} " \
                                            f"(layer {LAYERS[other]})"


def module_name(path: Path) -> str:
    parts = path.relative_to(VIT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_import_layer_sees_import_module():
    """A module named to import_module counts as imported (the CLI's registry once hid a loop
    this way)."""
    source = 'import importlib\nimportlib.import_module(f"vit.cli.{name}")\n' \
             'from importlib import import_module\nimport_module("vit.training.trainer")\n'
    path = VIT.parent / "tests" / "fixtures" / "_import_module_probe.py"
    try:
        path.write_text(source)
        assert {"vit.cli.", "vit.training.trainer"} <= imported_modules(path)
    finally:
        path.unlink(missing_ok=True)


def test_no_cli_command_imports_the_entry_point_back():
    """cli/main.py imports every command (its static registry); a command that imports
    cli/main.py back makes a loop: shared options live in cli/options.py."""
    loops = [module_name(p) for p in sorted((VIT / "cli").glob("*.py"))
             if p.stem not in ("main", "__init__") and any(
                 m == "vit.cli.main" or m.startswith("vit.cli.main.")
                 for m in imported_modules(p))]
    assert not loops, f"these commands import vit.cli.main back: {loops}"


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


def test_only_run_folder_spells_the_run_folders_file_names():
    """`vit/run_folder.py` names the files of a run folder; every reader and writer uses its
    names, so a file is renamed in one place."""
    from vit import run_folder

    names = {getattr(run_folder, n) for n in run_folder.__all__ if n.isupper()}
    spelled = [f"{path.relative_to(VIT)}:{node.lineno} {node.value!r}"
               for path in modules() if path.name != "run_folder.py"
               for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.Constant) and node.value in names]
    assert not spelled, f"file names of the run folder spelled outside run_folder.py: {spelled}"
