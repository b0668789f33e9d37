"""benchmarks/method_table.py: explain-bench's rule applied to each model's stored report, and
the method that is best across models (issue 28: the default is chosen across many models)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.method_table import model_ranks, table  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def _report(name: str) -> dict:
    return json.loads((RESULTS / f"explain_bench_{name}_cpu.json").read_text())


def test_a_model_keeps_the_recommendation_its_report_made():
    result = _report("squares_tiny")  # written by explain-bench with its recommendation
    found, _ = model_ranks(result)
    assert found["method"] == result["recommendation"]["method"] == "grad-rollout"


def test_a_failing_method_ranks_one_below_the_last_that_passes():
    found, mean_rank = model_ranks(_report("squares_tiny"))
    assert "rollout" in found["excluded"]  # fails the randomisation check on this model
    assert mean_rank["rollout"] == len(found["ranks"]) + 1
    assert mean_rank["grad-rollout"] == min(mean_rank.values())


def test_the_table_names_each_pick_and_whether_one_method_wins_everywhere():
    text = table([("cifar", _report("cifar10")), ("squares", _report("squares_tiny"))], ["later"])
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()}
    assert rows["cifar"].split(" | ")[1] == "attnlrp"
    assert rows["squares"].split(" | ")[1] == "grad-rollout (legrad)"
    assert "fails ρ" in rows["squares"]  # rollout's cell
    assert rows["later"].count("pending") == 7
    # attnlrp: 1 on CIFAR-10, 3.5 on the squares -> 2.25; grad-rollout: 2 and 1.5 -> 1.75
    assert "grad-rollout 1.75" in text and "attnlrp 2.25" in text
    assert "Best across these models: grad-rollout; not the recommendation on every model" in text


# The README's table of issue 28: its rows, by the README's model names, and the stored reports.
README_MODELS = {
    "shapes (ours)": "shapes", "CIFAR-10 (ours)": "cifar10", "flowers (ours)": "flowers",
    "one square (ours)": "squares_tiny", "two squares (ours)": "two_squares_tiny",
    "flowers (timm EVA-02)": "flowers_eva02", "flowers (timm DINOv2)": "flowers_dinov2",
}


def test_the_readme_table_and_its_means_are_the_rule_on_the_stored_reports():
    from benchmarks.method_table import cell

    lines = (ROOT / "README.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| model | recommended (ties) |"))
    methods = [c.strip() for c in header.strip("|").split("|")][2:]
    rows = {}
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] in README_MODELS:
            rows[cells[0]] = cells
    assert set(rows) == set(README_MODELS)
    means: dict[str, list[float]] = {m: [] for m in methods}
    for name, report in README_MODELS.items():
        found, mean_rank = model_ranks(_report(report))
        close = found["tied_with"] + found["trades_off_with"]
        assert rows[name][1] == found["method"] + (f" ({', '.join(close)})" if close else "")
        assert rows[name][2:] == [cell(found, m) for m in methods], name
        for m in methods:
            means[m].append(mean_rank[m])
    text = " ".join(lines)
    for method, words in (("attnlrp", "(1.45;"), ("legrad", "LeGrad 2.67"),
                          ("grad-rollout", "gradient rollout 3.07"),
                          ("gradcam", "Grad-CAM and attention 3.83")):
        assert words in text
        assert f"{sum(means[method]) / len(means[method]):.2f}" in words, method
