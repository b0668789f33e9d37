"""Which saliency method to believe for one model: the rule that picks it from explain-bench's
measures, and the small file beside the checkpoint that records it.

    recommendation = recommend(result, references, 0.3)   # result: explain_bench's
    recorded_method("runs/x/best.pt", record)        # writes runs/x/explain_method.json
    choice = choose_method("runs/x/best.pt")         # .method: what explain, overlays, explorer,
                                                     # demo use; .why, .source: why, from where

The rule (``RULE``, written into every report): among the saliency methods that pass the
randomisation check, rank each on token deletion, token insertion and token LeRF-MoRF by its
mean over the images; the recommended method has the best mean of the three ranks. How sure:
its lead over every other passing method on each column, paired image by image, in standard
errors. Under ``TIE_SE`` on every column, the two are tied; ahead on one column and behind on
another by that much, they trade off; else it is clearly ahead.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vit import run_folder
from vit.io import atomic_write

__all__ = ["RULE", "RULE_COLUMNS", "TIE_SE", "METHOD_FILE", "recommend", "in_se",
           "recorded_method", "choose_method", "MethodChoice", "CHOICE_SOURCES", "method_file"]

logger = logging.getLogger(__name__)

RULE_COLUMNS = (  # (measure, title, True when higher is better)
    ("token_deletion", "deletion, tokens", False),
    ("token_insertion", "insertion, tokens", True),
    ("token_gap", "LeRF−MoRF, tokens", True),
)

TIE_SE = 2.0  # a lead under this many standard errors is no lead
DECIMALS = 3  # means are ranked as the report prints them

RULE = (
    "Among the saliency methods that pass the randomisation check, rank each on token deletion "
    "(lower is better), token insertion and token LeRF−MoRF (higher is better) by its mean over "
    f"the images to {DECIMALS} decimals, equal means sharing a rank; the recommended method has "
    "the best mean of its three ranks (equal mean ranks: the lower token deletion). How sure: "
    "its lead over each other passing method on each of the three columns, the paired per-image "
    f"difference in standard errors. When no column gives it a lead of {TIE_SE:g} standard "
    f"errors or more (and {10 ** -DECIMALS:g} or more), the two are tied; when one column does and another gives the other method "
    "such a lead, they trade off; otherwise it is clearly ahead.")

METHOD_FILE = run_folder.EXPLAIN_METHOD  # beside the checkpoint: the run's recommended method


def _ranks(values: Mapping[str, float], higher: bool) -> dict[str, float]:
    """1 = best; values equal to ``DECIMALS`` decimals share the mean of their ranks."""
    rounded = {m: round(v if higher else -v, DECIMALS) for m, v in values.items()}
    return {m: 1 + sum(r > v for r in rounded.values()) + (sum(r == v for r in rounded.values())
                                                           - 1) / 2
            for m, v in rounded.items()}


def _lead(best: Sequence[float], other: Sequence[float], higher: bool) -> tuple[float, float]:
    """Mean and standard error of the paired per-image lead of ``best`` (positive = ahead)."""
    sign = 1.0 if higher else -1.0
    diffs = [sign * (b - o) for b, o in zip(best, other, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n
    sem = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n) if n > 1 else 0.0
    return mean, sem


def in_se(mean: float, sem: float) -> float:
    """A lead in standard errors; ±inf for a lead with no spread (the same on every image)."""
    if sem > 1e-12 * max(1.0, abs(mean)):
        return mean / sem
    return 0.0 if abs(mean) <= 1e-12 else math.copysign(math.inf, mean)


def verdict(leads: Sequence[tuple[float, float]]) -> str:
    """"ahead", "tie" or "trade-off" from the leads (mean, sem) on the rule's columns; a lead
    under ``10 ** -DECIMALS`` (invisible in the report) counts as none."""
    z = [in_se(mean, sem) if abs(mean) >= 10 ** -DECIMALS else 0.0 for mean, sem in leads]
    if max(z) < TIE_SE:
        return "tie"
    return "trade-off" if min(z) <= -TIE_SE else "ahead"


def _candidates(result: Mapping[str, Any], references: Sequence[str]
                ) -> tuple[list[str], dict, dict[str, float]]:
    """The methods that may be recommended (measured, not references, passing the check), for
    the others why not, and each method's ρ at half the blocks (where the check ran)."""
    passing, excluded, rho = [], {}, {}
    key = f"random_{result['half_stage']}"
    for row in result["rows"]:
        if row["method"] in references:
            continue
        if key in row:
            rho[row["method"]] = row[key]
        if row.get("sanity") == "pass":
            passing.append(row["method"])
        else:
            excluded[row["method"]] = (f"fails the randomisation check: ρ {row[key]:.2f} at half "
                                       "the blocks" if key in row else
                                       "randomisation check not run")
    return passing, excluded, rho


