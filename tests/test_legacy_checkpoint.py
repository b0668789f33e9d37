"""Checkpoints written before the package was reorganised still load, predict and resume.

The files under tests/fixtures/legacy/ were written by tests/fixtures/make_legacy_checkpoint.py
with the code of that day; expected.json holds the probabilities it predicted then.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch

from vit import Classifier
from vit.cli import main

LEGACY = Path(__file__).parent / "fixtures" / "legacy"
EXPECTED = json.loads((LEGACY / "expected.json").read_text())


@pytest.mark.parametrize("name", ["best.pt", "last.pt", "model.safetensors"])
def test_legacy_checkpoint_predicts_what_it_predicted_then(name):
    clf = Classifier.from_checkpoint(LEGACY / name, device="cpu")
    probs = clf.predict_proba([str(LEGACY / p) for p in EXPECTED["inputs"]])
    expected = torch.tensor(EXPECTED["probabilities"][name])
    assert clf.classes == ["blue", "green", "red"]
    assert torch.equal(probs.argmax(dim=1), expected.argmax(dim=1))
    torch.testing.assert_close(probs, expected, rtol=0, atol=1e-6)


def test_legacy_last_pt_resumes(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(LEGACY / "last.pt", run / "last.pt")
    code = main(["train", "--resume", str(run), "--data", str(LEGACY / "images"),
                 "--output", str(run), "--epochs", "5"])
    assert code == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [5]
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 5
