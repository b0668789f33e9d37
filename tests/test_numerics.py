"""Numerical safety: a non-finite loss or gradient stops the run, names the step, and never
reaches a checkpoint; under fp16 the GradScaler skips an overflowing step and training goes on.

Non-finite values are injected at a chosen step (a criterion whose loss, or whose gradient, is
NaN/inf there), so the step the error names is known in advance.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers.cli import error_line, run_cli, train_argv
from helpers.images import make_folder
from helpers.models import tiny_vit
from torch import nn

import vit.training.setup
from vit.cli import main
from vit.models.checkpoint import load_checkpoint
from vit.training.epoch import (
    EpochOptions,
    EpochResult,
    NonFiniteLossError,
    StepParts,
    train_one_epoch,
)

# ---------------------------------------------------------------------------------------------
# poison
# ---------------------------------------------------------------------------------------------


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by ``factor`` (nan, inf)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def poisoned(criterion: Criterion, *, at_call: int, loss: float | None = None,
             gradient: float | None = None) -> Criterion:
    """``criterion``, except that call number ``at_call`` (from 1) returns ``loss`` as the loss,
    or a finite loss whose gradient is multiplied by ``gradient``."""
    calls = 0

    def wrapped(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        value = criterion(logits, target)
        if calls != at_call:
            return value
        if loss is not None:
            return value * 0 + loss  # still connected to the graph
        return _ScaleGradient.apply(value, gradient)

    return wrapped


# ---------------------------------------------------------------------------------------------
# vit train: the checkpoint from before the bad step survives
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory) -> Path:
    """A finished one-epoch run (last.pt, best.pt, metrics.jsonl) to resume from."""
    root = tmp_path_factory.mktemp("numerics")
    data = make_folder(root / "data", per_class=8)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main([str(a) for a in train_argv(data, root / "run")])
    assert code == 0
    return root / "run"


def poison_the_criterion(monkeypatch, **poison) -> None:
    """Make the next run's training criterion ``poisoned(..., **poison)``."""
    build = vit.training.setup.build_criterion  # where the run's set-up looks it up

    def build_poisoned(*args, **kwargs):
        criterion, mixup = build(*args, **kwargs)
        return poisoned(criterion, **poison), mixup

    monkeypatch.setattr(vit.training.setup, "build_criterion", build_poisoned)


RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl")


@pytest.mark.parametrize("poison, last_batch", [
    ({"loss": float("nan")}, False),
    # a finite loss with NaN gradients in the epoch's last step: nothing after it would notice
    ({"gradient": float("nan")}, True),
], ids=["nan loss in the second batch", "nan gradient in the last batch"])
def test_a_non_finite_step_stops_the_run_and_keeps_the_checkpoints(
        one_epoch_run, tmp_path, monkeypatch, capsys, poison, last_batch):
    """Resume for a second epoch that goes bad at a known step: exit 2, the error names that
    step, and last.pt, best.pt and metrics.jsonl are byte for byte those of epoch 1."""
    run = shutil.copytree(one_epoch_run, tmp_path / "run")
    before = {name: (run / name).read_bytes() for name in RUN_FILES}
    steps_done = load_checkpoint(run / "last.pt")["step"]  # == batches per epoch
    batch = steps_done if last_batch else 2
    poison_the_criterion(monkeypatch, at_call=batch, **poison)

    code, _, err = run_cli(capsys, "train", "--resume", run, "train.epochs=2")

    assert code == 2, err
    line = error_line(err, tolerate=r" INFO ")
    assert f"step {steps_done + batch}" in line and "nan" in line, line
    for name in RUN_FILES:
        assert (run / name).read_bytes() == before[name], f"{name} was overwritten"


# ---------------------------------------------------------------------------------------------
# vit.training.epoch.train_one_epoch
# ---------------------------------------------------------------------------------------------

CPU = torch.device("cpu")
LR = 1e-2


def batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 3, (4,), generator=g))
            for _ in range(n)]


