"""Tests for vit.inference.metrics against small hand-computed cases."""

from __future__ import annotations

import json
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchmetrics.classification import MulticlassCalibrationError

from vit.inference.accuracy import percent, topk_correct
from vit.inference.metrics import (
    EvalAccumulator,
    as_probabilities,
    build_report,
    is_probabilities,
    most_confident_mistakes,
    reliability_bins,
)

# Hand case: 3 classes, 6 samples, given as probabilities.
#   sample  target  probs                pred  conf  correct  ECE bin (15 bins of width 1/15)
#   0       0       [0.70, 0.20, 0.10]   0     0.70  yes      10  (0.70 * 15 = 10.5)
#   1       0       [0.50, 0.30, 0.20]   0     0.50  yes       7  (7.5)
#   2       0       [0.25, 0.55, 0.20]   1     0.55  no        8  (8.25)
#   3       1       [0.05, 0.90, 0.05]   1     0.90  yes      13  (13.5)
#   4       1       [0.10, 0.38, 0.52]   2     0.52  no        7  (7.8)
#   5       2       [0.30, 0.45, 0.25]   1     0.45  no        6  (6.75)
PROBS = torch.tensor(
    [
        [0.70, 0.20, 0.10],
        [0.50, 0.30, 0.20],
        [0.25, 0.55, 0.20],
        [0.05, 0.90, 0.05],
        [0.10, 0.38, 0.52],
        [0.30, 0.45, 0.25],
    ]
)
TARGETS = torch.tensor([0, 0, 0, 1, 1, 2])
CLASSES = ["cat", "dog", "eel"]

# Rows = true class, columns = predicted class.
#   true 0: samples 0, 1 -> 0; sample 2 -> 1   => [2, 1, 0]
#   true 1: sample 3 -> 1;    sample 4 -> 2    => [0, 1, 1]
#   true 2: sample 5 -> 1                      => [0, 1, 0]
CONFUSION = [[2, 1, 0], [0, 1, 1], [0, 1, 0]]
# Accuracy, precision, recall and F1 are percentages.
TOP1 = 100 * 3 / 6  # samples 0, 1, 3 are right
# Predicted 0: samples 0, 1 (2 right); predicted 1: 2, 3, 5 (1 right); predicted 2: 4 (0 right).
PRECISION = [100.0, 100 / 3, 0.0]
# Support 3, 2, 1 with 2, 1, 0 right.
RECALL = [100 * 2 / 3, 100 / 2, 0.0]
# F1 = 2PR / (P + R): class 0: 2 * 1 * 2/3 / (5/3) = 0.8; class 1: 2 * 1/3 * 1/2 / (5/6) = 0.4;
# class 2: P + R == 0 -> 0.
F1 = [80.0, 40.0, 0.0]
SUPPORT = [3, 2, 1]
# ECE = sum over bins of |accuracy - mean confidence| * count / N:
#   bin 6:  sample 5,    acc 0,   conf 0.45          -> 0.45 * 1
#   bin 7:  samples 1,4, acc 0.5, conf (0.50+0.52)/2 -> 0.01 * 2
#   bin 8:  sample 2,    acc 0,   conf 0.55          -> 0.55 * 1
#   bin 10: sample 0,    acc 1,   conf 0.70          -> 0.30 * 1
#   bin 13: sample 3,    acc 1,   conf 0.90          -> 0.10 * 1
ECE = (0.45 + 0.02 + 0.55 + 0.30 + 0.10) / 6
# Mean cross-entropy: -log of the probability given to the true class.
LOSS = (
    -(
        math.log(0.70)
        + math.log(0.50)
        + math.log(0.25)
        + math.log(0.90)
        + math.log(0.38)
        + math.log(0.25)
    )
    / 6
)


def _accumulate(*batches: tuple[torch.Tensor, torch.Tensor]) -> dict:
    acc = EvalAccumulator(num_classes=3)
    for scores, targets in batches:
        acc.update(scores, targets)
    return acc.compute()


def _assert_hand_case(computed: dict) -> None:
    assert computed["top1"] == pytest.approx(TOP1)
    assert computed["top5"] is None  # 3 classes: top-5 is 100% whatever the model
    assert computed["precision"].tolist() == pytest.approx(PRECISION, abs=1e-4)
    assert computed["recall"].tolist() == pytest.approx(RECALL, abs=1e-4)
    assert computed["f1"].tolist() == pytest.approx(F1, abs=1e-4)
    assert computed["support"].tolist() == SUPPORT
    assert computed["confusion_matrix"].tolist() == CONFUSION
    assert computed["ece"] == pytest.approx(ECE, abs=1e-6)
    assert computed["loss"] == pytest.approx(LOSS, abs=1e-6)
    assert computed["num_images"] == 6


