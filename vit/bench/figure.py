"""explain-bench's figure: faithfulness (token deletion against insertion) and, when it ran, the
randomisation cascade, side by side.

    plot_explain_bench(result, "explain_bench.png", threshold=0.3, references=("random",))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes

from vit.plots import PathLike, new_figure, save_figure

__all__ = ["plot_explain_bench"]

EXPLAIN_BENCH_SIZE = (14.0, 5.0)  # faithfulness and randomisation side by side
EXPLAIN_BENCH_ONE_PANEL_SIZE = (7.0, 5.0)  # faithfulness only (no randomisation check)


def _method_colours(methods: Sequence[str], references: Sequence[str]) -> dict[str, str]:
    """One colour per method, the same in every panel; reference rows in grey and black."""
    fixed = {"random": "0.55", "occlusion": "black"}
    contenders = [m for m in methods if m not in references]
    colours = {m: f"C{i % 10}" for i, m in enumerate(contenders)}
    return {**colours, **{m: fixed.get(m, "0.3") for m in methods if m in references}}


def _faithfulness_panel(axes: Axes, rows: Sequence[Mapping[str, Any]],
                        colours: Mapping[str, str], references: Sequence[str]) -> None:
    """Token-drop deletion (x, lower is better) against insertion (y, higher is better)."""
    drawn = False
    for row in rows:
        if "token_deletion" not in row or "token_insertion" not in row:
            continue
        method = row["method"]
        reference = method in references
        axes.errorbar(row["token_deletion"], row["token_insertion"],
                      xerr=row.get("token_deletion_sem", 0.0),
                      yerr=row.get("token_insertion_sem", 0.0), color=colours[method],
                      marker="D" if reference else "o", markersize=7, capsize=3,
                      linestyle="none", label=method + (" (reference)" if reference else ""))
        drawn = True
    axes.set_title("Faithfulness: patch tokens dropped or added in the map's order", fontsize=10)
    axes.set_xlabel("deletion AUC (lower is better)")
    axes.set_ylabel("insertion AUC (higher is better)")
    axes.grid(alpha=0.3)
    axes.text(0.02, 0.02, "better: toward the top left", transform=axes.transAxes, ha="left",
              va="bottom", fontsize=9, color="0.4")
    if drawn:
        axes.legend(loc="upper right", fontsize=8)  # the corner no method reaches
    else:
        axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)


def _cascade_panel(axes: Axes, result: Mapping[str, Any], colours: Mapping[str, str],
                   threshold: float) -> None:
    """Spearman rho with the trained map as the head, then one more block, is re-initialised."""
    depth, half = int(result["depth"]), int(result["half_stage"])
    stages = np.asarray(result.get("stages") or range(depth + 1))  # the stages measured
    lowest = -0.3
    for row in result["rows"]:
        if "random_0" not in row:
            continue
        mean = np.array([row.get(f"random_{k}", np.nan) for k in stages], dtype=float)
        sem = np.array([row.get(f"random_{k}_sem", 0.0) for k in stages], dtype=float)
        lowest = min(lowest, float(np.nanmin(mean - sem)) - 0.05)
        verdict = row.get("sanity")
        axes.plot(stages, mean, marker="o", markersize=4, color=colours[row["method"]],
                  label=row["method"] + (f" ({verdict})" if verdict else ""))
        axes.fill_between(stages, mean - sem, mean + sem, color=colours[row["method"]],
                          alpha=0.15, linewidth=0)
    axes.axhline(threshold, color="grey", linestyle="--", linewidth=1)
    axes.axvline(half, color="grey", linestyle=":", linewidth=1)
    axes.text(half, threshold, f" pass below {threshold:g} at {half} of {depth} blocks",
              fontsize=8, color="0.35", va="bottom")
    axes.set_xticks(stages, [f"+{k}" if k else "head" for k in stages])
    axes.set_ylim(max(lowest, -1.05), 1.05)
    axes.set_title("Randomisation check (Adebayo et al. 2018)", fontsize=10)
    axes.set_xlabel("re-initialised: the head, then blocks from the top")
    axes.set_ylabel("Spearman ρ with the trained model's map")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # beside the lines


def plot_explain_bench(result: Mapping[str, Any], path: PathLike, *, threshold: float,
                       references: Sequence[str] = (), title: str = "") -> Path:
    """explain-bench at a glance. Left: each method's token-drop deletion against insertion AUC,
    mean ± standard error (the best methods sit top left). Right, when the randomisation check
    ran: each method's rank correlation with the trained map as the model is destroyed from the
    top, the pass line at ``threshold`` and half the blocks marked. ``references``: rows drawn as
    references (diamonds), not contenders."""
    rows = result["rows"]
    sanity = any("random_0" in row for row in rows)
    colours = _method_colours([row["method"] for row in rows], references)
    figure = new_figure(EXPLAIN_BENCH_SIZE if sanity else EXPLAIN_BENCH_ONE_PANEL_SIZE)
    axes = figure.subplots(1, 2 if sanity else 1, squeeze=False)[0]
    _faithfulness_panel(axes[0], rows, colours, references)
    if sanity:
        _cascade_panel(axes[1], result, colours, threshold)
    if title:
        figure.suptitle(title, fontsize=10)
    return save_figure(figure, path)
