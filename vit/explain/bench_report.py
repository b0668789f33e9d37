"""The explain-bench result as Markdown: the main table, each column's leader, the cascade."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vit.explain.bench import COLUMNS, REFERENCES, SANITY_THRESHOLD

__all__ = ["markdown_report", "cell"]


def cell(row: Mapping[str, Any], key: str, scale: float = 1.0, digits: int = 3) -> str:
    if key not in row:
        return "-"
    return f"{row[key] * scale:.{digits}f} ± {row[f'{key}_sem'] * scale:.{digits}f}"


def _best(rows: Sequence[Mapping[str, Any]], key: str, higher: bool) -> str | None:
    """The contender (not a reference row) with the best mean in this column."""
    contenders = [r for r in rows if r["method"] not in REFERENCES and key in r]
    if not contenders:
        return None
    return max(contenders, key=lambda r: r[key] if higher else -r[key])["method"]


def _line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown_report(result: Mapping[str, Any]) -> str:
    """The main table (faithfulness, sanity, asked object) and the randomisation cascade."""
    rows, half = result["rows"], result["half_stage"]
    sanity = any("sanity" in r for r in rows)  # not with --no-sanity
    columns = [(k, t, h, 1.0, 3) for k, t, h in COLUMNS]
    if sanity:
        columns.append((f"random_{half}", f"ρ, {half} of {result['depth']} blocks random ↓",
                         False, 1.0, 2))
    if any("asked_object" in r for r in rows):
        columns.append(("asked_object", "asked object (%) ↑", True, 100.0, 1))
    best = {key: _best(rows, key, higher) for key, _, higher, _, _ in columns}
    verdict = ["sanity check"] if sanity else []
    lines = [_line(["method", *(title for _, title, _, _, _ in columns), *verdict]),
             _line(["---", *("---:" for _ in columns), *("---" for _ in verdict)])]
    for row in rows:
        name = row["method"] + (" (reference)" if row["method"] in REFERENCES else "")
        cells = [f"**{cell(row, k, s, d)}**" if best[k] == row["method"] else cell(row, k, s, d)
                 for k, _, _, s, d in columns]
        lines.append(_line([name, *cells, *([row.get("sanity", "-")] if sanity else [])]))
    parts = [*lines, "", _paired_lines(result)]
    if sanity:
        parts += ["", _cascade_table(result)]
    return "\n".join(parts)


def _paired_lines(result: Mapping[str, Any]) -> str:
    """How far the best method of each column is ahead of the others, paired per image."""
    lines = ["Best per column and its lead over each other method (mean ± standard error of the "
             "per-image difference; positive = ahead):", ""]
    for key, title, _ in COLUMNS:
        if key in result.get("paired", {}):
            found = result["paired"][key]
            leads = ", ".join(f"{m} {d:+.3f} ± {e:.3f}" for m, (d, e) in found["ahead_of"].items())
            lines.append(f"- {title}: **{found['best']}**, ahead of {leads}")
    return "\n".join(lines)


def _cascade_table(result: Mapping[str, Any]) -> str:
    stages = range(result["depth"] + 1)
    names = ["head"] + [f"+{k} block{'s' if k > 1 else ''}" for k in stages[1:]]
    lines = ["Spearman ρ between the trained model's map and the map with the head and the top "
             f"k blocks re-initialised (Adebayo et al. 2018); a map passes below "
             f"{SANITY_THRESHOLD} at {result['half_stage']} blocks.", "",
             _line(["method", *names]), _line(["---", *("---:" for _ in stages)])]
    for row in result["rows"]:
        if "random_0" in row:
            lines.append(_line([row["method"], *(cell(row, f"random_{k}", 1.0, 2)
                                                 for k in stages)]))
    return "\n".join(lines)