def test_hand_case_from_probabilities() -> None:
    _assert_hand_case(_accumulate((PROBS, TARGETS)))


def test_hand_case_from_logits() -> None:
    # softmax(log(p) + c) == p, so shifted log-probabilities are logits of the same model.
    _assert_hand_case(_accumulate((PROBS.log() + 3.0, TARGETS)))


def test_two_batches_equal_one_batch() -> None:
    one = _accumulate((PROBS, TARGETS))
    two = _accumulate((PROBS[:4], TARGETS[:4]), (PROBS[4:], TARGETS[4:]))
    for key in ("top1", "ece", "loss", "num_images"):
        assert two[key] == pytest.approx(one[key], abs=1e-6), key
    for key in ("precision", "recall", "f1", "support", "confusion_matrix"):
        assert torch.allclose(two[key].double(), one[key].double(), atol=1e-6), key
    _assert_hand_case(two)


def test_loss_sum_is_averaged_over_images() -> None:
    acc = EvalAccumulator(num_classes=3)
    acc.update(PROBS[:4], TARGETS[:4], loss_sum=4.0)  # mean 1.0 over 4 images
    acc.update(PROBS[4:], TARGETS[4:], loss_sum=torch.tensor(6.0))  # mean 3.0 over 2 images
    assert acc.compute()["loss"] == pytest.approx(10.0 / 6)


def test_top5_below_five_when_more_classes() -> None:
    # 6 classes: target ranked 6th for sample 0 (top-5 miss), 2nd for sample 1 (top-5 hit).
    logits = torch.tensor([[6.0, 5, 4, 3, 2, 1], [5.0, 6, 4, 3, 2, 1]])
    acc = EvalAccumulator(num_classes=6)
    acc.update(logits, torch.tensor([5, 0]))
    computed = acc.compute()
    assert computed["top1"] == pytest.approx(0.0)
    assert computed["top5"] == pytest.approx(50.0)


def test_reset_and_empty_batch() -> None:
    acc = EvalAccumulator(num_classes=3)
    acc.update(PROBS[:0], TARGETS[:0])
    acc.update(PROBS, TARGETS)
    acc.reset()
    acc.update(PROBS, TARGETS)
    _assert_hand_case(acc.compute())


def test_rejects_wrong_shapes() -> None:
    acc = EvalAccumulator(num_classes=4)
    with pytest.raises(ValueError, match="4 classes"):
        acc.update(PROBS, TARGETS)
    with pytest.raises(ValueError, match="targets"):
        EvalAccumulator(num_classes=3).update(PROBS, TARGETS[:3])
    with pytest.raises(ValueError, match="at least 2"):
        EvalAccumulator(num_classes=1)


