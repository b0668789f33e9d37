"""The quickstart's settings and its shipped YAML stay the same thing."""

from pathlib import Path

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