def recommend(result: Mapping[str, Any], references: Sequence[str], threshold: float
              ) -> dict[str, Any]:
    """The method ``RULE`` picks from an explain-bench result (its ``rows`` with sanity verdicts
    at ``threshold`` and its ``per_image`` values), with the ranks, the leads and the verdicts
    behind it: ``{"method", "rule", "ranks", "leads", "verdicts", "tied_with",
    "trades_off_with", "excluded", "rho", "sanity": [its ρ, sem, threshold], "narrow_pass"}``
    (``excluded``: why, in words; ``rho``: each method's ρ at half the blocks random, where the
    check ran; ``narrow_pass``: its ρ is within ``TIE_SE`` standard errors of the threshold).
    ``method`` is None when no method passes the randomisation check (or it was not run)."""
    passing, excluded, rho = _candidates(result, references)
    out: dict[str, Any] = {"method": None, "rule": RULE, "ranks": {}, "leads": {},
                           "verdicts": {}, "tied_with": [], "trades_off_with": [],
                           "excluded": excluded, "rho": rho}
    if not passing:
        return out
    rows = {r["method"]: r for r in result["rows"]}
    per_column = [_ranks({m: rows[m][key] for m in passing}, higher)
                  for key, _, higher in RULE_COLUMNS]
    mean_rank = {m: sum(r[m] for r in per_column) / len(per_column) for m in passing}
    best = min(passing, key=lambda m: (mean_rank[m], rows[m]["token_deletion"]))
    out["method"] = best
    out["ranks"] = {m: {**{key: r[m] for (key, _, _), r in zip(RULE_COLUMNS, per_column,
                                                              strict=True)},
                        "mean": mean_rank[m]} for m in sorted(passing, key=mean_rank.get)}
    values = result["per_image"]
    for other in out["ranks"]:
        if other != best:
            leads = [_lead(values[best][key], values[other][key], higher)
                     for key, _, higher in RULE_COLUMNS]
            out["leads"][other] = {key: list(lead) for (key, _, _), lead in
                                   zip(RULE_COLUMNS, leads, strict=True)}
            out["verdicts"][other] = verdict(leads)
    out["tied_with"] = [m for m, v in out["verdicts"].items() if v == "tie"]
    out["trades_off_with"] = [m for m, v in out["verdicts"].items() if v == "trade-off"]
    key = f"random_{result['half_stage']}"
    rho, sem = rows[best][key], rows[best].get(f"{key}_sem", 0.0)
    out["narrow_pass"] = rho + TIE_SE * sem >= threshold  # its verdict could flip
    out["sanity"] = [rho, sem, threshold]
    return out


def method_file(checkpoint: str | Path) -> Path:
    """Where a run's recommendation lives: ``METHOD_FILE`` in the checkpoint's folder (or in the
    folder itself, for a folder model such as ``vit push --to-folder`` writes)."""
    return run_folder.folder_of(checkpoint) / METHOD_FILE


def recorded_method(checkpoint: str | Path, record: Mapping[str, Any] | None = None
                    ) -> dict[str, Any] | None:
    """The one reader and writer of ``METHOD_FILE``: with ``record`` (``recommend``'s result and
    where it came from), write it beside ``checkpoint`` first; return what is recorded there,
    None when nothing is. An unreadable file counts as none (a warning says why)."""
    path = method_file(checkpoint)
    if record is not None:
        atomic_write(path, json.dumps(dict(record), indent=2, ensure_ascii=False) + "\n")
    if not path.is_file():
        return None
    try:
        found = json.loads(path.read_text())
        if not isinstance(found, dict) or not isinstance(found.get("method"), str | None):
            raise ValueError("no method in it")
    except (OSError, ValueError) as e:
        logger.warning("ignoring %s: %s", path, e)
        return None
    return found


CHOICE_SOURCES = ("requested", "recorded", "default")  # where a MethodChoice came from


@dataclass(frozen=True)
class MethodChoice:
    """The saliency method for a model (``choose_method``), one line saying why (None when it
    was asked for), and where the choice came from: ``"requested"`` (``--method``),
    ``"recorded"`` (the file explain-bench wrote beside the checkpoint decided: its method, or
    the default when it names none this version can use or cannot be read) or ``"default"``
    (no such file: the package's ``DEFAULT_METHOD``)."""

    method: str
    why: str | None
    source: str  # one of CHOICE_SOURCES


def choose_method(checkpoint: str | Path, requested: str | None = None) -> MethodChoice:
    """The saliency method for a model, why, and from where (``MethodChoice``): ``requested``
    (``--method``) always wins (no line); else the method explain-bench recorded beside the
    checkpoint; else the package's ``DEFAULT_METHOD``."""
    from vit.explain.saliency import DEFAULT_METHOD, METHODS

    if requested is not None:
        return MethodChoice(requested, None, "requested")
    where = method_file(checkpoint)
    local = Path(checkpoint).expanduser().exists()
    found = recorded_method(checkpoint) if local else None
    if found is None:
        return MethodChoice(DEFAULT_METHOD, (
            f"saliency method: {DEFAULT_METHOD}, the default (no explain-bench recommendation "
            "for this model; `vit explain-bench` measures one); --method picks another"),
            "recorded" if where.is_file() else "default")  # recorded: a file it could not read
    method = found["method"]
    if method is None:
        return MethodChoice(DEFAULT_METHOD, (
            f"saliency method: {DEFAULT_METHOD}, the default (explain-bench found no method "
            f"that passes its checks on this model: {where})"), "recorded")
    if method not in METHODS:
        return MethodChoice(DEFAULT_METHOD, (
            f"saliency method: {DEFAULT_METHOD}, the default ({where} recommends {method!r}, "
            "which this version does not know; run explain-bench again)"), "recorded")
    close = [f"tied with {', '.join(found[k])}" if k == "tied_with" else
             f"trades off with {', '.join(found[k])}"
             for k in ("tied_with", "trades_off_with") if found.get(k)]
    return MethodChoice(method, (f"saliency method: {method}, recommended for this model by "
                                 f"explain-bench ({'; '.join([str(where), *close])}); --method "
                                 "picks another"), "recorded")