def run_epoch(model: nn.Module, loader: list, criterion: Criterion, *,
              scaler: torch.amp.GradScaler | None = None,
              clip_grad: float | None = None) -> tuple[EpochResult, int]:
    """One epoch of AdamW at a constant learning rate; also returns how often the optimizer
    really stepped."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    applied = []
    optimizer.register_step_post_hook(lambda *_: applied.append(1))
    parts = StepParts(model=model, optimizer=optimizer, criterion=criterion,
                      lr_at=lambda step: LR, device=CPU, scaler=scaler, clip_grad=clip_grad)
    result = train_one_epoch(parts=parts, loader=loader,
                             options=EpochOptions(show_progress=False))
    return result, len(applied)


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def trained_on(data: list, *, clip_grad: float | None = None) -> nn.Module:
    """The reference: the same model trained, without any poison, on ``data`` only."""
    model = tiny_vit(train=True)
    run_epoch(model, data, nn.CrossEntropyLoss(), clip_grad=clip_grad)
    return model


@pytest.mark.parametrize("poison, clip_grad", [
    ({"loss": float("inf")}, None),
    ({"gradient": float("inf")}, None),
    ({"gradient": float("nan")}, 1.0),  # clipping turns inf into nan; it must not hide it
], ids=["inf loss", "inf gradient", "nan gradient, clipped"])
def test_without_a_scaler_a_non_finite_step_raises_before_touching_the_weights(
        poison, clip_grad):
    data = batches(3)
    model = tiny_vit(train=True)
    with pytest.raises(NonFiniteLossError, match=r"at step 2\b"):
        run_epoch(model, data, poisoned(nn.CrossEntropyLoss(), at_call=2, **poison),
                  clip_grad=clip_grad)
    assert_same_weights(model, trained_on(data[:1], clip_grad=clip_grad))  # step 1, not 2


@pytest.mark.parametrize("poison", [{"loss": float("nan")}, {"gradient": float("inf")}],
                         ids=["nan loss", "inf gradient"])
def test_checking_every_few_steps_still_names_the_first_bad_step(poison):
    """On a GPU the loop reads its flags back only every ``check_every`` batches (no host wait
    per step); a bad step 2 of 6 must still raise, name step 2, and end the epoch early."""
    data = batches(6)
    seen = []
    model = tiny_vit(train=True)
    criterion = poisoned(nn.CrossEntropyLoss(), at_call=2, **poison)

    def counting(logits, y):
        seen.append(1)
        return criterion(logits, y)

    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    with pytest.raises(NonFiniteLossError, match=r"at step 2\b"):
        train_one_epoch(parts=StepParts(model=model, optimizer=optimizer, criterion=counting,
                                        lr_at=lambda step: LR, device=CPU),
                        loader=data, options=EpochOptions(show_progress=False, check_every=3))
    assert len(seen) == 3  # read back after batch 3, not at the end of the epoch


def test_checking_every_few_steps_gives_the_same_mean_loss():
    data = batches(5)
    results = []
    for check_every in (1, 4):
        model = tiny_vit(train=True)
        optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
        parts = StepParts(model=model, optimizer=optimizer, criterion=nn.CrossEntropyLoss(),
                          lr_at=lambda step: LR, device=CPU)
        results.append(train_one_epoch(parts=parts, loader=data, options=EpochOptions(
            show_progress=False, check_every=check_every)).train_loss)
    assert results[0] == pytest.approx(results[1], rel=1e-6) and results[0] > 0


def test_grad_scaler_skips_an_overflowing_step_and_training_goes_on():
    """fp16's loss scaling, on the CPU: the step whose gradients overflow is skipped (the
    weights end exactly where training on the other batches alone puts them), counted in
    ``skipped_steps``, the scale halves, and the next step is applied."""
    data = batches(3)
    model = tiny_vit(train=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    result, applied = run_epoch(model, data, scaler=scaler, criterion=poisoned(
        nn.CrossEntropyLoss(), at_call=2, gradient=float("inf")))
    assert result.skipped_steps == 1
    assert applied == 2 and result.step == 3 and result.batches_done == 3
    assert scaler.get_scale() == 2.0**15
    assert_same_weights(model, trained_on([data[0], data[2]]))


def test_the_weight_comparison_tells_one_step_from_two():
    """Guards the two tests above: one applied step more changes the weights it compares."""
    data = batches(2)
    with pytest.raises(AssertionError):
        assert_same_weights(trained_on(data[:1]), trained_on(data))


def test_data_wait_counts_only_the_time_blocked_on_the_loader():
    delay = 0.05

    class SlowLoader:
        def __init__(self, data):
            self.data = data

        def __len__(self):
            return len(self.data)

        def __iter__(self):
            for batch in self.data:
                time.sleep(delay)  # the loader is slow ...
                yield batch

    data = batches(4)
    slow, _ = run_epoch(tiny_vit(train=True), SlowLoader(data), nn.CrossEntropyLoss())
    fast, _ = run_epoch(tiny_vit(train=True), data, nn.CrossEntropyLoss())
    assert 4 * delay <= slow.data_wait_s < 4 * delay + 0.5 * slow.seconds
    assert fast.data_wait_s < 0.5 * delay  # ... a list is not
    assert slow.data_wait_s <= slow.seconds
