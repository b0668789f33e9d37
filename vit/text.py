"""Words for counts in the lines a user reads: ``plural(1, "class")`` is "1 class",
``count_in_words(6)`` is "six"."""

from __future__ import annotations

__all__ = ["plural", "count_in_words"]

_IRREGULAR = {"class": "classes", "process": "processes", "batch": "batches"}
_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
          "eleven", "twelve")


def plural(count: int, noun: str) -> str:
    """``count`` and ``noun``, the noun in the plural unless the count is one (with thousands
    separators: "1,600 images")."""
    word = noun if count == 1 else _IRREGULAR.get(noun, noun + "s")
    return f"{count:,} {word}"


def count_in_words(count: int) -> str:
    """``count`` as a word up to twelve ("six"), in digits above ("13")."""
    return _WORDS[count] if 0 <= count < len(_WORDS) else str(count)
