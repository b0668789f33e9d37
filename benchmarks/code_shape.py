"""The shape of the code in `vit/` (issue 26 item 9): the largest class and function in lines,
and the function with the most parameters.

    python benchmarks/code_shape.py
"""

from __future__ import annotations

import ast
from pathlib import Path

VIT = Path(__file__).resolve().parent.parent / "vit"


def _lines(node: ast.AST) -> int:
    start = min([d.lineno for d in getattr(node, "decorator_list", [])] + [node.lineno])
    return node.end_lineno - start + 1


def _parameters(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Every parameter a caller can pass (``self`` and ``cls`` not counted)."""
    a = node.args
    names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
    names += [p.arg for p in (a.vararg, a.kwarg) if p is not None]
    return len([n for n in names if n not in ("self", "cls")])


def shape(root: Path = VIT) -> dict[str, tuple[int, str]]:
    """{"largest class": (lines, where), "largest function": ..., "widest function": (params, where)}."""
    classes, functions, widths = [], [], []
    for path in sorted(root.rglob("*.py")):
        where = str(path.relative_to(root.parent))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                classes.append((_lines(node), f"{where}:{node.name}"))
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                functions.append((_lines(node), f"{where}:{node.name}"))
                widths.append((_parameters(node), f"{where}:{node.name}"))
    return {"largest class (lines)": max(classes), "largest function (lines)": max(functions),
            "widest function (parameters)": max(widths)}


if __name__ == "__main__":
    for name, (number, where) in shape().items():
        print(f"{name:30} {number:4}  {where}")
