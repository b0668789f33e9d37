"""Beyond one machine: several nodes, FSDP2, activation checkpointing, and the faults of scale.

Everything runs on the CPU with gloo; two torchrun launches on this machine stand in for two
nodes. Models are tiny and runs short: these tests show that the steps are the same, not speed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.images import make_folder
from helpers.models import assert_same_weights, weights
from helpers.processes import DIST_ENV, free_port, torchrun
from helpers.training import ROOT, cli_args, tiny_config

from vit.cli import main
from vit.errors import ConfigError
from vit.models.checkpoint import load_checkpoint
from vit.models.vision_transformer import VisionTransformer
from vit.training.parallel import check_strategy, prepare_model
from vit.training.trainer import train


@pytest.mark.slow
def test_two_nodes_of_two_processes_match_one_process(tmp_path):
    """torchrun --nnodes=2 --nproc_per_node=2, launched twice here: 4 ranks with a quarter of
    the global batch each end with the weights of 1 process with the whole batch."""
    data = make_folder(tmp_path / "data", per_class=16)
    single = subprocess.run([sys.executable, str(ROOT / "train.py"),
                             *cli_args(data, tmp_path / "single", 2)],
                            cwd=ROOT, env=DIST_ENV, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]

    port = free_port()
    cmd = torchrun(cli_args(data, tmp_path / "nodes", 2), nnodes=2, port=port,
                   run_id=f"two-nodes-{port}")
    nodes = [subprocess.Popen(cmd, cwd=ROOT, env=DIST_ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [node.communicate(timeout=300) for node in nodes]
    for node, (_, err) in zip(nodes, outs, strict=True):
        assert node.returncode == 0, err[-3000:]
    stdout = "".join(out for out, _ in outs)
    assert stdout.count("done: best val top-1") == 1  # only global rank 0 talks
    lines = (tmp_path / "nodes" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    assert_same_weights(weights(tmp_path / "single" / "last.pt"),
                        weights(tmp_path / "nodes" / "last.pt"), exact=False)


# The same run cut after its first epoch, on every rank (a process that exits between epochs).
STOPS_AFTER_EPOCH_1 = r"""
import sys
from pathlib import Path
import vit.training.trainer as trainer

real = trainer.train_one_epoch

def stops(**kwargs):
    if kwargs["epoch"] == 1:
        raise SystemExit(3)
    return real(**kwargs)

