"""The command line as a newcomer first meets it: `--help` answers at once (no torch loaded),
every option says what it does and its default, the scripts name themselves, `vit models`
lists the presets."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HELP_COMMANDS = [[], ["train"], ["evaluate"], ["predict"], ["explain"], ["explain-bench"],
                 ["export"],
                 ["attention-stats"], ["check"], ["shard"], ["models"], ["push"], ["demo"]]


def imported_modules(*argv: str) -> set[str]:
    """The modules `python -X importtime -m vit ARGV --help` imported (read off its stderr)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "vit", *argv, "--help"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: vit"), proc.stdout
    return {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
            if line.startswith("import time:")}


@pytest.mark.parametrize("argv", HELP_COMMANDS, ids=lambda a: " ".join(["vit", *a, "--help"]))
def test_help_imports_no_torch(argv):
    """torch (seconds to import) is what made `vit --help` slow; the help must not need it."""
    modules = imported_modules(*argv)
    assert "vit.cli.main" in modules  # the parse really happened
    heavy = sorted(m for m in modules if m.split(".")[0] in ("torch", "timm", "albumentations",
                                                             "matplotlib", "numpy"))
    assert not heavy, f"--help imported {heavy[:5]}"


def subparsers() -> dict[str, argparse.ArgumentParser]:
    from vit.cli.main import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", sorted(subparsers()))
def test_every_option_has_a_description_and_its_default(command):
    parser = subparsers()[command]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help, f"vit {command} {name} has no description"
        if isinstance(action, argparse._StoreTrueAction) or action.required:
            continue  # a switch is off unless given; a required value has no default
        shown = formatter._expand_help(action)  # the text --help prints
        assert "default" in shown, f"vit {command} {name}: the help does not say the default"


def test_help_shows_a_default_that_argparse_knows():
    text = " ".join(subparsers()["explain"].format_help().split())  # the lines as one
    assert "recorded beside CKPT; without one, attnlrp)" in text and "(default: 0.5)" in text


@pytest.mark.parametrize("script,command", [("train.py", "train"), ("evaluate.py", "evaluate")])
def test_the_scripts_name_themselves_in_usage(script, command):
    proc = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: python {script} "), proc.stdout[:200]
    assert f"vit {command}" not in proc.stdout.splitlines()[0]


def test_export_choices_equal_the_exporter():
    """cli/export.py repeats two constants so that its parser needs no torch."""
    from vit.cli import export as cli_export
    from vit.inference import export

    assert cli_export.FORMATS == export.FORMATS
    assert cli_export.ONNX_OPSET == export.ONNX_OPSET


def test_vit_models_lists_every_preset_with_its_cost(capsys):
    from vit.cli import main
    from vit.models.presets import create_model, list_models

    assert main(["models", "--num-classes", "10"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line.startswith("vit_")}
    assert set(rows) == set(list_models())
    for name in rows:
        assert len(rows[name].split()) > 6, f"{name}: no purpose given: {rows[name]!r}"
    # parameters checked against a real model (not the meta-device count)
    real = sum(p.numel() for p in create_model("vit_quick_patch8_48", num_classes=10).parameters())
    assert f"{real / 1e6:.2f}M" in rows["vit_quick_patch8_48"]
    assert "48 px" in rows["vit_quick_patch8_48"]


def test_vit_models_counts_what_the_training_log_counts(capsys):
    """Issue 25: `vit models` counted a 1000-class head (0.42M), the run's log 0.32M for the
    same preset. Both count the backbone now; the log states the head apart."""
    import torch

    from vit.cli import main
    from vit.models.presets import create_model, head_parameters, list_models

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "PARAMS: without the classification head" in out
    rows = {line.split()[0]: line.split()[4] for line in out.splitlines() if line.startswith("vit_")}
    for name in list_models():
        with torch.device("meta"):  # no memory, no time: ViT-L has 304M parameters
            model = create_model(name, num_classes=5)  # what a run on 5 classes builds
        backbone = sum(p.numel() for p in model.parameters()) - head_parameters(model)
        assert rows[name] == f"{backbone / 1e6:.2f}M", name


def test_tta_choices_equal_the_library_modes():
    """cli/main.py repeats vit.inference.tta.TTA_MODES so that predict's and evaluate's parsers
    need no torch."""
    from vit.cli.options import TTA_MODES as CLI_TTA_MODES
    from vit.inference.tta import TTA_MODES

    assert CLI_TTA_MODES == TTA_MODES
    for command in ("predict", "evaluate"):
        tta = next(a for a in subparsers()[command]._actions if a.dest == "tta")
        assert tuple(tta.choices) == TTA_MODES and tta.default is None


def test_vit_explain_defaults_to_the_library_default_method():
    """cli/explain.py takes vit.explain.DEFAULT_METHOD (AttnLRP) from vit.explain.catalog, which
    needs no torch."""
    from vit.cli import explain as cli_explain
    from vit.explain import DEFAULT_METHOD

    assert cli_explain.DEFAULT_METHOD == DEFAULT_METHOD == "attnlrp"


def test_plain_vit_lists_the_commands():
    """Issue 25: plain `vit` said "error: the following arguments are required: COMMAND"."""
    proc = subprocess.run([sys.executable, "-m", "vit"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and proc.stdout.startswith("usage: vit")
    for command in ("train", "predict", "explain", "explain-bench", "models"):
        assert f"\n    {command} " in proc.stdout, command
