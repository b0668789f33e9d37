"""Words for counts in the lines a user reads: ``plural(1, "class")`` is "1 class"."""

from __future__ import annotations

__all__ = ["plural"]

_IRREGULAR = {"class": "classes", "process": "processes", "batch": "batches"}


def plural(count: int, noun: str) -> str:
    """``count`` and ``noun``, the noun in the plural unless the count is one (with thousands
    separators: "1,600 images")."""
    word = noun if count == 1 else _IRREGULAR.get(noun, noun + "s")
    return f"{count:,} {word}"