def test_report_is_json_serialisable() -> None:
    report = build_report(_accumulate((PROBS, TARGETS)), CLASSES)
    loaded = json.loads(json.dumps(report, allow_nan=False))
    assert loaded["classes"] == CLASSES
    assert loaded["confusion_matrix"] == CONFUSION
    assert loaded["num_images"] == 6
    assert loaded["top1"] == pytest.approx(TOP1)
    assert loaded["top5"] is None
    assert loaded["loss"] == pytest.approx(LOSS, abs=1e-6)
    assert loaded["ece"] == pytest.approx(ECE, abs=1e-6)  # a probability gap: in [0, 1]
    assert loaded["per_class"]["cat"] == pytest.approx(
        {"precision": 100.0, "recall": 100 * 2 / 3, "f1": 80.0, "support": 3}, abs=1e-4
    )
    assert loaded["per_class"]["eel"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_report_turns_nan_into_none() -> None:
    computed = _accumulate((PROBS, TARGETS))
    computed["loss"] = float("nan")
    assert build_report(computed, CLASSES)["loss"] is None
    with pytest.raises(ValueError, match="classes"):
        build_report(computed, CLASSES[:2])


def test_reliability_bins_hand_case() -> None:
    bins = reliability_bins(PROBS, TARGETS, n_bins=15)
    assert len(bins["bin_edges"]) == 16
    expected_counts = [0] * 15
    for index, count in {6: 1, 7: 2, 8: 1, 10: 1, 13: 1}.items():
        expected_counts[index] = count
    assert bins["bin_count"] == expected_counts
    assert bins["bin_accuracy"][7] == pytest.approx(0.5)
    assert bins["bin_confidence"][7] == pytest.approx(0.51, abs=1e-6)
    assert bins["bin_accuracy"][13] == pytest.approx(1.0)
    assert bins["bin_confidence"][0] == 0.0  # empty bins are zero
    assert bins["ece"] == pytest.approx(ECE, abs=1e-6)
    json.dumps(bins, allow_nan=False)


@pytest.mark.parametrize("saturate", [False, True])
def test_reliability_ece_equals_torchmetrics(saturate: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 7, generator=generator) * 3
    if saturate:  # float32 softmax gives exactly 1.0 here, which torchmetrics bins on its own
        logits[:50, 0] += 100
    targets = torch.randint(0, 7, (500,), generator=generator)
    probs = logits.softmax(dim=-1)
    expected = MulticlassCalibrationError(num_classes=7, n_bins=15, norm="l1")(probs, targets)
    bins = reliability_bins(probs, targets)
    assert bins["ece"] == pytest.approx(float(expected), abs=1e-5)
    assert sum(bins["bin_count"]) == 500
    # The display bins give the same ECE when nothing is exactly 1.0.
    from_display = (
        sum(
            abs(a - c) * n
            for a, c, n in zip(
                bins["bin_accuracy"], bins["bin_confidence"], bins["bin_count"], strict=True
            )
        )
        / 500
    )
    if not saturate:
        assert from_display == pytest.approx(float(expected), abs=1e-5)


def test_most_confident_mistakes() -> None:
    # Wrong: sample 2 (conf 0.55), sample 4 (0.52), sample 5 (0.45).
    assert most_confident_mistakes(PROBS, TARGETS, k=10) == [2, 4, 5]
    assert most_confident_mistakes(PROBS, TARGETS, k=2) == [2, 4]
    assert most_confident_mistakes(PROBS, TARGETS, k=0) == []
    assert most_confident_mistakes(PROBS, PROBS.argmax(dim=1), k=3) == []


def test_topk_correct_hand_case() -> None:
    # Top-2 misses only sample 5 (target 2 ranked last): 5 of 6; top-5 is capped at 3 classes.
    counts = topk_correct(PROBS.log(), TARGETS, ks=(1, 2, 5))
    assert counts.dtype == torch.float64 and counts.tolist() == [3, 5, 6]
    assert topk_correct(PROBS[:0], TARGETS[:0]).tolist() == [0, 0]
    assert percent(3, 6) == 50.0
    with pytest.raises(ValueError, match="targets"):
        topk_correct(PROBS, TARGETS[:2])


def test_probability_detection() -> None:
    assert is_probabilities(PROBS)
    assert not is_probabilities(PROBS.log())
    assert not is_probabilities(torch.zeros(2, 3))  # equal logits, not a distribution
    assert torch.allclose(as_probabilities(PROBS.log()), PROBS, atol=1e-6)
    # bfloat16 probabilities sum to 1 only within bfloat16 rounding; still probabilities.
    bf16 = torch.full((4, 3), 1 / 3).to(torch.bfloat16)  # 3 * 0.333984375 = 1.00195
    assert abs(float(bf16.float().sum(dim=1)[0]) - 1) > 1e-3
    assert is_probabilities(bf16)
    assert as_probabilities(bf16).dtype == torch.float32


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, port: int, results: dict) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        acc = EvalAccumulator(num_classes=3)
        part = slice(0, 4) if rank == 0 else slice(4, 6)  # uneven shards
        acc.update(PROBS[part], TARGETS[part])
        computed = acc.compute()
        results[rank] = {
            key: value.tolist() if isinstance(value, torch.Tensor) else value
            for key, value in computed.items()
        }
    finally:
        dist.destroy_process_group()


def test_compute_inside_single_rank_process_group(tmp_path) -> None:
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        _assert_hand_case(_accumulate((PROBS[:4], TARGETS[:4]), (PROBS[4:], TARGETS[4:])))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_compute_gathers_all_ranks() -> None:
    """Two gloo ranks with uneven shards: every rank's compute() covers all 6 samples."""
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_ddp_worker, args=(_free_port(), results), nprocs=2, join=True)
        results = dict(results)
    for rank in (0, 1):
        computed = {
            key: torch.tensor(value) if isinstance(value, list) else value
            for key, value in results[rank].items()
        }
        _assert_hand_case(computed)