trainer.train_one_epoch = stops
from vit.cli import main
sys.exit(main(["train", *sys.argv[1:]]))
"""


def run_torchrun(args: list[str], *, script: Path | None = None) -> subprocess.CompletedProcess:
    cmd = torchrun(args)
    if script is not None:
        cmd[cmd.index(str(ROOT / "train.py"))] = str(script)
    return subprocess.run(cmd, cwd=ROOT, env=DIST_ENV, capture_output=True, text=True,
                          timeout=300)


def held_per_process(log: str) -> int:
    found = re.search(r"at most (\d+) parameter elements", log)
    assert found, log[-2000:]
    return int(found.group(1))


@pytest.fixture(scope="module")
def strategies(tmp_path_factory) -> dict[str, Path]:
    """Two 2-process runs of the same 2 epochs, both with activation checkpointing: DDP and
    FSDP2; their logs are kept beside them (log.txt)."""
    root = tmp_path_factory.mktemp("strategies")
    data = make_folder(root / "data", per_class=16)
    runs = {"data": data}
    for name, extra in [("ddp", ["train.activation_checkpointing=true"]),
                        ("fsdp", ["train.strategy=fsdp", "train.activation_checkpointing=true"])]:
        proc = run_torchrun([*cli_args(data, root / name, 2), *extra])
        assert proc.returncode == 0, proc.stderr[-3000:]
        (root / name / "log.txt").write_text(proc.stderr)
        runs[name] = root / name
    return runs


def _losses(run: Path) -> list[float]:
    """Train and validation loss of every epoch, one after the other."""
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in records for key in ("train_loss", "val_loss")]


@pytest.mark.slow
def test_fsdp_takes_the_steps_of_ddp_with_half_the_parameters_per_process(strategies):
    """FSDP2 and DDP (both with activation checkpointing): the same losses every epoch to 1e-5
    (relative) and the same weights to 2e-5; the largest process holds about half the
    parameter elements (2 processes)."""
    ddp, fsdp = strategies["ddp"], strategies["fsdp"]
    assert _losses(fsdp) == pytest.approx(_losses(ddp), rel=1e-5)
    assert_same_weights(weights(ddp / "last.pt"), weights(fsdp / "last.pt"), exact=False)
    total = sum(t.numel() for t in weights(ddp / "last.pt").values())
    held_ddp = held_per_process((ddp / "log.txt").read_text())
    held_fsdp = held_per_process((fsdp / "log.txt").read_text())
    print(f"parameter elements held by the largest process: DDP {held_ddp}, FSDP {held_fsdp} "
          f"of {total}")
    assert held_ddp == total
    assert 0.45 < held_fsdp / held_ddp < 0.6, (held_fsdp, held_ddp)


@pytest.mark.slow
def test_fsdp_checkpoint_is_one_file_predict_reads_without_a_process_group(strategies, capsys):
    ckpt = load_checkpoint(strategies["fsdp"] / "best.pt")
    assert not any(type(t).__name__ == "DTensor" for t in ckpt["model"].values())
    image = next((strategies["data"] / "red").glob("*.png"))
    assert main(["predict", "--checkpoint", str(strategies["fsdp"] / "best.pt"), str(image),
                 "--device", "cpu", "--format", "json"]) == 0
    assert "red" in capsys.readouterr().out


@pytest.mark.slow
def test_fsdp_resume_is_exact(strategies, tmp_path):
    """An FSDP run cut after epoch 1 and resumed (--resume, 2 processes) ends with exactly the
    weights and optimizer state of the run that was never cut."""
    script = tmp_path / "stops.py"
    script.write_text(STOPS_AFTER_EPOCH_1)
    run = tmp_path / "run"
    args = [*cli_args(strategies["data"], run, 2), "train.strategy=fsdp",
            "train.activation_checkpointing=true"]
    cut = run_torchrun(args, script=script)
    assert cut.returncode != 0
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    resumed = run_torchrun(["--resume", str(run)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = load_checkpoint(strategies["fsdp"] / "last.pt")
    again = load_checkpoint(run / "last.pt")
    assert again["epoch"] == 2
    assert_same_weights(straight["model"], again["model"])
    for name, state in straight["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(
                again["optimizer"]["state"][name][key])), (name, key)


def test_activation_checkpointing_recomputes_the_same_steps_in_one_process(tmp_path):
    """One process: activation checkpointing (and train.strategy=fsdp, which has nothing to
    shard there) train exactly the weights of a plain run."""
    data = make_folder(tmp_path / "data")
    plain = train(tiny_config(data, tmp_path / "plain"), show_progress=False)
    again = train(tiny_config(data, tmp_path / "ac", "train.activation_checkpointing=true",
                              "train.strategy=fsdp"), show_progress=False)
    assert_same_weights(weights(plain.run_dir / "last.pt"), weights(again.run_dir / "last.pt"))


@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_checkpointing_runs_each_block_again_in_the_backward(checkpointing):
    model = VisionTransformer(img_size=16, patch_size=4, num_classes=3, embed_dim=32, depth=2,
                              num_heads=2)
    prepare_model(model, strategy="ddp", precision="fp32",
                  activation_checkpointing=checkpointing, world_size=1)
    calls = []
    model.blocks[0].attn.register_forward_pre_hook(lambda module, args: calls.append(1))
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    assert len(calls) == (2 if checkpointing else 1)  # forward, and again in the backward


def test_fsdp_refuses_what_it_cannot_honour():
    with pytest.raises(ConfigError, match="not fp16"):
        check_strategy("fsdp", precision="fp16", ema=False)
    with pytest.raises(ConfigError, match="train.ema"):
        check_strategy("fsdp", precision="bf16", ema=True)
    check_strategy("ddp", precision="fp16", ema=True)  # DDP takes both
    check_strategy("fsdp", precision="bf16", ema=False)
