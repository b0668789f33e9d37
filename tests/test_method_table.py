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
