"""The quickstart's settings and its shipped YAML stay the same thing."""

from pathlib import Path

import pytest

from vit.config import load_config
from vit.training.quickstart import quickstart_config

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_yaml_equals_builtin():
    assert load_config(ROOT / "configs" / "quickstart.yaml") == quickstart_config()


def test_quickstart_is_what_train_py_runs_without_arguments():
    from vit.cli.main import build_parser
    from vit.cli.train import is_quickstart, resolve_config

    args = build_parser().parse_args(["train"])
    assert is_quickstart(args)
    assert resolve_config(args) == quickstart_config()
    args = build_parser().parse_args(["train", "train.epochs=2"])
    assert resolve_config(args).train.epochs == 2


def test_overrides_may_stand_before_and_between_flags():
    from vit.cli.main import build_parser, overrides_last

    argv = ["train", "train.epochs=3", "--data", "d", "loss.mixup_alpha=0.8", "--epochs", "2"]
    args = build_parser().parse_args(overrides_last(argv))
    assert args.data == "d" and args.epochs == 2
    assert args.overrides == ["train.epochs=3", "loss.mixup_alpha=0.8"]


@pytest.mark.slow
def test_quickstart_ends_with_overlays_and_the_explorer_page(tmp_path, monkeypatch, capsys):
    """The last step of `python train.py` (one epoch here): overlays, then the page, and where."""
    import json
    import re

    from vit.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("vit.training.quickstart.SHAPES_PER_CLASS", 40)  # 200 images: a quicker test
    code = main(["train", "train.epochs=1", "train.output=runs/q", "train.explain_samples=3",
                 "train.device=cpu", "data.workers=0"])
    assert code == 0
    err = capsys.readouterr().err
    page = Path("runs/q/explorer.html")
    assert f"attention explorer: {page} (open it in a browser" in err
    assert "saliency overlays (attnlrp): runs/q/overlays" in err
    data = re.search(r'id="vit-data">(.*?)</script>', page.read_text(), re.S).group(1)
    names = [Path(r["name"]) for r in json.loads(data)["images"]]
    assert len(names) == 3 and all(p.parent.parent == Path("data/shapes/val") for p in names)
    assert len({p.parent.name for p in names}) == 3  # one per class first
