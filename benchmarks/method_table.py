"""Which saliency method to believe, across models: explain-bench's recommendation rule applied
to each model's report, and one table of every method's ranks.

    python benchmarks/method_table.py \\
        "squares, one object=benchmarks/results/explain_bench_squares_tiny_cpu.json" \\
        "shapes=benchmarks/results/explain_bench_shapes_cpu.json" \\
        --pending "timm family: pending" --pending "timm family: pending"

Each NAME=REPORT is an ``explain_bench.json`` that `vit explain-bench` wrote (its rows, sanity
verdicts and per-image values). Per model, every saliency method's ranks among the methods that
pass the randomisation check on token deletion / insertion / LeRF-MoRF
(``vit.explain.recommend.RULE``), or why it is out, and the method the rule recommends with its
ties. Across models: each method's mean over models of its mean rank, a method that fails the
check counting as one place below the last that passes; the best by that is the default by the
same rule, and the table says whether it was the recommendation on every model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if not __package__:  # run as `python benchmarks/method_table.py`: make `vit` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vit.bench.measures import REFERENCES, SANITY_THRESHOLD
from vit.explain.recommend import RULE_COLUMNS, recommend
from vit.explain.saliency import METHODS


def model_ranks(result: dict) -> tuple[dict, dict[str, float]]:
    """The recommendation of one report, and each method's mean rank (failing: last + 1)."""
    found = recommend(result, REFERENCES, SANITY_THRESHOLD)
    out_rank = len(found["ranks"]) + 1
    return found, {m: found["ranks"][m]["mean"] if m in found["ranks"] else float(out_rank)
                   for m in METHODS}


def cell(found: dict, method: str) -> str:
    if method in found["ranks"]:
        ranks = found["ranks"][method]
        text = " / ".join(f"{ranks[k]:g}" for k, _, _ in RULE_COLUMNS)
        return f"**{text}**" if method == found["method"] else text
    if method in found["excluded"] and method in found["rho"]:  # it took the check, and failed
        return f"fails ρ {found['rho'][method]:.2f}"
    return found["excluded"].get(method, "not measured")


def table(reports: list[tuple[str, dict]], pending: list[str]) -> str:
    header = ["model", "recommended (ties)", *METHODS]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    means: dict[str, list[float]] = {m: [] for m in METHODS}
    picks = []
    for name, result in reports:
        found, mean_rank = model_ranks(result)
        picks.append(found["method"])
        for m in METHODS:
            means[m].append(mean_rank[m])
        close = found["tied_with"] + found["trades_off_with"]
        pick = f"{found['method']}" + (f" ({', '.join(close)})" if close else "")
        lines.append("| " + " | ".join([name, pick, *(cell(found, m) for m in METHODS)]) + " |")
    lines += ["| " + " | ".join([name, *["pending"] * (len(header) - 1)]) + " |"
              for name in pending]
    overall = {m: sum(v) / len(v) for m, v in means.items() if v}
    best = min(overall, key=overall.get)
    everywhere = all(p == best for p in picks)
    summary = ", ".join(f"{m} {overall[m]:.2f}" for m in sorted(overall, key=overall.get))
    return "\n".join([*lines, "", f"Mean over the {len(reports)} models of each method's mean "
                      f"rank (failing the check: one below the last that passes): {summary}.",
                      f"Best across these models: {best}; "
                      + ("the recommendation on every one." if everywhere else
                         "not the recommendation on every model: run explain-bench on yours.")])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", metavar="NAME=REPORT",
                        help="a model's name and its explain_bench.json")
    parser.add_argument("--pending", action="append", default=[], metavar="NAME",
                        help="a row still to be measured")
    args = parser.parse_args(argv)
    reports = []
    for item in args.reports:
        name, _, path = item.rpartition("=")
        if not name:
            parser.error(f"{item!r}: expected NAME=REPORT")
        reports.append((name, json.loads(Path(path).read_text())))
    print(table(reports, args.pending))
    return 0


if __name__ == "__main__":
    sys.exit(main())
