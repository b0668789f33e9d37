"""What only a GPU can show: a GPU-trained checkpoint on the CPU, explanations on the GPU, and
the quickstart choosing the GPU by itself. Skipped (with the reason) where no CUDA GPU is
visible; the CPU half of each promise is tested in the other files."""

from __future__ import annotations

import pytest
import torch
from helpers.stats import relative_error

from vit.explain import METHODS, saliency
from vit.models.vision_transformer import VisionTransformer
from vit.runtime import resolve_device, resolve_precision
from vit.training.quickstart import quickstart_config

HAS_GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")


@pytest.mark.skipif(HAS_GPU, reason="needs a machine without CUDA")
def test_quickstart_runs_on_the_cpu_in_fp32_without_a_gpu():
    train = quickstart_config().train
    device = resolve_device(train.device)
    assert device.type == "cpu" and resolve_precision(train.precision, device) == "fp32"


@pytest.mark.gpu
@needs_gpu
def test_quickstart_picks_the_gpu_and_bf16_by_itself():
    train = quickstart_config().train
    device = resolve_device(train.device)
    assert device.type == "cuda"
    assert resolve_precision(train.precision, device) == "bf16"  # every GPU since Ampere


@pytest.mark.gpu
@needs_gpu
def test_a_checkpoint_trained_on_the_gpu_gives_the_same_labels_on_the_cpu(tmp_path):
    from helpers.images import make_folder
    from helpers.training import tiny_config

    from vit.inference.classifier import Classifier
    from vit.training.trainer import train

    data = make_folder(tmp_path / "data", per_class=24)
    summary = train(tiny_config(data, tmp_path / "run", "train.device=cuda",
                                "train.precision=bf16", "train.epochs=3"), show_progress=False)
    images = sorted(data.rglob("*.png"))
    on_gpu = Classifier.from_checkpoint(summary.run_dir / "best.pt", device="cuda")
    on_cpu = Classifier.from_checkpoint(summary.run_dir / "best.pt", device="cpu")
    on_gpu.precision = "fp32"  # the same arithmetic on both sides; bf16 may flip a near-tie
    p_gpu, p_cpu = on_gpu.predict_proba(images), on_cpu.predict_proba(images)
    assert p_gpu.shape == (len(images), 3) and p_cpu.std() > 0
    assert torch.equal(p_gpu.argmax(1).cpu(), p_cpu.argmax(1))
    assert relative_error(p_gpu, p_cpu) < 1e-3


@pytest.mark.gpu
@needs_gpu
def test_cuda_graphs_and_grouped_augmentation_train(tmp_path):
    """The loop-speed levers for the GPU: train.compile_mode=reduce-overhead (CUDA graphs; the
    loop marks each step) with the memory pipeline augmenting 4 batches per call."""
    from helpers.images import make_folder
    from helpers.training import tiny_config

    from vit.training.trainer import train

    data = make_folder(tmp_path / "data", per_class=24)
    summary = train(tiny_config(data, tmp_path / "run", "train.device=cuda",
                                "train.precision=bf16", "train.epochs=3", "train.compile=true",
                                "train.compile_mode=reduce-overhead", "data.pipeline=memory",
                                "data.aug_batches=4"), show_progress=False)
    import json

    rows = [json.loads(line) for line in (summary.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = torch.tensor([row["train_loss"] for row in rows])
    assert summary.epochs_done == 3 and len(losses) == 3 and bool(torch.isfinite(losses).all())


def explained_model() -> VisionTransformer:
    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=4, num_classes=10, embed_dim=64, depth=4,
                              num_heads=4, reg_tokens=2).eval()
    with torch.no_grad():  # the zero-initialised head would make every gradient map zero
        model.head.weight.normal_(0.0, 0.5)
    return model


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.gpu
@needs_gpu
def test_explanations_on_the_gpu_match_the_cpu(method, precision):
    """Every method switches an outer autocast off: under bf16 its maps are the fp32 maps."""
    model = explained_model()
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    target = torch.arange(6) % 3  # fixed classes: a near tie cannot flip the explained class
    on_cpu = saliency(model, images, method, target=target)
    gpu_model = explained_model().cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
        on_gpu = saliency(gpu_model, images.cuda(), method, target=target.cuda())
    assert on_gpu.device.type == "cuda" and on_gpu.shape == on_cpu.shape == (6, 8, 8)
    assert torch.isfinite(on_gpu).all() and on_cpu.std() > 0
    assert on_gpu.dtype == torch.float32 and relative_error(on_gpu, on_cpu) < 1e-3


@pytest.mark.gpu
@needs_gpu
def test_rollout_cost_measures_on_the_gpu(tmp_path, monkeypatch):
    """benchmarks/rollout_cost.py --device cuda: every method timed and its CUDA memory read."""
    import json
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))
    from benchmarks import rollout_cost

    out = tmp_path / "cost.json"
    rollout_cost.main(["--device", "cuda", "--model", "vit_nano_patch4_32", "--sizes", "32,64",
                       "--repeats", "2", "--warmup", "1", "--chunk-size", "16",
                       "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert {r["measurement"] for r in rows} >= {"forward", "forward+backward",
                                                *rollout_cost.EXPLAINERS}
    assert all(r["extra_mib"] > 0 and r["median_s"] > 0 for r in rows)
