"""The method to believe per model: the rule that picks it from explain-bench's measures, its
ties, the file beside the checkpoint, and who uses it (`vit explain`, the end-of-run overlays,
the explorer page, `vit demo`), with --method winning."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from helpers.models import save_checkpoint, tiny_vit
from PIL import Image

from vit.bench.report import recommendation_lines
from vit.cli import main
from vit.explain.recommend import (
    METHOD_FILE,
    RULE,
    MethodChoice,
    choose_method,
    method_file,
    recommend,
    recorded_method,
)
from vit.explain.saliency import DEFAULT_METHOD

REFERENCES = ("random", "occlusion")


def bench_result(per_image: dict[str, dict[str, list[float]]], sanity: dict[str, float]) -> dict:
    """An explain-bench result built by hand: rows of means, sanity verdicts at stage 1."""
    rows = []
    for method, measures in per_image.items():
        row = {"method": method, **{k: float(np.mean(v)) for k, v in measures.items()}}
        if method in sanity:
            row["random_1"] = sanity[method]
            row["sanity"] = "pass" if sanity[method] < 0.3 else "FAIL"
        rows.append(row)
    return {"rows": rows, "per_image": per_image, "half_stage": 1}


def measures(deletion, insertion, gap):
    return {"token_deletion": deletion, "token_insertion": insertion, "token_gap": gap}


def test_the_best_mean_rank_among_the_methods_that_pass_and_its_leads_in_standard_errors():
    result = bench_result({
        # a: best on all three columns, but it fails the randomisation check
        "a": measures([0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]),
        # b: best deletion and gap among those that pass; c: best insertion
        "b": measures([0.1, 0.2, 0.1, 0.2], [0.6, 0.6, 0.7, 0.7], [0.5, 0.6, 0.5, 0.6]),
        "c": measures([0.3, 0.4, 0.3, 0.4], [0.8, 0.8, 0.8, 0.9], [0.2, 0.3, 0.2, 0.3]),
        "d": measures([0.5, 0.5, 0.6, 0.6], [0.1, 0.2, 0.1, 0.2], [0.0, 0.1, 0.0, 0.1]),
        "random": measures([0.0] * 4, [1.0] * 4, [1.0] * 4),  # a reference never wins
    }, sanity={"a": 0.9, "b": 0.1, "c": -0.2, "d": 0.0})
    found = recommend(result, REFERENCES, 0.3)
    assert found["method"] == "b" and found["rule"] == RULE
    assert found["ranks"]["b"] == {"token_deletion": 1, "token_insertion": 2, "token_gap": 1,
                                   "mean": pytest.approx(4 / 3)}
    assert found["ranks"]["c"]["mean"] == pytest.approx(5 / 3) and list(found["ranks"]) == [
        "b", "c", "d"]
    assert found["excluded"] == {"a": "fails the randomisation check: ρ 0.90 at half the blocks"}
    assert found["rho"] == {"a": 0.9, "b": 0.1, "c": -0.2, "d": 0.0}  # the number, for tables
    # leads, paired per image (positive: b ahead): deletion c - b = 0.2 on every image
    mean, sem = found["leads"]["c"]["token_deletion"]
    assert mean == pytest.approx(0.2) and sem == pytest.approx(0.0, abs=1e-12)
    diffs = np.array([0.6, 0.6, 0.7, 0.7]) - np.array([0.8, 0.8, 0.8, 0.9])
    mean, sem = found["leads"]["c"]["token_insertion"]
    assert mean == pytest.approx(diffs.mean())
    assert sem == pytest.approx(diffs.std(ddof=1) / 2)
    # b leads c on deletion, c leads b on insertion by 7 standard errors: they trade off
    assert found["verdicts"] == {"c": "trade-off", "d": "ahead"}
    assert found["trades_off_with"] == ["c"] and found["tied_with"] == []
    text = "\n".join(recommendation_lines(found))
    assert "**b** for this model" in text and "trades off with c; clearly ahead of d" in text
    assert "| c | 2 | 1 | 2 | 1.67 | +∞ / -7.0 / +∞: trade-off |" in text
    assert text.endswith(f"Rule: {RULE}")
    # a pass within 2 standard errors of the threshold is called narrow
    assert not found["narrow_pass"] and "narrowly" not in text
    row = next(r for r in result["rows"] if r["method"] == "b")
    row["random_1"], row["random_1_sem"] = 0.25, 0.03
    narrow = recommend(result, REFERENCES, 0.3)
    assert narrow["method"] == "b" and narrow["narrow_pass"]
    assert "passes narrowly: ρ 0.25 ± 0.03 at half the blocks" in "\n".join(
        recommendation_lines(narrow))


def test_leads_under_two_standard_errors_are_a_tie_and_equal_means_share_a_rank():
    def result(c_deletion):  # c's insertion 0.0002 higher on every image: the same to 3 decimals
        return bench_result({"b": measures([0.05, 0.45, 0.15, 0.55], [0.5] * 4, [0.3] * 4),
                             "c": measures(c_deletion, [0.5002] * 4, [0.3] * 4)},
                            sanity={"b": 0.0, "c": 0.0})

    found = recommend(result([0.1, 0.5, 0.1, 0.7]), REFERENCES, 0.3)  # 0.05 worse, but noisy
    assert found["method"] == "b"
    assert found["ranks"]["b"]["token_insertion"] == found["ranks"]["c"]["token_insertion"] == 1.5
    mean, sem = found["leads"]["c"]["token_deletion"]
    assert mean == pytest.approx(0.05) and mean / sem == pytest.approx(1.22, abs=0.01)
    assert found["tied_with"] == ["c"] and found["verdicts"] == {"c": "tie"}
    clear = recommend(result([0.11, 0.5, 0.2, 0.6]), REFERENCES, 0.3)  # about as much, steadily
    assert clear["method"] == "b" and clear["verdicts"] == {"c": "ahead"}
    assert clear["leads"]["c"]["token_deletion"][0] / clear["leads"]["c"]["token_deletion"][1] > 2


def test_no_recommendation_when_nothing_passes_or_the_check_did_not_run():
    per_image = {"b": measures([0.1, 0.2], [0.5, 0.6], [0.3, 0.4])}
    failing = recommend(bench_result(per_image, sanity={"b": 0.5}), REFERENCES, 0.3)
    assert failing["method"] is None and failing["tied_with"] == []
    unchecked = recommend(bench_result(per_image, sanity={}), REFERENCES, 0.3)
    assert unchecked["method"] is None
    assert unchecked["excluded"] == {"b": "randomisation check not run"} and unchecked["rho"] == {}
    assert "**None**" in "\n".join(recommendation_lines(unchecked))


def _method_and_source(checkpoint) -> tuple[str, str]:
    choice = choose_method(checkpoint)
    return choice.method, choice.source


def test_the_file_beside_the_checkpoint_and_who_wins(tmp_path, caplog):
    ckpt = tmp_path / "run" / "best.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"")
    assert recorded_method(ckpt) is None
    choice = choose_method(ckpt)
    assert choice.method == DEFAULT_METHOD and choice.source == "default"
    assert choice.why.startswith(f"saliency method: {DEFAULT_METHOD}, the default")
    record = {"method": "legrad", "tied_with": ["gradcam"], "trades_off_with": ["rollout"],
              "checkpoint": "best.pt"}
    assert recorded_method(ckpt, record) == record
    assert method_file(ckpt) == tmp_path / "run" / METHOD_FILE == method_file(ckpt.parent)
    assert recorded_method(ckpt) == record
    choice = choose_method(ckpt)
    assert choice.method == "legrad" and choice.source == "recorded"
    why = choice.why
    assert "recommended for this model by explain-bench" in why
    assert "; tied with gradcam; trades off with rollout)" in why and len(why.splitlines()) == 1
    # --method always wins
    assert choose_method(ckpt, "rollout") == MethodChoice("rollout", None, "requested")
    recorded_method(ckpt, {"method": None})  # explain-bench found none that passes
    assert _method_and_source(ckpt) == (DEFAULT_METHOD, "recorded")
    recorded_method(ckpt, {"method": "lrp-v9"})  # a name this version does not know
    assert _method_and_source(ckpt) == (DEFAULT_METHOD, "recorded")
    method_file(ckpt).write_text("{not json")
    with caplog.at_level(logging.WARNING):  # the file decides, by being unreadable
        assert recorded_method(ckpt) is None
        assert _method_and_source(ckpt) == (DEFAULT_METHOD, "recorded")
    assert "ignoring" in caplog.text
    assert _method_and_source("user/hub-model") == (DEFAULT_METHOD, "default")  # not local


# --- the users of the recorded method ---------------------------------------------------------


@pytest.fixture()
def run_with_a_recommendation(tmp_path):
    ckpt = save_checkpoint(tmp_path / "run" / "best.pt", tiny_vit(head_std=2.0), ["x", "y", "z"])
    recorded_method(ckpt, {"method": "legrad", "tied_with": []})
    rng = np.random.default_rng(0)
    image = tmp_path / "p.png"
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(image)
    return ckpt, image


def test_vit_explain_uses_the_recorded_method_and_says_so(run_with_a_recommendation, tmp_path,
                                                          capsys):
    ckpt, image = run_with_a_recommendation
    assert main(["explain", "--checkpoint", str(ckpt), str(image), "--output",
                 str(tmp_path / "o")]) == 0
    assert sorted(p.name for p in (tmp_path / "o").glob("p_*.png")) == ["p_legrad.png"]
    err = capsys.readouterr().err
    assert "saliency method: legrad, recommended for this model by explain-bench" in err
    assert main(["explain", "--checkpoint", str(ckpt), str(image), "--output",
                 str(tmp_path / "r"), "--method", "rollout"]) == 0
    assert sorted(p.name for p in (tmp_path / "r").glob("p_*.png")) == ["p_rollout.png"]
    assert "saliency method" not in capsys.readouterr().err


def test_the_explorer_page_shows_the_recorded_method_first(run_with_a_recommendation, tmp_path):
    import re

    from vit.explain.explorer import THIS_MODEL

    ckpt, image = run_with_a_recommendation
    page = tmp_path / "page.html"
    assert main(["explain", "--checkpoint", str(ckpt), str(image), "--html", str(page),
                 "--auc-steps", "0"]) == 0
    data = json.loads(re.search(r'id="vit-data">(.*?)</script>', page.read_text(), re.S)[1])
    methods = data["methods"]
    assert methods[0]["key"] == "legrad" and methods[0]["label"].endswith(THIS_MODEL)
    assert not any(THIS_MODEL in m["label"] for m in methods[1:])


def test_the_end_of_a_run_draws_the_recorded_method(run_with_a_recommendation, monkeypatch,
                                                    caplog):
    import vit.figures.overlay_files as overlays
    from vit.training import run_files

    ckpt, image = run_with_a_recommendation
    calls = []
    monkeypatch.setattr(overlays, "explain_files", lambda **kw: calls.append(kw))
    with caplog.at_level(logging.INFO):
        drawn = run_files.write_overlays(ckpt.parent, [str(image)], device="cpu")
    assert drawn == (ckpt.parent / "overlays", "legrad") and calls[0]["method"] == "legrad"
    assert "overlays: saliency method: legrad, recommended" in caplog.text


def test_vit_demo_opens_on_the_recorded_method(run_with_a_recommendation, monkeypatch, capsys):
    import vit.publish.demo as demo

    ckpt, _ = run_with_a_recommendation
    opened = []

    class App:
        def launch(self, **kwargs):
            pass

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setattr(demo, "import_gradio", lambda: None)
    monkeypatch.setattr(demo, "build_demo", lambda clf, **kw: opened.append(kw) or App())
    assert main(["demo", str(ckpt)]) == 0
    assert opened[-1]["method"] == "legrad"
    assert "saliency method: legrad, recommended" in capsys.readouterr().out
    assert main(["demo", str(ckpt), "--method", "gradcam"]) == 0
    assert opened[-1]["method"] == "gradcam"
