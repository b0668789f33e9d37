"""The explain-bench result as Markdown: the main table, each column's leader, the cascade, and
last the recommended method with the rule that picked it and how sure it is."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vit.bench.measures import COLUMNS, REFERENCES, SANITY_THRESHOLD
from vit.explain.recommend import RULE_COLUMNS, TIE_SE, in_se

__all__ = ["markdown_report", "recommendation_lines", "cell"]


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
    columns = [(k, t, h, 1.0, 3) for k, t, h in COLUMNS if any(k in r for r in rows)]
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
    if "recommendation" in result:
        parts += ["", *recommendation_lines(result["recommendation"])]
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
    stages = result.get("stages", range(result["depth"] + 1))
    names = [f"+{k} block{'s' if k > 1 else ''}" if k else "head" for k in stages]
    checked = result.get("sanity_images")
    on = f" On {len(checked)} of the {result['images']} images." if checked is not None else ""
    lines = ["Spearman ρ between the trained model's map and the map with the head and the top "
             f"k blocks re-initialised (Adebayo et al. 2018); a map passes below "
             f"{SANITY_THRESHOLD} at {result['half_stage']} blocks.{on}", "",
             _line(["method", *names]), _line(["---", *("---:" for _ in stages)])]
    for row in result["rows"]:
        if "random_0" in row:
            lines.append(_line([row["method"], *(cell(row, f"random_{k}", 1.0, 2)
                                                 for k in stages)]))
    return "\n".join(lines)



def _leads_in_se(leads: Mapping[str, Sequence[float]]) -> str:
    """``+3.1 / +0.4 / -1.2``: each rule column's lead in standard errors."""
    z = [in_se(*leads[key]) for key, _, _ in RULE_COLUMNS]
    return " / ".join(f"{v:+.1f}".replace("inf", "∞") for v in z)


def _how_sure(found: Mapping[str, Any]) -> str:
    """``tied with a; trades off with b; clearly ahead of c, d.``"""
    names = {"tie": "tied with", "trade-off": "trades off with", "ahead": "clearly ahead of"}
    by = {v: [m for m, found_v in found["verdicts"].items() if found_v == v] for v in names}
    parts = [f"{names[v]} {', '.join(ms)}" for v, ms in by.items() if ms]
    return "; ".join(parts) if parts else "no other method passes"


def _headline(found: Mapping[str, Any]) -> str:
    """The recommended method, its mean rank, how sure, and a narrow randomisation pass."""
    best = found["method"]
    text = (f"**{best}** for this model: the best mean rank ({found['ranks'][best]['mean']:.2f}) "
            f"of the {len(found['ranks'])} methods that pass the randomisation check; "
            f"{_how_sure(found)} (by {TIE_SE:g} standard errors, below).")
    if found.get("narrow_pass"):
        rho, sem, threshold = found["sanity"]
        text += (f" Its randomisation check passes narrowly: ρ {rho:.2f} ± {sem:.2f} at half the "
                 f"blocks, within {TIE_SE:g} standard errors of {threshold:g}; more "
                 "--sanity-images would settle it.")
    return text


def _rank_table(found: Mapping[str, Any]) -> list[str]:
    best = found["method"]
    lines = [_line(["method", *(f"rank, {t}" for _, t, _ in RULE_COLUMNS), "mean rank",
                    f"lead of {best} in standard errors ("
                    + " / ".join(t.split(",")[0] for _, t, _ in RULE_COLUMNS) + ")"]),
             _line(["---", *("---:" for _ in range(len(RULE_COLUMNS) + 1)), "---"])]
    for method, ranks in found["ranks"].items():
        lead = "-" if method == best else (f"{_leads_in_se(found['leads'][method])}: "
                                           f"{found['verdicts'][method]}")
        lines.append(_line([method, *(f"{ranks[k]:g}" for k, _, _ in RULE_COLUMNS),
                            f"{ranks['mean']:.2f}", lead]))
    return lines


def recommendation_lines(found: Mapping[str, Any]) -> list[str]:
    """The recommendation: the method, how sure (leads in standard errors, ties), the ranks
    behind it, the methods left out, where it was recorded and the rule itself."""
    lines = ["## Recommendation", ""]
    if found["method"] is None:
        lines += ["**None**: no saliency method passes the randomisation check on this model "
                  "(or the check was not run), and the rule below needs it. The package's "
                  "default is used; trust no map of this model without looking at why.", ""]
    else:
        lines += [_headline(found), "", *_rank_table(found), ""]
    if found["excluded"]:
        lines += ["Not considered: " + "; ".join(f"{m} ({why})"
                                                 for m, why in found["excluded"].items()) + ".",
                  ""]
    if "recorded" in found:
        lines += [f"Recorded in `{found['recorded']}`: `vit explain`, the end-of-run overlays, "
                  "the explorer page and `vit demo` use it for this model unless --method says "
                  "otherwise." if found["recorded"] else
                  f"Not recorded: {found.get('not_recorded', 'see above')}.", ""]
    return [*lines, f"Rule: {found['rule']}"]
