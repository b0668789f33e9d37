"""Smoke tests of the benchmark scripts (smallest settings) and checks of what they rely on.

No speed is asserted here: speed figures come from running the scripts (see benchmarks/).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # benchmarks/ is a folder of scripts, not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import (  # noqa: E402
    aug_ops,
    common,
    data_speed,
    gpu_efficiency,
    model_speed,
    rollout_cost,
    time_to_accuracy,
    timm_registry,
)
from vit.models.presets import count_flops_per_image  # noqa: E402
from vit.models.vision_transformer import VisionTransformer, ViTConfig  # noqa: E402

HEADER_KEYS = {"date", "command", "cpu", "cpu_count", "torch", "torch_threads", "loadavg"}


# --- count_flops_per_image against torch's FLOP counter -------------------------------------------

FLOP_CONFIGS = [
    dict(img_size=32, patch_size=8, num_classes=3, embed_dim=32, depth=2, num_heads=2),
    dict(img_size=32, patch_size=4, num_classes=10, embed_dim=48, depth=1, num_heads=3,
         mlp_ratio=2.0, reg_tokens=4, global_pool="avg"),
    dict(img_size=48, patch_size=8, num_classes=5, embed_dim=24, depth=3, num_heads=4,
         qkv_bias=False),
]


def counted_flops_per_image(model: VisionTransformer, *, train: bool, batch: int = 2) -> float:
    """FLOPs that torch.utils.flop_counter counts for one image (explicit-softmax attention)."""
    size = model.config.img_size
    x = torch.randn(batch, model.config.in_chans, size, size)
    with FlopCounterMode(display=False) as counter:
        logits, _ = model(x, return_attention=True)
        if train:
            logits.sum().backward()
    return counter.get_total_flops() / batch


@pytest.mark.parametrize("kwargs", FLOP_CONFIGS)
def test_forward_flops_match_torch_flop_counter(kwargs: dict) -> None:
    model = VisionTransformer(**kwargs).eval()
    assert count_flops_per_image(model.config) == counted_flops_per_image(model, train=False)


@pytest.mark.parametrize("kwargs", FLOP_CONFIGS)
def test_train_flops_are_3x_forward_plus_the_unneeded_patch_input_gradient(kwargs: dict) -> None:
    # The 3x convention counts a gradient for the image too, which autograd never computes:
    # train=True is above the real count by exactly one patch-embedding forward per image.
    cfg = ViTConfig(**kwargs)
    grid = cfg.img_size // cfg.patch_size
    patch_embed_flops = 2 * grid * grid * cfg.in_chans * cfg.patch_size**2 * cfg.embed_dim
    counted = counted_flops_per_image(VisionTransformer(cfg), train=True)
    assert count_flops_per_image(cfg, train=True) == counted + patch_embed_flops


def test_flops_of_vit_base_match_the_published_figure() -> None:
    # timm and the DeiT paper give 17.6 GMACs for ViT-B/16 at 224 px.
    gmacs = count_flops_per_image(ViTConfig(), train=False) / 2e9
    assert gmacs == pytest.approx(17.6, abs=0.05)


# --- benchmarks/common.py -----------------------------------------------------------------------


def test_time_alternating_reverses_the_order_every_other_round() -> None:
    calls: list[str] = []
    fns = {name: (lambda n=name: calls.append(n)) for name in ("ours", "timm")}
    times = common.time_alternating(fns, device=torch.device("cpu"), warmup=1, repeats=3)
    assert calls == ["ours", "timm", "ours", "timm", "timm", "ours", "ours", "timm"]
    assert {k: len(v) for k, v in times.items()} == {"ours": 3, "timm": 3}


def test_time_call_averages_over_iters(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([10.0, 16.0])
    monkeypatch.setattr(common.time, "perf_counter", lambda: next(clock))
    calls: list[int] = []
    seconds = common.time_call(lambda: calls.append(1), torch.device("cpu"), iters=3)
    assert (seconds, len(calls)) == (2.0, 3)


def test_format_table_aligns_columns() -> None:
    rows = [{"name": "a", "rate": 1.234}, {"name": "longer", "rate": None}]
    table = common.format_table(rows, [common.Column("name", "name"),
                                       common.Column("rate", "img/s", ".1f")])
    assert table.splitlines() == [
        "name    img/s",
        "------  -----",
        "a         1.2",
        "longer      -",
    ]


def test_command_line_is_relative_to_the_repo() -> None:
    line = common.command_line(ROOT / "benchmarks" / "model_speed.py", ["--models", "a b"])
    assert line == "python benchmarks/model_speed.py --models 'a b'"


# --- benchmarks/model_speed.py ------------------------------------------------------------------


def test_model_speed_main_smallest(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "speed.json"
    payload = model_speed.main([
        "--models", "vit_nano_patch4_32", "--batch", "2", "--repeats", "2", "--warmup", "0",
        "--malloc", "system", "--json", str(out),
    ])
    printed = capsys.readouterr().out
    assert HEADER_KEYS <= set(payload["machine"])
    assert "command: python benchmarks/model_speed.py --models vit_nano_patch4_32" in printed
    assert [(r["model"], r["mode"]) for r in payload["results"]] == [
        ("vit_nano_patch4_32", "infer"), ("vit_nano_patch4_32", "train")]
    for row in payload["results"]:
        assert len(row["ours_seconds"]) == len(row["timm_seconds"]) == 2
        assert row["ratio"] == pytest.approx(row["ours_img_s"] / row["timm_img_s"])
    assert payload["logit_max_abs_diff"]["vit_nano_patch4_32"] <= model_speed.LOGIT_ATOL
    assert json.loads(out.read_text())["results"][0]["batch"] == 2


def test_build_pair_uses_timm_registry_model_with_equal_logits() -> None:
    ours, theirs = model_speed.build_pair("vit_tiny_patch16_224", device=torch.device("cpu"),
                                          seed=0)
    assert type(theirs).__module__ == "timm.models.vision_transformer"
    assert theirs.default_cfg["architecture"] == "vit_tiny_patch16_224"
    x = torch.randn(1, 3, 224, 224)
    assert model_speed.check_same_logits(ours, theirs, x) <= model_speed.LOGIT_ATOL


def test_check_same_logits_rejects_different_weights() -> None:
    ours, theirs = model_speed.build_pair("vit_nano_patch4_32", device=torch.device("cpu"),
                                          seed=0)
    with torch.no_grad():
        ours.blocks[0].mlp.fc1.weight.mul_(1.01)
    with pytest.raises(common.BenchmarkError, match="logits differ"):
        model_speed.check_same_logits(ours, theirs, torch.randn(2, 3, 32, 32))


# --- benchmarks/data_speed.py -------------------------------------------------------------------


def test_timed_loader_counts_batches_and_images_after_the_first() -> None:
    batches = [("x", [0, 1, 2]), ("x", [3, 4]), ("x", [5]), ("x", [6])]
    loader = data_speed.TimedLoader(batches, max_batches=3)
    assert list(loader) == batches[:3] and len(loader) == 3
    seconds, waiting, measured, images = loader.steady_state()
    assert (measured, images) == (2, 3) and 0.0 <= waiting <= seconds


def test_timed_loader_needs_two_batches() -> None:
    loader = data_speed.TimedLoader([("x", [0])])
    list(loader)
    with pytest.raises(common.BenchmarkError, match="at least 2 batches"):
        loader.steady_state()


def test_data_speed_main_smallest(shapes_dataset: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture) -> None:
    # The shapes folder (40 PNGs of 48 px) stands in for both data sets; a one-block model keeps
    # the 224 px training loop short.
    small = data_speed.Pipeline(img_size=224, batch=32, model="vit_tiny_patch16_224",
                                model_overrides={"depth": 1, "embed_dim": 32, "num_heads": 2})
    monkeypatch.setitem(data_speed.PIPELINES, "flowers", small)
    out = tmp_path / "data.json"
    payload = data_speed.main([
        "--cifar", str(shapes_dataset), "--flowers", str(shapes_dataset), "--limit", "12",
        "--batch", "4", "--workers", "0,1", "--train-batches", "3", "--train-workers", "0",
        "--json", str(out),
    ])
    printed = capsys.readouterr().out
    assert HEADER_KEYS <= set(payload["machine"]) and "data wait %" in printed
    stages = {(r["dataset"], r["stage"], r["workers"]): r for r in payload["stages"]}
    for dataset in ("cifar", "flowers"):
        assert stages[(dataset, "decode", 0)]["images"] == 12
        for workers in (0, 1):  # 12 images in batches of 4, the first batch left out
            assert stages[(dataset, "loader, train aug", workers)]["images"] == 8
    for dataset in ("cifar", "flowers"):  # the in-memory pipeline's two stages
        assert stages[(dataset, "memory: decode once", 0)]["images"] == 12
        assert stages[(dataset, "memory: augment (cpu)", 0)]["images"] == 4
    loops = payload["train_loop"]
    assert [(r["dataset"], r["workers"], r["batches"]) for r in loops] == [
        ("cifar", 0, 2), ("cifar", "mem", 2), ("flowers", 0, 2), ("flowers", "mem", 2)]
    assert all(0.0 <= r["wait_pct"] <= 100.0 for r in loops)
    assert json.loads(out.read_text())["data"] == {"cifar": str(shapes_dataset),
                                                   "flowers": str(shapes_dataset)}


def test_gpu_efficiency_main_on_cpu_smallest(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    payload = gpu_efficiency.main([
        "--device", "cpu", "--models", "vit_nano_patch4_32", "--batches", "4", "--compile", "off",
        "--precision", "fp32", "--peak-size", "128", "--warmup", "1", "--iters", "1",
        "--repeats", "2", "--json", str(tmp_path / "eff.json")])
    row = payload["rows"][0]
    expected = row["img_per_s"] * row["gflop_per_img"] * 1e9 / payload["matmul_peak"]["flops"]
    assert row["mfu"] == pytest.approx(expected) and 0 < row["mfu"]
    assert row["gflop_per_img"] == pytest.approx(count_flops_per_image(
        model_speed_config("vit_nano_patch4_32"), train=True) / 1e9)
    assert "MFU %" in capsys.readouterr().out
    assert json.loads((tmp_path / "eff.json").read_text())["rows"][0]["batch"] == 4


def model_speed_config(name: str) -> ViTConfig:
    from vit.models.presets import create_model

    return create_model(name, num_classes=1000).config


def test_time_to_accuracy_table_and_budgets() -> None:
    epochs = [{"val_top1": 30.0, "elapsed_s": 100.0}, {"val_top1": 45.0, "elapsed_s": 290.0},
              {"val_top1": 44.0, "elapsed_s": 400.0}]
    assert time_to_accuracy.best_within(epochs, 300) == 45.0
    assert time_to_accuracy.best_within(epochs, 60) is None
    run = {"config": "configs/x.yaml", "epochs": epochs, "wall_s": 410.0, "final_top1": 44.0,
           "best_top1": 45.0}
    text = time_to_accuracy.table([run], [1.0, 5.0])
    assert "| x.yaml | 3 | 6.8 min | 44.00% | 45.00% | - | 45.00% |" in text


def test_time_to_accuracy_main_runs_a_config(shapes_dataset: Path, tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "model: {name: vit_nano_patch4_32, img_size: 16, embed_dim: 32, depth: 1, num_heads: 2}\n"
        "data: {workers: 0, pipeline: memory, val_fraction: 0.25}\n"
        "train: {epochs: 2, batch_size: 8, device: cpu, explain_samples: 0}\n")
    payload = time_to_accuracy.main([
        "--data", str(shapes_dataset), "--config", str(config), "--out", str(tmp_path / "runs"),
        "--budget-min", "5", "--json", str(tmp_path / "tta.json"), "--png", str(tmp_path / "t.png")])
    run = payload["runs"][0]
    assert [e["epoch"] for e in run["epochs"]] == [1, 2]
    times = [e["elapsed_s"] for e in run["epochs"]]
    assert 0 < times[0] < times[1] <= run["wall_s"]
    assert (tmp_path / "t.png").stat().st_size > 1000


# --- rollout_cost: peak memory by malloc accounting -----------------------------------------------


@pytest.mark.skipif(rollout_cost.MALLOC_IN_USE is None, reason="needs glibc's mallinfo2")
def test_peak_memory_sees_a_temporary_and_not_what_existed_before() -> None:
    kept = torch.ones(2**20)  # 4 MiB allocated before: not counted

    def make_and_drop() -> float:
        a = torch.ones(4 * 2**20)  # 16 MiB, freed before the call ends
        b = a * 2  # another 16 MiB alive at the same time
        return float(b[0])

    extra = rollout_cost.peak_memory(make_and_drop)
    assert 32 * 2**20 <= extra < 34 * 2**20
    assert kept.sum() > 0


def test_rollout_cost_main_smallest(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cost.json"
    rollout_cost.main(["--model", "vit_nano_patch4_32", "--sizes", "32,64", "--repeats", "1",
                       "--warmup", "0", "--explicit-max-tokens", "100", "--chunk-size", "16",
                       "--timm", "--json", str(out)])
    result = json.loads(out.read_text())
    rows = [r for r in result["rows"] if r["model"] == "ours"]
    names = {(r["size"], r["measurement"]) for r in rows}
    timm_rows = {(r["size"], r["measurement"]) for r in result["rows"] if r["model"] == "timm"}
    assert timm_rows == names - {(32, "explicit forward")}  # timm's model: every method too
    assert {(r["size"], r["measurement"]) for r in result["timm_over_ours"]} == timm_rows
    assert all(r["ratio"] > 0 for r in result["timm_over_ours"])
    assert (32, "explicit forward") in names and (64, "explicit forward") not in names  # 257 tokens
    assert {m for s, m in names if s == 64} == {"forward", "forward+backward",
                                               *rollout_cost.EXPLAINERS}
    rollout = next(r for r in rows if r["size"] == 64 and r["measurement"] == "rollout")
    assert rollout["reference"] == "forward" and rollout["extra_ratio"] > 0
    assert "weights+extra x" in capsys.readouterr().out


def test_explorer_size_smoke(tmp_path: Path, capsys) -> None:
    from helpers.models import SHAPES as CLASSES
    from helpers.models import peaky_model, save_checkpoint

    from benchmarks import explorer_size

    ckpt = save_checkpoint(tmp_path / "tiny.pt", peaky_model(), CLASSES)
    out = tmp_path / "sizes.json"
    assert explorer_size.main(["--images", "noise", "--num", "2", "--checkpoint", str(ckpt),
                               "--bits", "6,3", "--json", str(out),
                               "--keep", str(tmp_path / "page.html")]) == 0
    report = json.loads(out.read_text())
    assert HEADER_KEYS <= set(report["setup"])
    rows = report["rows"]
    assert [(r["attention_bits"], r["auc_steps"]) for r in rows] == [(6, 32), (3, 0)]
    assert rows[1]["size_mb"] < rows[0]["size_mb"]
    assert (tmp_path / "page.html").stat().st_size == round(rows[0]["size_mb"] * 1e6)
    assert "page MB" in capsys.readouterr().out


def test_timm_registry_walk_explains_or_refuses_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "registry.json"
    timm_registry.main(["--names", "deit_tiny_distilled_patch16_224,samvit_base_patch16",
                        "--json", str(out)])
    result = json.loads(out.read_text())
    status = {r["name"]: r for r in result["rows"]}
    assert status["deit_tiny_distilled_patch16_224"]["status"] == "explained"
    refused = status["samvit_base_patch16"]
    assert refused["status"] == "refused" and "\n" not in refused["why"]
    assert "VisionTransformerSAM" in refused["why"]
    assert result["summary"]["counts"] == {"explained": 1, "refused": 1}
    timm_registry.main(["--names", "deit_tiny_distilled_patch16_224", "--json", str(out),
                        "--resume"])  # kept rows are not walked again (their seconds stay)
    assert json.loads(out.read_text())["rows"] == result["rows"]


# --- aug_ops: operation counts of the memory pipeline and of the compiled step ------------------


def test_aug_ops_device_operations_do_not_grow_with_the_batch(tmp_path: Path) -> None:
    """Every image applies all 13 ops (RandAugment 13x9), so every op of the table runs at any
    batch size: the device operations per call are the same for 4 and 16 images, and with
    aug_batches=2 the same per call, half per image."""
    result = aug_ops.main(["--batches", "4,16", "--ks", "1,2", "--k-batch", "4", "--randaug",
                           "13,9", "--no-compile", "--json", str(tmp_path / "ops.json")])
    small, large = result["augmentation"]
    assert small["device_ops"] == large["device_ops"] > 13
    one, two = result["aug_batches"]
    assert one["device_ops"] == two["device_ops"]
    assert two["device_per_image"] == pytest.approx(one["device_per_image"] / 2)
    saved = json.loads((tmp_path / "ops.json").read_text())
    assert HEADER_KEYS <= saved["machine"].keys() and saved["augmentation"][0]["batch"] == 4


def test_the_cifar_model_compiles_into_one_graph_without_breaks() -> None:
    model = aug_ops._cifar_model(ROOT / "configs/cifar10_gpu_5min_light.yaml", depth=1)
    explained = aug_ops._explain(model.train(), torch.randn(2, 3, 32, 32))
    assert (explained["graphs"], explained["graph_breaks"]) == (1, 0), explained["break_reasons"]
